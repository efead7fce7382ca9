"""Attribution drift: how much the maps of the same images changed between two evaluations."""

from __future__ import annotations

import torch

from dave_lightning.metrics import _stats
from dave_lightning.metrics._checks import as_maps, finite_rows, same_shape


def attribution_drift(
    maps_a: torch.Tensor, maps_b: torch.Tensor, *, top_fraction: float = 0.1
) -> dict[str, torch.Tensor]:
    """Per-image similarity of two map batches: ``spearman``, ``cosine``, ``topk_iou``.

    Each is (B,), 1 for identical maps; Spearman and top-k IoU are also 1 under any strictly
    increasing transformation of the values. NaN where undefined (constant or zero maps) or a
    map is not finite.
    """
    maps_a, maps_b = as_maps(maps_a, "maps_a"), as_maps(maps_b, "maps_b")
    same_shape(maps_a, maps_b)
    maps_b = maps_b.to(maps_a.device)
    finite = finite_rows(maps_a) & finite_rows(maps_b)
    a = torch.where(finite[:, None], maps_a.flatten(1), 0.0)
    b = torch.where(finite[:, None], maps_b.flatten(1), 0.0)
    scores = {
        "spearman": _stats.spearman(a, b),
        "cosine": _stats.cosine(a, b),
        "topk_iou": _stats.topk_iou(a, b, fraction=top_fraction),
    }
    dtype = torch.promote_types(maps_a.dtype, maps_b.dtype)
    return {name: torch.where(finite, v, torch.nan).to(dtype) for name, v in scores.items()}
