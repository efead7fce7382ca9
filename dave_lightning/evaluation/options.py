"""What an evaluation computes besides DAVE's own settings, declared once with its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dave_lightning.attribution.methods import check_method_names
from dave_lightning.core.validation import check_choice, check_int, check_number
from dave_lightning.metrics.faithfulness import BASELINES
from dave_lightning.metrics.registry import check_metric_names, metric_names


@dataclass(frozen=True)
class EvaluationOptions:
    """The metrics, compared methods, explained class, grid and deletion settings, and the
    confidence of the intervals; validated on construction.

    ``metrics=None`` computes every registered metric whose inputs the probe and model provide
    (those left out are said once, in a warning); metrics named explicitly must be computable.
    """

    metrics: tuple[str, ...] | None = None
    compare_methods: tuple[str, ...] = ("input_x_gradient",)
    target: str = "label"
    grid_k: int = 2
    deletion_steps: int = 16
    deletion_baseline: str = "blur"
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.metrics is not None:
            object.__setattr__(self, "metrics", check_metric_names(self.metrics))
        object.__setattr__(self, "compare_methods", check_method_names(self.compare_methods))
        check_choice("target", self.target, ("label", "pred"))
        check_int("grid_k", self.grid_k, minimum=1)
        check_int("deletion_steps", self.deletion_steps, minimum=2)
        check_choice("deletion_baseline", self.deletion_baseline, BASELINES)
        check_number("confidence", self.confidence, 0.5, 0.999)

    @property
    def explicit_metrics(self) -> bool:
        """Whether the metrics were named (then each must be computable) or left to default."""
        return self.metrics is not None

    def selected_metrics(self) -> tuple[str, ...]:
        """The named metrics, or every registered one."""
        return metric_names() if self.metrics is None else self.metrics

    def to_dict(self) -> dict[str, Any]:
        """Plain values for snapshots, reports and state keys (the metrics resolved)."""
        return {
            "metrics": list(self.selected_metrics()),
            "compare_methods": list(self.compare_methods),
            "target": self.target,
            "grid_k": self.grid_k,
            "deletion_steps": self.deletion_steps,
            "deletion_baseline": self.deletion_baseline,
            "confidence": self.confidence,
        }
