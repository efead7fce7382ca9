"""The DAVE attribution engine (DESIGN §2.2): equivariant, noise-averaged effective gradients.

Every (image, sample) pair is one item; items of several images and samples share a forward and
backward pass of at most ``batch_size`` items. Transformations come from one generator seeded
by ``seed``, and each item's noise from a generator seeded by (seed, image, sample), so maps do
not depend on the batch size and the global RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from dave_lightning.attribution.aggregation import StreamingRobustMean, sample_order
from dave_lightning.attribution.effective import effective_mode
from dave_lightning.attribution.model_info import (
    attribution_context,
    input_channels,
    model_device,
    reference_noise_alpha,
)
from dave_lightning.attribution.postprocess import postprocess as postprocess_maps
from dave_lightning.attribution.transforms import AffineParams, sample_affine, warp
from dave_lightning.validation import check_int, check_range

COMPONENTS = ("input_x_gradient", "input_x_effective", "input_x_equivariant", "dave")
AGGREGATIONS = ("mad", "mean")
# Items per pass when batch_size=None: as many as 32 images of 224 × 224 pixels.
AUTO_PIXELS_PER_PASS = 32 * 224 * 224


class DAVE:
    """DAVE attributions for a classifier: ``DAVE(model).attribute(images, target)``.

    ``model`` maps normalised images (B, C, H, W) to logits (B, classes). Maps come back as
    (B, 1, H, W), in [0, 1] when ``postprocess`` is on, signed channel sums otherwise.
    ``noise_alpha=None`` takes the paper's value for the model's timm family.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        n_samples: int = 50,
        noise_alpha: float | None = 0.5,
        hflip_prob: float = 0.5,
        rotation: float = 20.0,
        translation: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        aggregation: str = "mad",
        postprocess: bool = True,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module returning logits, got {type(model).__name__}; "
                "wrap a plain function in an nn.Module whose forward calls it"
            )
        if noise_alpha is None:
            noise_alpha = reference_noise_alpha(model)
            if noise_alpha is None:
                raise ValueError(
                    "noise_alpha=None needs a timm model whose family has a reference value "
                    "(deit3/deit/vit base or small, patch 16); pass noise_alpha explicitly"
                )
        check_settings(
            n_samples=n_samples,
            noise_alpha=noise_alpha,
            hflip_prob=hflip_prob,
            rotation=rotation,
            translation=translation,
            scale=scale,
            aggregation=aggregation,
            batch_size=batch_size,
            seed=seed,
        )
        self.model = model
        self.n_samples = n_samples
        self.noise_alpha = float(noise_alpha)
        self.hflip_prob = float(hflip_prob)
        self.rotation = float(rotation)
        self.translation = float(translation)
        self.scale = (float(scale[0]), float(scale[1]))
        self.aggregation = aggregation
        self.postprocess = postprocess
        self.batch_size = batch_size
        self.seed = seed

    def settings(self) -> dict[str, object]:
        """The engine's settings as plain values (for snapshots and reports)."""
        return {
            "n_samples": self.n_samples,
            "noise_alpha": self.noise_alpha,
            "hflip_prob": self.hflip_prob,
            "rotation": self.rotation,
            "translation": self.translation,
            "scale": list(self.scale),
            "aggregation": self.aggregation,
            "postprocess": self.postprocess,
            "seed": self.seed,
        }

    def attribute(
        self,
        images: torch.Tensor,
        target: torch.Tensor | int,
        return_components: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """DAVE maps (B, 1, H, W) for ``target`` classes; with components, a dict by stage."""
        images, target = check_inputs(self.model, images, target)
        out_device = images.device
        with attribution_context(self.model):
            device = model_device(self.model)
            images = images.to(device, torch.float32).clone()
            target = target.to(device)
            batch_size = self.batch_size or auto_batch_size(images)
            params = sample_affine(
                images.shape[0] * self.n_samples,
                generator=torch.Generator().manual_seed(self.seed),
                hflip_prob=self.hflip_prob,
                rotation=self.rotation,
                translation=self.translation,
                scale=self.scale,
            )
            contributions = {"dave": self._sampled(images, target, params, batch_size, True)}
            if return_components:
                contributions["input_x_gradient"] = gradient_contributions(
                    self.model, images, target, batch_size, effective=False
                )
                contributions["input_x_effective"] = gradient_contributions(
                    self.model, images, target, batch_size, effective=True
                )
                contributions["input_x_equivariant"] = (
                    contributions["dave"]
                    if self.noise_alpha == 0
                    else self._sampled(images, target, params, batch_size, False)
                )
            finish = postprocess_maps if self.postprocess else channel_sum
            maps = {name: finish(values).to(out_device) for name, values in contributions.items()}
        return {name: maps[name] for name in COMPONENTS} if return_components else maps["dave"]

    __call__ = attribute

    def _sampled(
        self,
        images: torch.Tensor,
        target: torch.Tensor,
        params: AffineParams,
        batch_size: int,
        noisy: bool,
    ) -> torch.Tensor:
        """Robust mean over samples of (transformed, noised) effective gradient × input."""
        n_images, n = images.shape[0], self.n_samples
        levels = torch.linspace(0.0, self.noise_alpha, n, device=images.device)
        order = sample_order(n).to(images.device)
        item_image = torch.arange(n_images, device=images.device).repeat_interleave(n)
        item_sample = order.repeat(n_images)
        accumulators = [self._accumulator() for _ in range(n_images)]
        for chunk in _chunks(n_images * n, batch_size):
            image_idx, sample_idx = item_image[chunk], item_sample[chunk]
            source = images[image_idx].requires_grad_()
            warped = warp(source, params.index((image_idx * n + sample_idx).cpu()))
            if noisy:
                keep = (1.0 - levels[sample_idx]).view(-1, 1, 1, 1)
                noise = self._noise(image_idx, sample_idx, images.shape[1:])
                warped = torch.addcmul(noise.mul_(torch.sqrt(1.0 - keep**2)), keep, warped)
            grad = _target_gradient(self.model, source, warped, target[image_idx], effective=True)
            contribution = grad * source.detach()
            for image in image_idx.unique().tolist():
                accumulators[image].add(contribution[image_idx == image])
        return torch.stack([acc.result() for acc in accumulators])

    def _accumulator(self) -> StreamingRobustMean | _Mean:
        return StreamingRobustMean(self.n_samples) if self.aggregation == "mad" else _Mean()

    def _noise(
        self, image_idx: torch.Tensor, sample_idx: torch.Tensor, shape: torch.Size
    ) -> torch.Tensor:
        """Standard normal noise per item from a generator seeded by (seed, image, sample)."""
        device = image_idx.device
        noise = torch.empty(len(image_idx), *shape, device=device)
        for row, (image, sample) in enumerate(
            zip(image_idx.tolist(), sample_idx.tolist(), strict=True)
        ):
            generator = torch.Generator(device).manual_seed(_item_seed(self.seed, image, sample))
            noise[row].normal_(generator=generator)
        return noise


@dataclass
class _Mean:
    """Plain mean accumulator (``aggregation="mean"``)."""

    total: torch.Tensor | int = 0
    count: int = 0

    def add(self, samples: torch.Tensor) -> None:
        self.total = self.total + samples.sum(0)
        self.count += samples.shape[0]

    def result(self) -> torch.Tensor:
        return self.total / self.count


def gradient_contributions(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
    *,
    effective: bool,
) -> torch.Tensor:
    """Gradient (plain or effective) of the target logit × input, (B, C, H, W), in chunks.

    Call inside :func:`attribution_context`; ``images`` and ``target`` on the model's device.
    """
    out = torch.empty_like(images)
    for chunk in _chunks(images.shape[0], batch_size):
        source = images[chunk].requires_grad_()
        grad = _target_gradient(model, source, source, target[chunk], effective=effective)
        out[chunk] = grad * source.detach()
    return out


def check_settings(
    *,
    n_samples: int,
    noise_alpha: float | None,
    hflip_prob: float,
    rotation: float,
    translation: float,
    scale: tuple[float, float],
    aggregation: str,
    batch_size: int | None,
    seed: int,
) -> None:
    """Raise a clear error for any engine setting out of bounds (``noise_alpha=None`` passes)."""
    check_int("n_samples", n_samples, minimum=1)
    if noise_alpha is not None:
        check_range("noise_alpha", noise_alpha, 0.0, 1.0)
    check_range("hflip_prob", hflip_prob, 0.0, 1.0)
    check_range("rotation", rotation, 0.0, 180.0)
    check_range("translation", translation, 0.0, 1.0)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)


