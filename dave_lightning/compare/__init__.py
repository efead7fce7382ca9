"""Compare attribution maps across evaluations: DAVEMonitor snapshots or Lightning checkpoints.

:mod:`~dave_lightning.compare.sources` finds and evaluates what is compared;
:mod:`~dave_lightning.compare.significance` gives the metrics' intervals and paired tests;
:mod:`~dave_lightning.compare.report` writes the report (docs/cli.md).
"""

from dave_lightning.compare.report import (
    drift_figure,
    write_drift,
    write_map_panels,
    write_metrics,
    write_report,
    write_tensorboard,
)
from dave_lightning.compare.significance import (
    PairTest,
    evaluation_pairs,
    metric_intervals,
    significance_tests,
    write_significance,
)
from dave_lightning.compare.sources import (
    Comparison,
    compare_checkpoints,
    compare_snapshots,
)

__all__ = [
    "Comparison",
    "PairTest",
    "compare_checkpoints",
    "compare_snapshots",
    "drift_figure",
    "evaluation_pairs",
    "metric_intervals",
    "significance_tests",
    "write_drift",
    "write_map_panels",
    "write_metrics",
    "write_report",
    "write_significance",
    "write_tensorboard",
]
