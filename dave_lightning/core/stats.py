"""Per-row similarity statistics over a subset of pixels, vectorised over the batch.

All functions take flattened (B, N) values and an optional (B, N) bool ``valid`` mask (pixels to
use); they compute in float64 and return (B,) float64, NaN where the statistic is undefined.
"""

from __future__ import annotations

import math

import torch


def _all_valid(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(values, dtype=torch.bool) if valid is None else valid


def pearson(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation per row; NaN when either side is constant or has < 2 valid pixels."""
    valid = _all_valid(a, valid)
    a, b = a.double(), b.double()
    weight = valid.double()
    count = weight.sum(1)
    da = (a - (a * weight).sum(1, keepdim=True) / count.clamp(min=1)[:, None]) * weight
    db = (b - (b * weight).sum(1, keepdim=True) / count.clamp(min=1)[:, None]) * weight
    r = (da * db).sum(1) / ((da * da).sum(1) * (db * db).sum(1)).sqrt()
    # Exact constancy test: float rounding in the mean would otherwise leave tiny variances.
    undefined = (count < 2) | _constant(a, valid) | _constant(b, valid)
    return torch.where(undefined, torch.nan, r.clamp(-1.0, 1.0))


def _constant(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    high = values.masked_fill(~valid, -math.inf).amax(1)
    low = values.masked_fill(~valid, math.inf).amin(1)
    return high <= low


def average_ranks(values: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Ranks 0..n-1 of the valid entries of each row; tied values share their mean rank.

    Invalid entries are ranked after all valid ones (their ranks are meaningless).
    """
    valid = _all_valid(values, valid)
    rows, n = values.shape
    keys = values.double().masked_fill(~valid, math.inf)
    sorted_keys, order = keys.sort(dim=1)
    starts = torch.ones_like(sorted_keys, dtype=torch.bool)
    starts[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    # Global id of each run of equal values, unique across rows.
    offsets = torch.arange(rows, device=values.device)[:, None] * n
    group = (starts.long().cumsum(1) - 1 + offsets).flatten()
    position = torch.arange(n, device=values.device).expand(rows, n).flatten()
    first = torch.full((rows * n,), rows * n, device=values.device).scatter_reduce(
        0, group, position, reduce="amin"
    )
    last = torch.zeros(rows * n, dtype=torch.long, device=values.device).scatter_reduce(
        0, group, position, reduce="amax"
    )
    mean_rank = ((first[group] + last[group]).double() / 2).view(rows, n)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman correlation per row: Pearson of average-tie ranks over the valid pixels."""
    valid = _all_valid(a, valid)
    return pearson(average_ranks(a, valid), average_ranks(b, valid), valid)


def top_mask(
    values: torch.Tensor, valid: torch.Tensor | None = None, fraction: float = 0.1
) -> torch.Tensor:
    """(B, N) bool: the round(fraction · n_valid) (at least 1) largest valid entries per row.

    Ties at the cut are broken by pixel order (stable sort), identically for any map.
    """
    valid = _all_valid(values, valid)
    n = values.shape[1]
    k = (valid.sum(1).double() * fraction).round().clamp(min=1)
    keys = values.double().masked_fill(~valid, -math.inf)
    order = keys.argsort(dim=1, descending=True, stable=True)
    position = torch.arange(n, device=values.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, position)
    return (rank < k[:, None]) & valid


def topk_iou(
    a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None, fraction: float = 0.1
) -> torch.Tensor:
    """Intersection over union of the top ``fraction`` pixels of ``a`` and of ``b`` per row.

    NaN when either side is constant over the valid pixels (no top set to speak of).
    """
    valid = _all_valid(a, valid)
    top_a, top_b = top_mask(a, valid, fraction), top_mask(b, valid, fraction)
    inter = (top_a & top_b).sum(1).double()
    union = (top_a | top_b).sum(1).double()
    undefined = _constant(a, valid) | _constant(b, valid)
    return torch.where(undefined, torch.nan, inter / union.clamp(min=1))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per row; NaN when either row is all zero."""
    a, b = a.double(), b.double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(1) / norms, torch.nan).clamp(-1.0, 1.0)
