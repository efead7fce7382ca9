"""Map reliability: how well two independent halves of an image's samples agree.

Each half-sample map is post-processed like the final map; their Spearman correlation over the
pixels, corrected to the full sample count with the Spearman–Brown formula 2r / (1 + r),
estimates how closely two runs of DAVE with different seeds would agree (docs/method.md,
"Map reliability").
"""

from __future__ import annotations

import torch

from dave_lightning.attribution.postprocess import postprocess
from dave_lightning.core.stats import spearman


def spearman_brown(half_correlation: torch.Tensor) -> torch.Tensor:
    """Reliability of the full-length estimate from the correlation of its halves, in [−1, 1]."""
    return (2 * half_correlation / (1 + half_correlation)).clamp(-1.0, 1.0)


def split_half_reliability(half_a: torch.Tensor, half_b: torch.Tensor) -> torch.Tensor:
    """(B,) reliability from the two halves' contributions (B, C, H, W); NaN where undefined."""
    maps_a, maps_b = postprocess(half_a).flatten(1), postprocess(half_b).flatten(1)
    defined = torch.isfinite(maps_a).all(1) & torch.isfinite(maps_b).all(1)
    maps_a = torch.where(defined[:, None], maps_a, 0.0)
    maps_b = torch.where(defined[:, None], maps_b, 0.0)
    reliability = spearman_brown(spearman(maps_a, maps_b)).float()
    return torch.where(defined, reliability, torch.nan)
