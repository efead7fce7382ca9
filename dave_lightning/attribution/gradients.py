"""What every attribution method here shares: input checks, target logits and their gradients.

Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so parameters'
``.grad`` fields are never touched. Call these inside ``ModelAdapter.attribution()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dave_lightning.core.effective import effective_mode
from dave_lightning.core.validation import check_finite, check_images
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import ENCODINGS

# Items per pass when batch_size is None (docs/method.md, "The engine"). On a CPU: as many as 8
# images of 224 × 224 pixels, where benchmarks/bench_engine.py finds plain forward + backward
# passes fastest (flat from 4 to 16 images, slower at 32). On CUDA: what a quarter of the free
# memory holds at CUDA_BYTES_PER_PIXEL per input pixel, up to CUDA_MAX_ITEMS.
CPU_PIXELS_PER_PASS = 8 * 224 * 224
CUDA_MEMORY_SHARE = 0.25
CUDA_BYTES_PER_PIXEL = 4096
CUDA_MAX_ITEMS = 256


def auto_batch_size(images: torch.Tensor) -> int:
    """Items per forward/backward pass when the caller gives none, for the images' device."""
    pixels = images.shape[-2] * images.shape[-1]
    if images.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(images.device)
        items = int(free * CUDA_MEMORY_SHARE) // (CUDA_BYTES_PER_PIXEL * pixels)
        return max(1, min(CUDA_MAX_ITEMS, items))
    return max(1, CPU_PIXELS_PER_PASS // pixels)


def check_inputs(
    model: ModelAdapter, images: torch.Tensor, target: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate images and targets before any work; returns target as a (B,) long tensor."""
    check_images("images", images, "add a batch dimension with images.unsqueeze(0)")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch; pass at least one image")
    check_finite("images", images, "a map of such an input would be NaN; fix or drop them")
    channels = model.input_channels
    if channels is not None and images.shape[1] != channels:
        encoding = ENCODINGS.get(model.input_encoding or "none")
        fix = (
            "convert the images (e.g. grayscale → RGB with images.expand(-1, 3, -1, -1))"
            if encoding is None or encoding.name == "none"
            else f"pass {encoding.name!r}-encoded inputs ({encoding.description})"
        )
        raise ValueError(
            f"images have {images.shape[1]} channels but the model expects {channels}; {fix}"
        )
    if isinstance(target, bool) or not isinstance(target, (int, torch.Tensor)):
        raise TypeError(f"target must be an int or an integer tensor, got {type(target).__name__}")
    if isinstance(target, int):
        target = torch.full((images.shape[0],), target, dtype=torch.long)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.dim() == 0:
        target = target.expand(images.shape[0])
    if target.dim() != 1 or target.shape[0] != images.shape[0]:
        raise ValueError(
            f"target has shape {tuple(target.shape)} but images hold {images.shape[0]} images; "
            "pass one class index per image, shape (B,), or a single int"
        )
    if (target < 0).any():
        raise ValueError(f"target holds negative class indices {target.tolist()}")
    return images, target.long()


def select_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target logit of each row, with clear errors for bad classes and values."""
    if int(target.max()) >= logits.shape[1]:
        raise ValueError(
            f"target class {int(target.max())} is out of range for {logits.shape[1]} logits; "
            f"class indices must be in [0, {logits.shape[1] - 1}]"
        )
    if not torch.isfinite(logits).all():
        raise ValueError(
            "the model produced non-finite logits (NaN or Inf); check the weights and that the "
            "images are normalised the way the model expects"
        )
    return logits.gather(1, target.view(-1, 1)).squeeze(1)


def target_gradient(
    model: ModelAdapter,
    source: torch.Tensor,
    model_input: torch.Tensor,
    target: torch.Tensor,
    *,
    effective: bool,
) -> torch.Tensor:
    """d logit_target(model_input) / d source, one row per item (plain or effective)."""
    if effective:
        with effective_mode():
            logits = model(model_input)
    else:
        logits = model(model_input)
    (grad,) = torch.autograd.grad(select_logits(logits, target).sum(), source)
    return grad


def gradient_contributions(
    model: ModelAdapter,
    images: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
    *,
    effective: bool,
) -> torch.Tensor:
    """Gradient (plain or effective) of the target logit × input, (B, C, H, W), in chunks.

    ``images`` and ``target`` on the model's device.
    """
    out = torch.empty_like(images)
    for chunk in chunks(images.shape[0], batch_size):
        source = images[chunk].requires_grad_()
        grad = target_gradient(model, source, source, target[chunk], effective=effective)
        out[chunk] = grad * source.detach()
    return out


def channel_sum(contributions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 1, H, W) signed sum over channels (maps without post-processing)."""
    return contributions.sum(1, keepdim=True)


def chunks(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))
