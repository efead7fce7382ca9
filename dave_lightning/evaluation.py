"""One evaluation of a model on a probe: the evaluation record, and the evaluator producing it.

The callback and ``compare`` both run a :class:`ProbeEvaluator`, so they compute the same
numbers. Data flows one way: probe → model adapter → attribution methods → maps → metrics
(the registry in ``dave_lightning.metrics.registry``); nothing here knows Lightning. An
evaluation can run in shards (one per DDP rank): :meth:`ProbeEvaluator.run` computes per-item
results for a shard and :meth:`ProbeEvaluator.finish` averages the merged items.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dave_lightning.attribution import DAVE, DAVESettings
from dave_lightning.attribution.methods import METHODS
from dave_lightning.core.validation import check_choice, check_int
from dave_lightning.metrics import make_grid_probe
from dave_lightning.metrics.faithfulness import BASELINES
from dave_lightning.metrics.grid import GridItems
from dave_lightning.metrics.registry import (
    METRICS,
    MetricInputs,
    MetricSpec,
    check_metric_names,
    metric_names,
)
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import InputEncoding, resolve_encoding
from dave_lightning.probe import Probe

MAX_GRIDS = 4
DEFAULT_DELETION_BATCH = 64  # deletion images per forward pass when batch_size is None
FORMAT = "dave-lightning-snapshot"
VERSION = 2


@dataclass
class Evaluation:
    """What one evaluation produced, on the CPU: the record snapshots store (docs/callback.md).

    ``maps``: method → (N, 1, H, W), DAVE under ``"dave"`` first. ``metrics``: name → value;
    DAVE's under the metric name (``energy_pg``), other methods' under ``<method>/<metric>``.
    ``values``: the per-item values behind each probe-mean metric, metric name → (N,) per probe
    image, or (G,) per grid cell for grid metrics (NaN where an item has no value).
    ``curves``: ``<method>/deletion_<order>_<baseline>`` → (fractions, mean probability over the
    probe). ``probabilities``: softmax probability of each prediction. ``reliability``: each
    DAVE map's split-half reliability. ``images``: the probe as the model sees it (optional).
    """

    maps: dict[str, torch.Tensor]
    targets: torch.Tensor
    predictions: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    probabilities: torch.Tensor | None = None
    reliability: torch.Tensor | None = None
    epoch: int | None = None
    global_step: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    images: torch.Tensor | None = None

    def to_record(self) -> dict[str, Any]:
        """The snapshot dict: tensors, numbers, strings, lists and dicts only."""
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
            "curves": {k: [x, y] for k, (x, y) in self.curves.items()},
            "epoch": self.epoch,
            "global_step": self.global_step,
            "settings": self.settings,
        }
        if self.images is not None:
            record["images"] = self.images
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Evaluation:
        """The evaluation of a snapshot dict of any version (version 1: curves without method)."""
        curves = {}
        for name, (x, y) in dict(record.get("curves") or {}).items():
            curves[name if "/" in name else f"dave/{name}"] = (x, y)
        return cls(
            maps={"dave": record["maps"].float(), **dict(record.get("method_maps") or {})},
            targets=record["targets"],
            predictions=record["predictions"],
            metrics=dict(record["metrics"]),
            values=dict(record.get("values") or {}),
            curves=curves,
            labels=record.get("labels"),
            probabilities=record.get("probabilities"),
            reliability=record.get("reliability"),
            epoch=record.get("epoch"),
            global_step=record.get("global_step"),
            settings=dict(record.get("settings") or {}),
            images=record.get("images"),
        )


@dataclass(frozen=True)
class EvaluationOptions:
    """What an evaluation computes besides DAVE's own settings; validated on construction."""

    metrics: tuple[str, ...] = ()
    compare_methods: tuple[str, ...] = ("input_x_gradient",)
    target: str = "label"
    grid_k: int = 2
    deletion_steps: int = 16
    deletion_baseline: str = "blur"

    def __post_init__(self) -> None:
        names = metric_names() if not self.metrics else self.metrics
        object.__setattr__(self, "metrics", check_metric_names(names))
        methods = self.compare_methods
        if isinstance(methods, str):
            raise TypeError(f"compare_methods must be a sequence of names, got {methods!r}")
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown compare_methods {unknown}; choose from {list(METHODS)}")
        object.__setattr__(self, "compare_methods", tuple(methods))
        check_choice("target", self.target, ("label", "pred"))
        check_int("grid_k", self.grid_k, minimum=1)
        check_int("deletion_steps", self.deletion_steps, minimum=2)
        check_choice("deletion_baseline", self.deletion_baseline, BASELINES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": list(self.metrics),
            "compare_methods": list(self.compare_methods),
            "target": self.target,
            "grid_k": self.grid_k,
            "deletion_steps": self.deletion_steps,
            "deletion_baseline": self.deletion_baseline,
        }


