"""Localization: energy pointing game (mask or box) and grid pointing game (docs/metrics.md)."""

from __future__ import annotations

import torch

from dave_lightning.metrics._checks import (
    as_maps,
    as_masks,
    as_target,
    check_indices,
    finite_rows,
)


def _positive_share(positive: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """inside / total positive attribution per image; NaN when there is none (0/0)."""
    total = positive.flatten(1).sum(1)
    return torch.where(total > 0, inside / total, torch.nan)


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Positive attribution inside the mask / total positive attribution, per image.

    Args:
        maps: (B, 1, H, W) or (B, H, W) attribution maps (float32 or float64).
        masks: (B, H, W) bool object masks (for boxes use :func:`boxes_to_masks`).

    Returns:
        (B,) values in [0, 1]; NaN for an empty mask (never a hit), a map without positive
        attribution, or a non-finite map.

    Raises:
        TypeError, ValueError: for non-tensor, non-bool or mismatched inputs.
    """
    maps = as_maps(maps)
    masks = as_masks(masks, maps)
    positive = maps.clamp(min=0)
    score = _positive_share(positive, (positive * masks).flatten(1).sum(1))
    defined = masks.flatten(1).any(1) & finite_rows(maps)
    return torch.where(defined, score, torch.nan)


def boxes_to_masks(
    boxes: torch.Tensor, height: int, width: int, device: torch.device | None = None
) -> torch.Tensor:
    """Rasterise (x0, y0, x1, y1) pixel boxes to bool masks.

    Coordinates are continuous: pixel (i, j) is inside when its centre (j + 0.5, i + 0.5) lies
    in [x0, x1) × [y0, y1), so integer boxes cover columns x0..x1-1 and rows y0..y1-1. Empty
    boxes (x1 <= x0) add nothing, which allows padding with zeros.

    Args:
        boxes: (B, 4) or (B, N, 4) boxes (the union of N boxes per image).
        height, width: the masks' size.
        device: the masks' device (default: the boxes').

    Returns:
        (B, H, W) bool masks.

    Raises:
        TypeError, ValueError: for a non-tensor or a wrongly shaped ``boxes``.
    """
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim == 2:
        boxes = boxes[:, None]
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes must have shape (B, 4) or (B, N, 4) as (x0, y0, x1, y1), "
            f"got {tuple(boxes.shape)}"
        )
    device = boxes.device if device is None else device
    boxes = boxes.to(device, torch.float64)
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    cols = torch.arange(width, device=device, dtype=torch.float64) + 0.5
    rows = torch.arange(height, device=device, dtype=torch.float64)[:, None] + 0.5
    inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
    return inside.any(1)


def grid_pointing_game(maps: torch.Tensor, k: int, target_cell: torch.Tensor | int) -> torch.Tensor:
    """Positive attribution in the target cell of a k×k grid / total positive attribution.

    Args:
        maps: (B, 1, H, W) or (B, H, W) maps of grid images; H and W multiples of ``k``.
        k: cells per side.
        target_cell: the cell scored per map, row-major from 0 (cell r·k + c is row r, column
            c): an int or a (B,) integer tensor.

    Returns:
        (B,) values in [0, 1]; NaN for a map without positive attribution or a non-finite map.

    Raises:
        ValueError: for a ``k`` that does not divide the maps or a cell out of range.
    """
    maps = as_maps(maps)
    batch, height, width = maps.shape
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if height % k or width % k:
        raise ValueError(
            f"k={k} must divide the map size {height}×{width}; compose grids whose cells "
            "have equal integer sizes (see make_grid_probe)"
        )
    target_cell = as_target(target_cell, batch, maps.device, name="target_cell")
    check_indices(target_cell, k * k, "target_cell")
    positive = maps.clamp(min=0)
    cells = positive.view(batch, k, height // k, k, width // k).sum((2, 4)).flatten(1)
    score = _positive_share(positive, cells.gather(1, target_cell[:, None])[:, 0])
    return torch.where(finite_rows(maps), score, torch.nan)
