"""Attribution drift: how much the maps of the same images changed between two evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dave_lightning.core import stats
from dave_lightning.metrics._checks import as_maps, finite_rows, same_shape


def attribution_drift(
    maps_a: torch.Tensor, maps_b: torch.Tensor, *, top_fraction: float = 0.1
) -> dict[str, torch.Tensor]:
    """Per-image similarity of two map batches of the same images.

    Args:
        maps_a, maps_b: (B, 1, H, W) or (B, H, W) maps.
        top_fraction: the share of pixels in the top sets of ``topk_iou``.

    Returns:
        A dict of (B,) tensors, ``spearman``, ``cosine`` and ``topk_iou``, 1 for identical maps
        (Spearman and top-k IoU also under any strictly increasing rescaling); NaN where
        undefined (constant or zero maps) or a map is not finite.

    Raises:
        ValueError: for batches of different shapes.
    """
    maps_a, maps_b = as_maps(maps_a, "maps_a"), as_maps(maps_b, "maps_b")
    same_shape(maps_a, maps_b)
    maps_b = maps_b.to(maps_a.device)
    finite = finite_rows(maps_a) & finite_rows(maps_b)
    a = torch.where(finite[:, None], maps_a.flatten(1), 0.0)
    b = torch.where(finite[:, None], maps_b.flatten(1), 0.0)
    scores = {
        "spearman": stats.spearman(a, b),
        "cosine": stats.cosine(a, b),
        "topk_iou": stats.topk_iou(a, b, fraction=top_fraction),
    }
    dtype = torch.promote_types(maps_a.dtype, maps_b.dtype)
    return {name: torch.where(finite, v, torch.nan).to(dtype) for name, v in scores.items()}


#: The statistics of :func:`drift_matrix`.
MATRIX_STATISTICS = ("spearman", "topk_iou")


def drift_matrix(
    maps: Sequence[torch.Tensor], *, top_fraction: float = 0.1
) -> dict[str, torch.Tensor]:
    """Drift between every pair of evaluations' maps, averaged over the images.

    ``maps`` holds one (B, 1, H, W) or (B, H, W) batch per evaluation, the same images in each.
    Returns statistic (``spearman``, ``topk_iou``) → (E, E) float64, symmetric; the diagonal is
    each evaluation with itself (1, or NaN where maps are constant or not finite). The numbers
    are those of :func:`attribution_drift` on each pair, but ranks and top-k masks are computed
    once per evaluation, so E evaluations cost E rankings instead of E².
    """
    ranks, tops, defined = [], [], []
    for evaluation_maps in maps:
        values = as_maps(evaluation_maps).flatten(1).double()
        finite = torch.isfinite(values).all(1)
        values = torch.where(finite[:, None], values, 0.0)
        centred = stats.average_ranks(values)
        centred = centred - centred.mean(1, keepdim=True)
        ranks.append((centred / centred.norm(dim=1, keepdim=True).clamp(min=1e-12)).float())
        tops.append(stats.top_mask(values, fraction=top_fraction))
        defined.append(finite & (values.amax(1) > values.amin(1)))
    per_image: dict[str, list[torch.Tensor]] = {name: [] for name in MATRIX_STATISTICS}
    for image in range(ranks[0].shape[0]):
        z = torch.stack([r[image] for r in ranks]).double()
        top = torch.stack([t[image] for t in tops]).double()
        inter = top @ top.T
        counts = top.sum(1)
        per_image["spearman"].append((z @ z.T).clamp(-1.0, 1.0))
        per_image["topk_iou"].append(inter / (counts[:, None] + counts[None, :] - inter))
    valid = torch.stack(defined, 1)  # (N, E)
    pairs = valid[:, :, None] & valid[:, None, :]
    return {
        name: torch.where(pairs, torch.stack(values), torch.nan).nanmean(0)
        for name, values in per_image.items()
    }
