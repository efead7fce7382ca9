"""The evaluation record: what one evaluation produced, frozen when it is made.

The snapshot files ``compare`` reads are this record as a plain dict (:meth:`Evaluation.to_record`,
docs/callback.md "Snapshots"); :meth:`Evaluation.from_record` reads every format version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

FORMAT = "dave-lightning-snapshot"
VERSION = 3

#: Legend labels of the deletion orders in snapshots of versions 1 and 2, which stored none.
_LEGACY_ORDER_LABELS = {
    "lerf": "least relevant first",
    "morf": "most relevant first",
    "random": "random order",
}


@dataclass(frozen=True)
class Curve:
    """A probe-mean curve: the x-axis (S,), the mean over the probe (S,), its legend label, the
    metric that drew it (e.g. ``deletion``), the attribution method whose maps ordered it, and
    whether it is a control that does not depend on the maps (the random order)."""

    fractions: torch.Tensor
    values: torch.Tensor
    label: str
    metric: str
    method: str
    control: bool = False


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation produced, on the CPU (docs/callback.md, "Snapshots").

    ``maps``: method → (N, 1, H, W), DAVE under ``"dave"`` first. ``metrics``: key → probe mean;
    DAVE's under the metric key (``energy_pg``), other methods' under ``<method>/<key>``.
    ``values``: the per-item values behind each metric, (N,) per probe image, or (G,) per grid
    cell for grid metrics (NaN where an item has no value). ``intervals``: key → (low, high),
    the confidence interval of each probe mean. ``curves``: ``<method>/<curve key>`` → curve.
    ``probabilities``: softmax probability of each prediction. ``reliability``: each DAVE map's
    split-half reliability. ``slow``: whether the slow metrics were computed. ``alerts``: region
    → whether the region alarm was raised. ``seconds``: the evaluation's wall time. ``images``:
    the probe as the model sees it, in a snapshot that carries it (a run's first).
    """

    maps: dict[str, torch.Tensor]
    targets: torch.Tensor
    predictions: torch.Tensor
    labels: torch.Tensor | None = None
    probabilities: torch.Tensor | None = None
    reliability: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    global_step: int | None = None
    epoch: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    slow: bool = True
    alerts: dict[str, bool] = field(default_factory=dict)
    seconds: float | None = None
    images: torch.Tensor | None = None

    def summary(self) -> dict[str, Any]:
        """The evaluation as a history entry: when it ran and its numbers, no tensors."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "metrics": dict(self.metrics),
            "intervals": dict(self.intervals),
            "slow": self.slow,
            "alerts": dict(self.alerts),
            "seconds": self.seconds,
        }

    def to_record(self, images: torch.Tensor | None = None) -> dict[str, Any]:
        """The snapshot dict: tensors, numbers, strings, lists and dicts only; ``images`` (else
        the record's own), the probe as the model sees it, goes into a run's first snapshot."""
        record: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "maps": self.maps["dave"],
            "method_maps": {k: v for k, v in self.maps.items() if k != "dave"},
            "targets": self.targets,
            "predictions": self.predictions,
            "labels": self.labels,
            "probabilities": self.probabilities,
            "reliability": self.reliability,
            "metrics": dict(self.metrics),
            "values": dict(self.values),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "curves": {
                key: {
                    "fractions": c.fractions,
                    "values": c.values,
                    "label": c.label,
                    "metric": c.metric,
                    "method": c.method,
                    "control": c.control,
                }
                for key, c in self.curves.items()
            },
            "epoch": self.epoch,
            "global_step": self.global_step,
            "settings": self.settings,
            "slow": self.slow,
            "alerts": dict(self.alerts),
            "seconds": self.seconds,
        }
        images = self.images if images is None else images
        if images is not None:
            record["images"] = images
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Evaluation:
        """The evaluation of a snapshot dict of any version."""
        return cls(
            maps={"dave": record["maps"].float(), **dict(record.get("method_maps") or {})},
            targets=record["targets"],
            predictions=record["predictions"],
            labels=record.get("labels"),
            probabilities=record.get("probabilities"),
            reliability=record.get("reliability"),
            metrics=dict(record["metrics"]),
            values=dict(record.get("values") or {}),
            intervals={
                k: (float(v[0]), float(v[1])) for k, v in (record.get("intervals") or {}).items()
            },
            curves=_curves(record.get("curves") or {}),
            global_step=record.get("global_step"),
            epoch=record.get("epoch"),
            settings=dict(record.get("settings") or {}),
            slow=bool(record.get("slow", bool(record.get("curves")))),
            alerts=dict(record.get("alerts") or {}),
            seconds=record.get("seconds"),
            images=record.get("images"),
        )


def _curves(stored: Mapping[str, Any]) -> dict[str, Curve]:
    """Curves of any snapshot version: v3 dicts; v2 ``[x, y]`` under ``<method>/deletion_*``;
    v1 the same without the method (DAVE's)."""
    curves = {}
    for key, value in stored.items():
        if isinstance(value, Mapping):
            curves[key] = Curve(
                value["fractions"],
                value["values"],
                value["label"],
                value["metric"],
                value["method"],
                bool(value.get("control", False)),
            )
            continue
        method, _, name = key.rpartition("/")
        order = name.split("_")[1]
        label = _LEGACY_ORDER_LABELS.get(order, order)
        curves[f"{method or 'dave'}/{name}"] = Curve(
            value[0], value[1], label, "deletion", method or "dave", control=order == "random"
        )
    return curves
