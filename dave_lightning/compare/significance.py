"""Intervals and paired significance tests of a comparison's metrics.

Each probe-mean metric gets a 95 % interval from its per-item values
(:func:`~dave_lightning.core.uncertainty.mean_interval`). Each evaluation ``#i`` is tested
against the first (``#0``) and the previous one (``#i−1``), metric by metric, paired over the
probe images (grid cells for grid metrics), with
:func:`~dave_lightning.core.uncertainty.paired_difference`; Holm's correction runs across the
metrics of each pair (docs/cli.md, "Reading significance").
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dave_lightning.compare.sources import Comparison
from dave_lightning.core.uncertainty import PairedDifference, holm, mean_interval, paired_difference

CONFIDENCE = 0.95
ALPHA = 0.05
COLUMNS = (
    "metric",
    "evaluation_a",
    "evaluation_b",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "significant",
)


@dataclass(frozen=True)
class PairTest:
    """One metric's paired test of evaluation ``#b`` against ``#a``; ``significant`` after
    Holm's correction across the metrics tested for that pair."""

    metric: str
    a: int
    b: int
    result: PairedDifference
    significant: bool


def comparison_seed(comparison: Comparison) -> int:
    """The seed of the statistics: the compared evaluations' engine seed (0 when unknown)."""
    return int((comparison.settings.get("engine") or {}).get("seed", 0))


def comparison_confidence(comparison: Comparison) -> float:
    """The confidence of the intervals: the evaluations' own (``CONFIDENCE`` when unknown)."""
    return float(comparison.settings.get("confidence", CONFIDENCE))


def metric_intervals(
    comparison: Comparison, names: Sequence[str]
) -> list[dict[str, tuple[float, float] | None]]:
    """Per evaluation, metric → its interval at the evaluations' ``confidence`` (None: no
    per-item values, or fewer than two items with a value)."""
    confidence = comparison_confidence(comparison)
    return [
        {
            name: mean_interval(values[name], confidence) if name in values else None
            for name in names
        }
        for values in (entry.evaluation.values for entry in comparison.entries)
    ]


def evaluation_pairs(count: int) -> list[tuple[int, int]]:
    """``(0, i)`` and ``(i − 1, i)`` for each evaluation ``i`` after the first, once when the
    previous evaluation is the first."""
    pairs = []
    for index in range(1, count):
        pairs.append((0, index))
        if index - 1 != 0:
            pairs.append((index - 1, index))
    return pairs


def significance_tests(comparison: Comparison, names: Sequence[str]) -> list[PairTest]:
    """Every pair of :func:`evaluation_pairs`, every metric with per-item values for the same
    items in both evaluations; Holm across the metrics of a pair (untested ones, NaN, left out)."""
    seed = comparison_seed(comparison)
    confidence = comparison_confidence(comparison)
    tests = []
    for a, b in evaluation_pairs(len(comparison.entries)):
        first, second = (comparison.entries[i].evaluation.values for i in (a, b))
        results = {
            name: paired_difference(first[name], second[name], confidence, seed=seed)
            for name in names
            if _pairable(first, second, name)
        }
        tested = [name for name, result in results.items() if not math.isnan(result.p_value)]
        decisions = holm([results[name].p_value for name in tested], ALPHA)
        significant = dict(zip(tested, decisions, strict=True))
        tests += [
            PairTest(name, a, b, result, significant.get(name, False))
            for name, result in results.items()
        ]
    return tests


def unpaired(comparison: Comparison, names: Sequence[str]) -> list[str]:
    """``metric #a–#b`` for each metric with per-item values in both evaluations of a pair that
    cannot be paired: different item counts (e.g. grids of another ``grid_k``)."""
    found = []
    for a, b in evaluation_pairs(len(comparison.entries)):
        first, second = (comparison.entries[i].evaluation.values for i in (a, b))
        for name in names:
            if name in first and name in second and not _pairable(first, second, name):
                found.append(f"{name} #{a}–#{b}")
    return found


def write_significance(tests: Sequence[PairTest], path: Path) -> Path:
    """``significance.csv``: one row per test, evaluations named ``#i`` as in ``metrics.md``."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for test in tests:
            result = test.result
            writer.writerow(
                [
                    test.metric,
                    f"#{test.a}",
                    f"#{test.b}",
                    *(f"{v:.6g}" for v in (result.difference, result.ci_low, result.ci_high)),
                    f"{result.p_value:.6g}",
                    test.significant,
                ]
            )
    return path


def _pairable(
    first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], name: str
) -> bool:
    return name in first and name in second and first[name].shape == second[name].shape