def channel_sum(contributions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 1, H, W) signed sum over channels (maps without post-processing)."""
    return contributions.sum(1, keepdim=True)


def auto_batch_size(images: torch.Tensor) -> int:
    """Items per pass when the caller gives none: a fixed pixel budget per pass."""
    return max(1, AUTO_PIXELS_PER_PASS // (images.shape[-2] * images.shape[-1]))


def check_inputs(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate images and targets before any work; returns target as a (B,) long tensor."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"images must be 4-D (B, C, H, W), got shape {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0) for a single image"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"images must be a floating-point tensor normalised for the model, got {images.dtype}"
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch; pass at least one image")
    channels = input_channels(model)
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"images have {images.shape[1]} channels but the model expects {channels}; "
            "convert the images (e.g. grayscale → RGB with images.expand(-1, 3, -1, -1))"
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


def _target_gradient(
    model: nn.Module,
    source: torch.Tensor,
    model_input: torch.Tensor,
    target: torch.Tensor,
    *,
    effective: bool,
) -> torch.Tensor:
    """d logit_target(model_input) / d source, one row per item (``torch.autograd.grad``)."""
    if effective:
        with effective_mode():
            logits = model(model_input)
    else:
        logits = model(model_input)
    selected = select_logits(logits, target)
    (grad,) = torch.autograd.grad(selected.sum(), source)
    return grad


def select_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target logit of each row, with clear errors for bad outputs and classes."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model must return logits of shape (B, classes), got {shape}; "
            "wrap it so that forward returns the classification logits"
        )
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


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _item_seed(seed: int, image: int, sample: int) -> int:
    """A distinct, reproducible seed per (seed, image, sample) item."""
    return ((seed * 1_000_003 + image) * 1_000_033 + sample) % (2**63 - 1)