@dataclass(frozen=True)
class Shard:
    """This process's share of the probe: ``rank`` of ``world_size`` equal, contiguous parts.

    Every part has ``ceil(total / world_size)`` items; the last parts are padded with copies of
    the last item (their results are dropped), so that every rank runs the same passes.
    """

    rank: int = 0
    world_size: int = 1

    def size(self, total: int) -> int:
        return math.ceil(total / self.world_size)

    def start(self, total: int) -> int:
        return min(self.rank * self.size(total), total)

    def indices(self, total: int) -> torch.Tensor:
        start = self.start(total)
        return torch.arange(start, start + self.size(total)).clamp(max=total - 1)

    def real(self, total: int, rank: int) -> int:
        """How many items of ``rank``'s part are real (not padding)."""
        other = Shard(rank, self.world_size)
        return min(other.start(total) + self.size(total), total) - other.start(total)


@dataclass
class ItemResults:
    """Per-item results of one shard (padding included), before averaging.

    ``items``: probe-image items (``maps/<method>``, ``targets``, ``predictions``,
    ``probabilities``, ``reliability``, ``value/<metric>``, ``curve/<metric>``);
    ``grid_items``: grid-cell items (``value/<metric>``); ``fractions``: each curve's x-axis.
    """

    items: dict[str, torch.Tensor] = field(default_factory=dict)
    grid_items: dict[str, torch.Tensor] = field(default_factory=dict)
    fractions: dict[str, torch.Tensor] = field(default_factory=dict)


