"""Faithfulness: pixel deletion and insertion curves scored by target softmax (docs/metrics.md).

Conventions, so that numbers are comparable: the x-axis is the fraction of pixels
changed, ``steps`` points on [0, max_fraction] including 0; y is the softmax probability of the
target class; :func:`curve_auc` normalises the x-axis to [0, 1]. A pixel is changed in all
channels at once. Ties in the attribution order are broken by a seeded random permutation, and
an image whose map is not finite gets a NaN curve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torchvision.transforms.functional import gaussian_blur

from dave_lightning.metrics._checks import as_maps, as_target, check_indices, finite_rows

Order = Literal["lerf", "morf", "random"]
Baseline = Literal["blur", "zero", "mean"]
ORDERS: tuple[str, ...] = ("lerf", "morf", "random")
BASELINES: tuple[str, ...] = ("blur", "zero", "mean")
DELETION_BLUR_KERNEL, DELETION_BLUR_SIGMA = 31, 7.0


def baseline_images(images: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    """The image that replaces removed pixels: Gaussian blur (kernel 31, σ 7), zeros or mean.

    The blur kernel shrinks to the largest odd size that reflect padding allows on images
    smaller than 16 px; ``mean`` is each image's per-channel mean.
    """
    if baseline == "blur":
        kernel = min(DELETION_BLUR_KERNEL, 2 * min(images.shape[-2:]) - 1)
        return gaussian_blur(images, [kernel, kernel], [DELETION_BLUR_SIGMA, DELETION_BLUR_SIGMA])
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean((-2, -1), keepdim=True).expand_as(images)
    raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")


def _removal_ranks(maps: torch.Tensor, order: Order, seed: int) -> torch.Tensor:
    """(B, H·W) int64: each pixel's position in the order of change (0 = changed first)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    flat = maps.flatten(1)
    generator = torch.Generator().manual_seed(seed)
    shuffle = torch.rand(flat.shape, generator=generator).argsort(1).to(flat.device)
    if order == "random":
        sequence = shuffle
    else:
        keys = flat.gather(1, shuffle)
        within = keys.argsort(dim=1, descending=order == "morf", stable=True)
        sequence = shuffle.gather(1, within)
    position = torch.arange(flat.shape[1], device=flat.device).expand_as(sequence)
    return torch.empty_like(sequence).scatter_(1, sequence, position)


@torch.no_grad()
def _perturbation_curve(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    target: torch.Tensor | int,
    maps: torch.Tensor,
    *,
    insertion: bool,
    order: Order,
    baseline: Baseline,
    steps: int,
    max_fraction: float,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared body of deletion and insertion: all (image, step) pairs in chunks of batch_size."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (B, C, H, W) tensor")
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}")
    if steps < 2 or batch_size < 1:
        raise ValueError(f"steps must be >= 2 and batch_size >= 1, got {steps}, {batch_size}")
    batch, _, height, width = images.shape
    maps = as_maps(maps).to(images.device)
    if maps.shape != (batch, height, width):
        raise ValueError(
            f"maps shape {tuple(maps.shape)} does not match images {tuple(images.shape)}; "
            "upsample the maps to the image size first"
        )
    images = images.float()
    target = as_target(target, batch, images.device)
    ranks = _removal_ranks(torch.nan_to_num(maps), order, seed)
    fractions = torch.linspace(0, max_fraction, steps, device=images.device)
    counts = (fractions.double() * height * width).round().long()
    # Deletion starts from the image and changes pixels to the baseline; insertion the reverse.
    start, end = images, baseline_images(images, baseline)
    if insertion:
        start, end = end, start
    probabilities = torch.empty(batch * steps, device=images.device)
    for first in range(0, batch * steps, batch_size):
        pair = torch.arange(first, min(first + batch_size, batch * steps), device=images.device)
        image, step = pair // steps, pair % steps
        changed = (ranks[image] < counts[step, None]).view(-1, 1, height, width)
        logits = model(torch.where(changed, end[image], start[image])).float()
        if first == 0:
            check_indices(target, logits.shape[-1], "target")
        probabilities[pair] = logits.softmax(-1).gather(1, target[image, None])[:, 0]
    probabilities = probabilities.view(batch, steps)
    return fractions, torch.where(finite_rows(maps)[:, None], probabilities, torch.nan)


def deletion_curve(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    target: torch.Tensor | int,
    maps: torch.Tensor,
    *,
    order: Order = "lerf",
    baseline: Baseline = "blur",
    steps: int = 128,
    max_fraction: float = 0.9,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace pixels by the baseline in attribution order; the target's probability after each
    step.

    Args:
        model: images → logits, run under ``torch.no_grad()`` in float32 (put it in eval mode
            first).
        images: (B, C, H, W) inputs.
        target: the class scored per image (an int or a (B,) tensor).
        maps: (B, 1, H, W) or (B, H, W) attribution maps at the images' size.
        order: ``lerf`` least relevant first (higher AUC is better), ``morf`` most relevant
            first (lower is better), ``random`` a seeded control.
        baseline: what replaces deleted pixels: ``blur`` (kernel 31, σ 7), ``zero``, ``mean``.
        steps: points of the curve on [0, ``max_fraction``], 0 included.
        max_fraction: the share of pixels deleted at the last point.
        batch_size: perturbed images per model call.
        seed: seed of the tie-breaking (and the random order's) permutation.

    Returns:
        ``fractions`` (steps,) and the target's softmax ``probabilities`` (B, steps); NaN rows
        for images with non-finite maps.

    Raises:
        ValueError: for mismatched shapes, a bad order, baseline or step count, or targets out
            of the model's range.
    """
    return _perturbation_curve(insertion=False, **locals())  # every argument, as given


#: The curve settings besides the order, with their defaults (those of :func:`deletion_curve`).
CURVE_DEFAULTS = {
    "baseline": "blur",
    "steps": 128,
    "max_fraction": 0.9,
    "batch_size": 64,
    "seed": 0,
}


def insertion_curve(*args: Any, order: Order = "morf", **options: Any) -> tuple[torch.Tensor, ...]:
    """Start from the baseline and restore image pixels in attribution order (``morf``: most
    relevant first, higher AUC is better). The arguments, besides ``order``, and the
    conventions are those of :func:`deletion_curve`: ``(model, images, target, maps, *,
    baseline, steps, max_fraction, batch_size, seed)``."""
    return _perturbation_curve(*args, insertion=True, order=order, **(CURVE_DEFAULTS | options))


def curve_auc(fractions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under a curve with the x-axis rescaled to [0, 1].

    Dividing by the fraction span makes curves with different ``max_fraction`` comparable: the
    result is the mean value over the curve, in the units of ``values``.

    Args:
        fractions: (S,) increasing x values, S >= 2.
        values: (..., S) curves.

    Returns:
        (...,) areas.

    Raises:
        ValueError: for mismatched or decreasing x values.
    """
    if fractions.ndim != 1 or fractions.shape[0] < 2 or values.shape[-1] != fractions.shape[0]:
        raise ValueError(
            f"need fractions (S,) with S >= 2 and values (..., S), got "
            f"{tuple(fractions.shape)} and {tuple(values.shape)}"
        )
    span = fractions[-1] - fractions[0]
    if span <= 0:
        raise ValueError("fractions must increase from first to last")
    x = (fractions - fractions[0]) / span
    return torch.trapezoid(values, x.to(values.dtype), dim=-1)
