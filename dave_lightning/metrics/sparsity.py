"""Sparsity: Gini index of the positive attribution (docs/metrics.md)."""

from __future__ import annotations

import torch

from dave_lightning.metrics._checks import as_maps, finite_rows


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of each map's positive part (negatives clipped to 0).

    Args:
        maps: (B, 1, H, W) or (B, H, W) attribution maps.

    Returns:
        (B,) values: 0 for a uniform map, (n − 1)/n when one of n pixels holds everything; NaN
        for a map without positive attribution (no distribution to measure) or a non-finite map.

    Raises:
        TypeError, ValueError: for maps of another shape or dtype.
    """
    maps = as_maps(maps)
    values = maps.clamp(min=0).flatten(1).double().sort(1).values
    n = values.shape[1]
    # G = Σ_i (2i − n − 1) x_(i) / (n Σ x), x sorted ascending, i = 1..n.
    weights = 2 * torch.arange(1, n + 1, device=maps.device, dtype=torch.float64) - n - 1
    total = values.sum(1)
    score = (values * weights).sum(1) / (n * total)
    return torch.where((total > 0) & finite_rows(maps), score, torch.nan).to(maps.dtype)
