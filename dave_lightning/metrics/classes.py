"""torchmetrics wrappers: accumulate the per-image metrics over batches and ranks.

Each class keeps a sum and a count of the non-NaN per-image values (``dist_reduce_fx="sum"``,
so DDP reduction is exact) and ``compute()`` returns their mean: NaN images (empty masks,
constant maps) are skipped, and the result is NaN when nothing was counted. Multi-valued metrics
return a dict of scalars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from dave_lightning.metrics.artifacts import patch_artifact_score
from dave_lightning.metrics.drift import attribution_drift
from dave_lightning.metrics.faithfulness import (
    CURVE_DEFAULTS,
    ORDERS,
    Order,
    curve_auc,
    deletion_curve,
    insertion_curve,
)
from dave_lightning.metrics.localization import energy_pointing_game, grid_pointing_game
from dave_lightning.metrics.sparsity import gini
from dave_lightning.metrics.stability import STABILITY_TRANSFORMS, stability


class _NanMean(Metric):
    """NaN-skipping mean of per-image values under the names in ``outputs``."""

    is_differentiable = False
    full_state_update = False
    outputs: tuple[str, ...] = ("value",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(len(self.outputs)), dist_reduce_fx="sum")
        self.add_state(
            "count", torch.zeros(len(self.outputs), dtype=torch.long), dist_reduce_fx="sum"
        )

    def _accumulate(self, values: torch.Tensor | dict[str, torch.Tensor]) -> None:
        """Add (B,) values, or a dict of them keyed like ``outputs``."""
        rows = (
            torch.stack([values[k] for k in self.outputs]) if isinstance(values, dict) else values
        )
        rows = rows.reshape(len(self.outputs), -1).to(self.total.device)
        keep = ~torch.isnan(rows)
        self.total += torch.where(keep, rows, 0.0).sum(1).to(self.total.dtype)
        self.count += keep.sum(1)

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mean of the counted values (NaN if none)."""
        mean = self.total / self.count
        return mean[0] if len(self.outputs) == 1 else dict(zip(self.outputs, mean, strict=True))


class EnergyPointingGame(_NanMean):
    """Mean :func:`energy_pointing_game` over images with non-empty masks."""

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0

    def update(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        self._accumulate(energy_pointing_game(maps, masks))


class GridPointingGame(_NanMean):
    """Mean :func:`grid_pointing_game` on k×k grids."""

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0

    def __init__(self, k: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k

    def update(self, maps: torch.Tensor, target_cell: torch.Tensor | int) -> None:
        self._accumulate(grid_pointing_game(maps, self.k, target_cell))


class Gini(_NanMean):
    """Mean :func:`gini` of the positive attribution (sparser, more concise maps score higher)."""

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0

    def update(self, maps: torch.Tensor) -> None:
        self._accumulate(gini(maps))


class PatchArtifactScore(_NanMean):
    """Mean :func:`patch_artifact_score`: the patch-grid artifact, lower is better."""

    higher_is_better = False
    plot_lower_bound, plot_upper_bound = 0.0, 1.0

    def __init__(self, patch_size: int | tuple[int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def update(self, maps: torch.Tensor) -> None:
        self._accumulate(patch_artifact_score(maps, self.patch_size))


class AttributionDrift(_NanMean):
    """Mean :func:`attribution_drift`; a diagnostic, so neither direction is better."""

    higher_is_better = None
    outputs = ("spearman", "cosine", "topk_iou")

    def __init__(self, top_fraction: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.top_fraction = top_fraction

    def update(self, maps_a: torch.Tensor, maps_b: torch.Tensor) -> None:
        self._accumulate(attribution_drift(maps_a, maps_b, top_fraction=self.top_fraction))


class Stability(_NanMean):
    """Mean :func:`stability` (``pearson``, ``spearman``, ``topk_iou``) of an attribution method.

    ``update(attribute_fn, images, target)`` calls ``attribute_fn``; the callable is not stored.
    """

    higher_is_better = True
    outputs = ("pearson", "spearman", "topk_iou")

    def __init__(
        self,
        transforms: Sequence[tuple[float, tuple[float, float]]] = STABILITY_TRANSFORMS,
        top_fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.transforms = tuple(transforms)
        self.top_fraction = top_fraction

    def update(
        self,
        attribute_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        target: torch.Tensor | int,
    ) -> None:
        self._accumulate(
            stability(
                attribute_fn,
                images,
                target,
                transforms=self.transforms,
                top_fraction=self.top_fraction,
            )
        )


class _CurveAUC(_NanMean):
    """Mean :func:`curve_auc` of perturbation curves; ``update(model, images, target, maps)``.

    The model is passed to each update, not stored, so the metric holds no parameters.
    """

    best_order: Order
    curve: Callable[..., tuple[torch.Tensor, torch.Tensor]]

    def __init__(self, order: Order | None = None, **kwargs: Any) -> None:
        """``order`` and the curve's settings (``baseline``, ``steps``, ``max_fraction``,
        ``batch_size``, ``seed``, as in :func:`deletion_curve`); other keyword arguments go to
        torchmetrics' ``Metric``."""
        curve = {key: kwargs.pop(key) for key in list(kwargs) if key in CURVE_DEFAULTS}
        super().__init__(**kwargs)
        order = self.best_order if order is None else order
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.order = order
        self.options = {"order": order, **CURVE_DEFAULTS, **curve}

    @property
    def higher_is_better(self) -> bool | None:  # type: ignore[override]
        """True for the order whose curve should stay high, False for the other, None if random."""
        return None if self.order == "random" else self.order == self.best_order

    def update(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        target: torch.Tensor | int,
        maps: torch.Tensor,
    ) -> None:
        fractions, probabilities = self.curve(model, images, target, maps, **self.options)
        self._accumulate(curve_auc(fractions, probabilities))


class DeletionAUC(_CurveAUC):
    """Deletion AUC: ``lerf`` (default, the reference protocol) higher is better, ``morf`` lower."""

    best_order = "lerf"
    curve = staticmethod(deletion_curve)
    plot_lower_bound, plot_upper_bound = 0.0, 1.0


class InsertionAUC(_CurveAUC):
    """Insertion AUC: ``morf`` (default) higher is better, ``lerf`` lower."""

    best_order = "morf"
    curve = staticmethod(insertion_curve)
    plot_lower_bound, plot_upper_bound = 0.0, 1.0