class ProbeEvaluator:
    """Runs DAVE, the compared methods and the registered metrics on a fixed probe.

    Args:
        probe: the images, labels and optional masks and regions.
        engine: DAVE's settings (``noise_alpha=None`` resolves per model).
        options: what else to compute (metrics, compared methods, target, grid and deletion).
        input_encoding: the models' input encoding (``None``: the model's own or detected).
    """

    def __init__(
        self,
        probe: Probe,
        engine: DAVESettings,
        options: EvaluationOptions,
        *,
        input_encoding: str | None = None,
    ) -> None:
        self.probe = probe
        self.engine = engine
        self.options = options
        self.input_encoding = input_encoding
        self.grid = self._grid_items() if "grid_pg" in options.metrics else None

    def settings(self) -> dict[str, Any]:
        """Everything that determines the numbers, for snapshots and comparisons."""
        return {
            "engine": self.engine.to_dict(),
            **self.options.to_dict(),
            "probe_size": len(self.probe),
            "image_size": list(self.probe.images.shape[-2:]),
            "probe_sha256": self.probe.digest(),
        }

    def evaluate(
        self,
        model: ModelAdapter,
        *,
        slow_metrics: bool = True,
        references: Mapping[str, torch.Tensor] | None = None,
    ) -> Evaluation:
        """Maps, predictions and metrics of ``model`` on the whole probe, in this process.

        ``slow_metrics=False`` leaves out the metrics that need extra model passes;
        ``references`` (name → earlier DAVE maps) give the drift metrics.
        """
        return self.finish(self.run(model, slow_metrics=slow_metrics, references=references))

    def run(
        self,
        model: ModelAdapter,
        *,
        slow_metrics: bool = True,
        references: Mapping[str, torch.Tensor] | None = None,
        shard: Shard = Shard(),
    ) -> ItemResults:
        """Per-item results of this process's ``shard`` of the probe."""
        probe, options = self.probe, self.options
        index = shard.indices(len(probe))
        first = shard.start(len(probe))
        results = ItemResults()
        with model.attribution():
            device = model.device
            images = probe.images[index].to(device)
            encoding = resolve_encoding(self.input_encoding, model, images)
            logits = self._logits(model, images)
            predictions = logits.argmax(1)
            probabilities = logits.softmax(1).gather(1, predictions[:, None])[:, 0]
            labels = probe.labels[index].to(device)
            targets = labels if options.target == "label" else predictions
            dave = DAVE.from_settings(model, self.engine, self.input_encoding)
            maps, reliability = dave.attribute(
                images, targets, return_reliability=True, first_index=first
            )
            methods = {"dave": dave}
            maps_by_method = {"dave": maps}
            for name in options.compare_methods:
                methods[name] = METHODS[name](model, self.engine.batch_size)
                maps_by_method[name] = methods[name].attribute(images, targets)
            results.items.update(
                targets=targets,
                predictions=predictions,
                probabilities=probabilities,
                reliability=reliability,
            )
            specs = self._specs(model, slow_metrics, references)
            grid, grid_first = self._grid_shard(shard, device, encoding)
            for name, method in methods.items():
                results.items[f"maps/{name}"] = maps_by_method[name]
                inputs = MetricInputs(
                    method=name,
                    maps=maps_by_method[name],
                    images=encoding.picture(images),
                    targets=targets,
                    model=_encoded(model, encoding),
                    attribute=_attribute(method, encoding, first, name == "dave"),
                    grid_attribute=_attribute(method, encoding, grid_first, name == "dave"),
                    masks=_take(probe.masks, index, device),
                    regions={k: _take(v, index, device) for k, v in (probe.regions or {}).items()},
                    grid=grid,
                    patch_size=model.patch_size,
                    references={k: v[index].to(device) for k, v in (references or {}).items()},
                    grid_k=options.grid_k,
                    deletion_steps=options.deletion_steps,
                    deletion_baseline=options.deletion_baseline,
                    batch_size=self.engine.batch_size or DEFAULT_DELETION_BATCH,
                )
                self._metrics(specs, inputs, "" if name == "dave" else f"{name}/", results)
        return results

    def finish(self, results: ItemResults) -> Evaluation:
        """The evaluation record from merged, unpadded per-item results."""
        items = {key: value.cpu() for key, value in results.items.items()}
        grid_items = {key: value.cpu() for key, value in results.grid_items.items()}
        labels = self.probe.labels
        values = {
            "probe_accuracy": (items["predictions"] == labels).float(),
            "map_reliability": items["reliability"].float(),
        }
        for source in (items, grid_items):
            for key, value in source.items():
                if key.startswith("value/"):
                    values[key.removeprefix("value/")] = value.float()
        metrics = {key: float(value.nanmean()) for key, value in values.items()}
        curves = {}
        for key, x in results.fractions.items():
            method, _, name = key.rpartition("/")
            curves[f"{method or 'dave'}/{name}"] = (x.cpu(), items[f"curve/{key}"].nanmean(0))
        return Evaluation(
            maps={
                key.removeprefix("maps/"): value
                for key, value in items.items()
                if key.startswith("maps/")
            },
            targets=items["targets"],
            predictions=items["predictions"],
            metrics=metrics,
            values=values,
            curves=curves,
            labels=labels,
            probabilities=items["probabilities"],
            reliability=items["reliability"],
        )

    # ------------------------------------------------------------------------------ parts

    def _logits(self, model: ModelAdapter, images: torch.Tensor) -> torch.Tensor:
        """Logits of the probe images, ``batch_size`` images per pass."""
        size = self.engine.batch_size or len(images)
        with torch.no_grad():
            return torch.cat([model(images[i : i + size]) for i in range(0, len(images), size)])

    def _specs(
        self,
        model: ModelAdapter,
        slow_metrics: bool,
        references: Mapping[str, torch.Tensor] | None,
    ) -> list[MetricSpec]:
        """The registered metrics to compute now: selected (or implicit), needs met."""
        available = {
            "masks": self.probe.masks is not None,
            "regions": bool(self.probe.regions),
            "grid": self.grid is not None,
            "patch_size": model.patch_size is not None,
            "references": bool(references),
        }
        return [
            spec
            for name, spec in METRICS.items()
            if (spec.implicit or name in self.options.metrics)
            and (slow_metrics or not spec.slow)
            and all(available[need] for need in spec.needs)
        ]

    def _metrics(
        self, specs: Sequence[MetricSpec], inputs: MetricInputs, prefix: str, results: ItemResults
    ) -> None:
        for spec in specs:
            if spec.dave_only and inputs.method != "dave":
                continue
            output = spec.compute(inputs)
            target = results.grid_items if spec.unit == "grid" else results.items
            for key, value in output.values.items():
                target[f"value/{prefix}{key}"] = value
            for key, (x, y) in output.curves.items():
                results.fractions[f"{prefix}{key}"] = x
                results.items[f"curve/{prefix}{key}"] = y

    def _grid_shard(
        self, shard: Shard, device: torch.device, encoding: InputEncoding
    ) -> tuple[GridItems | None, int]:
        """This shard's grid items (pictures, on ``device``) and the index of its first one."""
        if self.grid is None:
            return None, 0
        total = len(self.grid.targets)
        index = shard.indices(total)
        images, targets, cells = (tensor[index].to(device) for tensor in self.grid)
        return GridItems(encoding.picture(images), targets, cells), shard.start(total)

    def _grid_items(self) -> GridItems | None:
        """Grids of distinct classes composed once from the probe, or None (with a warning)."""
        try:
            grids = make_grid_probe(
                self.probe.images,
                self.probe.labels,
                k=self.options.grid_k,
                size=tuple(self.probe.images.shape[-2:]),
                max_grids=MAX_GRIDS,
            )
        except ValueError as error:
            warnings.warn(f"grid_pg is skipped: {error}", stacklevel=2)
            return None
        return grids.items()


