"""Explanation-quality metrics (docs/metrics.md): functions, torchmetrics classes, a registry.

Every functional metric works with maps from any attribution method, (B, 1, H, W) or (B, H, W),
float32 or float64, on any device, and returns per-image values with NaN where undefined; the
classes average those values over batches and DDP ranks, skipping NaN.
"""

from dave_lightning.metrics.artifacts import patch_artifact_score
from dave_lightning.metrics.classes import (
    AttributionDrift,
    DeletionAUC,
    EnergyPointingGame,
    Gini,
    GridPointingGame,
    InsertionAUC,
    PatchArtifactScore,
    Stability,
)
from dave_lightning.metrics.drift import attribution_drift, drift_matrix
from dave_lightning.metrics.faithfulness import (
    baseline_images,
    curve_auc,
    deletion_curve,
    insertion_curve,
)
from dave_lightning.metrics.grid import GridItems, GridProbe, make_grid_probe
from dave_lightning.metrics.localization import (
    boxes_to_masks,
    energy_pointing_game,
    grid_pointing_game,
)
from dave_lightning.metrics.registry import (
    CurveFigure,
    ItemCurve,
    KeyContext,
    MetricInputs,
    MetricSpec,
    MetricValues,
    register_metric,
)
from dave_lightning.metrics.sanity import (
    SANITY_THRESHOLD,
    Cascade,
    cascade_figure,
    model_randomization,
    sanity_fails,
)
from dave_lightning.metrics.sparsity import gini
from dave_lightning.metrics.stability import STABILITY_TRANSFORMS, stability

__all__ = [
    "SANITY_THRESHOLD",
    "STABILITY_TRANSFORMS",
    "AttributionDrift",
    "Cascade",
    "CurveFigure",
    "DeletionAUC",
    "EnergyPointingGame",
    "Gini",
    "GridItems",
    "GridPointingGame",
    "GridProbe",
    "InsertionAUC",
    "ItemCurve",
    "KeyContext",
    "MetricInputs",
    "MetricSpec",
    "MetricValues",
    "PatchArtifactScore",
    "Stability",
    "attribution_drift",
    "baseline_images",
    "boxes_to_masks",
    "cascade_figure",
    "curve_auc",
    "deletion_curve",
    "drift_matrix",
    "energy_pointing_game",
    "gini",
    "grid_pointing_game",
    "insertion_curve",
    "make_grid_probe",
    "model_randomization",
    "patch_artifact_score",
    "register_metric",
    "sanity_fails",
    "stability",
]
