"""An independent reference of the robust mean (docs/method.md, step 5), the oracle of the
engine's streaming aggregation in the tests."""

from __future__ import annotations

import torch


def robust_mean(samples: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Per-element mean of the values with |x − median| ≤ 2.5 · 1.4826 · MAD along ``dim``,
    the median being the lower median (an actual sample, so one value is always kept)."""
    median = samples.median(dim, keepdim=True).values
    mad = (samples - median).abs().median(dim, keepdim=True).values
    keep = (samples - median).abs() <= 2.5 * 1.4826 * mad
    return (samples * keep).sum(dim) / keep.sum(dim)
