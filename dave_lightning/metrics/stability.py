"""Stability under small transformations (docs/metrics.md, paper Fig. 2): attr(T x) vs T(attr x)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dave_lightning.core import stats
from dave_lightning.core.transforms import AffineParams, warp
from dave_lightning.metrics._checks import as_maps, as_target, finite_rows

#: (angle in degrees, (x shift, y shift) in fractions of width and height): docs/metrics.md's T,
#: 5° with a 20 px horizontal and 8 px vertical shift at 224 px. Pass several to average.
STABILITY_TRANSFORMS: tuple[tuple[float, tuple[float, float]], ...] = ((5.0, (20 / 224, 8 / 224)),)


def _transform_batch(
    transforms: Sequence[tuple[float, tuple[float, float]]], batch: int
) -> AffineParams:
    """One transformation per (transform, image) pair, transform-major."""
    f64 = torch.float64
    return AffineParams(
        angle=torch.tensor([angle for angle, _ in transforms], dtype=f64).repeat_interleave(batch),
        shift=torch.tensor([shift for _, shift in transforms], dtype=f64).repeat_interleave(
            batch, 0
        ),
        scale=torch.ones(len(transforms) * batch, dtype=f64),
        hflip=torch.zeros(len(transforms) * batch, dtype=torch.bool),
    )


def stability(
    attribute_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    target: torch.Tensor | int,
    *,
    transforms: Sequence[tuple[float, tuple[float, float]]] = STABILITY_TRANSFORMS,
    top_fraction: float = 0.1,
    maps: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Compare attr(T x) with T(attr(x)) per image: ``pearson``, ``spearman``, ``topk_iou``.

    Each T in ``transforms`` warps images and maps bilinearly; statistics use the pixels whose
    bilinear sample lies entirely inside the frame (valid in both maps) and are averaged over
    the transforms, ignoring NaN.

    Args:
        attribute_fn: ``attribute_fn(images, target) -> (B, 1, H, W)`` maps; called once, on
            the B·(1 + len(transforms)) images, or on the B·len(transforms) transformed ones
            when ``maps`` already holds attr(images).
        images: (B, C, H, W) inputs of the method.
        target: the class explained per image (an int or a (B,) tensor).
        transforms: (angle in degrees, (x shift, y shift) in fractions of the size) pairs.
        top_fraction: the share of pixels in the top sets of ``topk_iou``.
        maps: attr(images), when already computed.

    Returns:
        A dict of (B,) tensors: ``pearson``, ``spearman`` and ``topk_iou`` (higher is better).

    Raises:
        ValueError: for images that are not (B, C, H, W), no transforms, or maps of the wrong
            shape from ``attribute_fn``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (B, C, H, W) tensor")
    if not transforms:
        raise ValueError("transforms must hold at least one (angle, (fx, fy)) pair")
    batch, _, height, width = images.shape
    target = as_target(target, batch, images.device)
    count = len(transforms)
    params = _transform_batch(transforms, batch)
    moved = warp(images.repeat(count, 1, 1, 1), params)
    if maps is None:
        maps = attribute_fn(torch.cat([images, moved]), target.repeat(count + 1))
    else:
        maps = torch.cat([maps.to(images.device), attribute_fn(moved, target.repeat(count))])
    maps = as_maps(maps, name="attribute_fn output").detach()
    if maps.shape != (batch * (count + 1), height, width):
        raise ValueError(
            f"attribute_fn returned maps of shape {tuple(maps.shape)}; expected "
            f"({batch * (count + 1)}, 1, {height}, {width}) for the images it was given"
        )
    return _agreement(maps[:batch], maps[batch:], params, count, top_fraction)


def _agreement(
    original: torch.Tensor,
    of_moved: torch.Tensor,
    params: AffineParams,
    count: int,
    top_fraction: float,
) -> dict[str, torch.Tensor]:
    """Per image, the statistics of attr(T x) (``of_moved``) against T(attr x) on the pixels
    valid in both, averaged over the ``count`` transforms."""
    batch, height, width = original.shape
    expected = warp(original.repeat(count, 1, 1)[:, None], params)[:, 0]
    ones = torch.ones(len(params), 1, height, width, device=original.device, dtype=original.dtype)
    valid = (warp(ones, params)[:, 0] > 1 - 1e-4).flatten(1)
    a, b = of_moved.flatten(1), expected.flatten(1)
    finite = finite_rows(of_moved) & finite_rows(original).repeat(count)
    a = torch.where(finite[:, None], a, 0.0)
    b = torch.where(finite[:, None], b, 0.0)
    scores = {
        "pearson": stats.pearson(a, b, valid),
        "spearman": stats.spearman(a, b, valid),
        "topk_iou": stats.topk_iou(a, b, valid, top_fraction),
    }
    return {
        name: torch.where(finite, value, torch.nan).view(count, batch).nanmean(0).to(original.dtype)
        for name, value in scores.items()
    }