def merge_shards(results: Sequence[ItemResults], probe_size: int, grid_size: int) -> ItemResults:
    """One :class:`ItemResults` from every rank's (in rank order), padding dropped."""
    world = len(results)
    sizes = [Shard(0, world).real(probe_size, rank) for rank in range(world)]
    grid_sizes = [Shard(0, world).real(grid_size, rank) for rank in range(world)]

    def merged(key: str, parts: list[dict[str, torch.Tensor]], counts: list[int]) -> torch.Tensor:
        return torch.cat([part[key][:count] for part, count in zip(parts, counts, strict=True)])

    items = [r.items for r in results]
    grids = [r.grid_items for r in results]
    return ItemResults(
        items={key: merged(key, items, sizes) for key in items[0]},
        grid_items={key: merged(key, grids, grid_sizes) for key in grids[0]},
        fractions=dict(results[0].fractions),
    )


def _take(tensor: torch.Tensor | None, index: torch.Tensor, device: torch.device) -> Any:
    return None if tensor is None else tensor[index].to(device)


def _encoded(
    model: ModelAdapter, encoding: InputEncoding
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model on pictures: encode them, then run it."""
    return lambda pictures: model(encoding.encode(pictures))


def _attribute(
    method: Any, encoding: InputEncoding, first_index: int, is_dave: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The method on pictures; DAVE's maps keep their per-item seeds (``first_index``)."""
    if is_dave:
        return lambda pictures, target: method.attribute(
            encoding.encode(pictures), target, first_index=first_index
        )
    return lambda pictures, target: method.attribute(encoding.encode(pictures), target)
