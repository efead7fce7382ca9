"""One evaluation of a model on a probe: the options, the evaluator, the record it produces and
the per-item results that shards of it exchange (docs/architecture.md)."""

from dave_lightning.evaluation.evaluator import MetricPlan, ProbeEvaluator
from dave_lightning.evaluation.items import ItemResults, Shard, merge_shards
from dave_lightning.evaluation.options import EvaluationOptions
from dave_lightning.evaluation.record import FORMAT, VERSION, Curve, Evaluation

__all__ = [
    "FORMAT",
    "VERSION",
    "Curve",
    "Evaluation",
    "EvaluationOptions",
    "ItemResults",
    "MetricPlan",
    "ProbeEvaluator",
    "Shard",
    "merge_shards",
]
