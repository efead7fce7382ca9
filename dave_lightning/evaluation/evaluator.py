"""The evaluator: DAVE, the compared methods and the registered metrics on a fixed probe.

The monitor and ``compare`` both run a :class:`ProbeEvaluator`, so they compute the same
numbers. Data flows one way: probe → model adapter → attribution methods → maps → metrics (the
registry in ``dave_lightning.metrics.registry``); nothing here knows Lightning. An evaluation
can run in shards (one per DDP rank): :meth:`ProbeEvaluator.run` computes per-item results for a
shard and :meth:`ProbeEvaluator.finish` averages the merged items into an :class:`Evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dave_lightning.attribution import DAVE, DAVESettings
from dave_lightning.attribution.methods import AttributionMethod, method_factory
from dave_lightning.core.uncertainty import mean_interval
from dave_lightning.evaluation.items import CurveInfo, ItemResults, Shard
from dave_lightning.evaluation.options import EvaluationOptions
from dave_lightning.evaluation.record import Curve, Evaluation
from dave_lightning.metrics.grid import GridItems, make_grid_probe
from dave_lightning.metrics.registry import (
    NEEDS,
    KeyContext,
    MetricInputs,
    MetricSpec,
    metric_keys,
    selected_specs,
    unmet_needs,
)
from dave_lightning.metrics.sanity import MethodBuilder
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import InputEncoding
from dave_lightning.probe import Probe

MAX_GRIDS = 4
WHOLE_PROBE = Shard()  # a process that evaluates the whole probe
DEFAULT_DELETION_BATCH = 64  # deletion images per forward pass when batch_size is None


@dataclass(frozen=True)
class MetricPlan:
    """The metrics an evaluator computes for a model, decided once: ``specs`` whose inputs the
    probe and model provide, and the default metrics ``left_out`` (name → unmet needs)."""

    specs: tuple[MetricSpec, ...]
    left_out: dict[str, list[str]] = field(default_factory=dict)

    def needs(self, need: str) -> bool:
        """Whether a planned metric needs ``need`` (e.g. drift references)."""
        return any(need in spec.needs for spec in self.specs)


class ProbeEvaluator:
    """Runs DAVE, the compared methods and the registered metrics on a fixed probe.

    Args:
        probe: the images, labels and optional masks and regions.
        engine: DAVE's settings (``noise_alpha`` resolved for the model).
        options: what else to compute (metrics, compared methods, target, grid, deletion and
            the intervals' confidence).
        encoding: the models' input encoding, resolved once for the probe.
    """

    def __init__(
        self,
        probe: Probe,
        engine: DAVESettings,
        options: EvaluationOptions,
        encoding: InputEncoding,
    ) -> None:
        self.probe = probe
        self.engine = engine
        self.options = options
        self.encoding = encoding
        self.grid: GridItems | None = None
        self.grid_problem: str | None = None
        if any("grid" in spec.needs for spec in selected_specs(options.selected_metrics())):
            self.grid, self.grid_problem = self._grid_items()

    def settings(self) -> dict[str, Any]:
        """Everything that determines the numbers, for snapshots and comparisons."""
        return {
            "engine": self.engine.to_dict(),
            **self.options.to_dict(),
            "probe_size": len(self.probe),
            "image_size": list(self.probe.images.shape[-2:]),
            "probe_sha256": self.probe.digest(),
        }

    def plan(self, model: ModelAdapter) -> MetricPlan:
        """The metrics this evaluator computes for ``model``.

        Raises:
            ValueError: for a metric named in ``metrics=`` whose inputs are missing, naming the
                fix.
        """
        available = {
            "masks": self.probe.masks is not None,
            "regions": bool(self.probe.regions),
            "grid": self.grid is not None,
            "patch_size": _divides(model.patch_size, self.probe.images.shape[-2:]),
            "references": True,  # from the second evaluation of a history on
        }
        specs, left_out = [], {}
        for spec in selected_specs(self.options.selected_metrics()):
            unmet = unmet_needs(spec, available)
            if not unmet:
                specs.append(spec)
            elif self.options.explicit_metrics and not spec.implicit:
                raise ValueError(self._unmet_message(spec, unmet[0], model))
            elif not spec.implicit:
                left_out[spec.name] = unmet
        return MetricPlan(tuple(specs), left_out)

    def metric_keys(self, plan: MetricPlan) -> dict[str, MetricSpec]:
        """Every metric key an evaluation with ``plan`` can produce, with its spec, besides
        ``probe_accuracy`` and ``map_reliability``."""
        context = KeyContext(
            regions=tuple(self.probe.regions or {}),
            deletion_baseline=self.options.deletion_baseline,
        )
        return metric_keys(plan.specs, self.options.compare_methods, context)

    def evaluate(
        self,
        model: ModelAdapter,
        *,
        slow_metrics: bool = True,
        references: Mapping[str, torch.Tensor] | None = None,
        **record: Any,
    ) -> Evaluation:
        """Maps, predictions and metrics of ``model`` on the whole probe, in this process.

        ``slow_metrics=False`` leaves out the metrics that need extra model passes;
        ``references`` (name → earlier DAVE maps) give the drift metrics; ``record`` holds the
        record's other fields (``global_step``, ``epoch``, ``settings``).
        """
        plan = self.plan(model)
        results = self.run(model, plan, slow_metrics=slow_metrics, references=references)
        return self.finish(results, slow=slow_metrics, **record)

    def run(
        self,
        model: ModelAdapter,
        plan: MetricPlan,
        *,
        slow_metrics: bool = True,
        references: Mapping[str, torch.Tensor] | None = None,
        shard: Shard = WHOLE_PROBE,
    ) -> ItemResults:
        """Per-item results of this process's ``shard`` of the probe."""
        probe, options, encoding = self.probe, self.options, self.encoding
        index = shard.indices(len(probe))
        first = shard.start(len(probe))
        specs = [
            spec
            for spec in plan.specs
            if (slow_metrics or not spec.slow) and ("references" not in spec.needs or references)
        ]
        with model.attribution():
            device = model.device
            images = probe.images[index].to(device)
            predictions, probabilities = self._predictions(model, images)
            labels = probe.labels[index].to(device)
            targets = labels if options.target == "label" else predictions
            builders = self._builders(first)
            dave = DAVE.from_settings(model, self.engine, encoding)
            maps, reliability = dave.attribute(
                images, targets, return_reliability=True, first_index=first
            )
            methods = {"dave": dave}
            results = ItemResults(targets, predictions, probabilities, reliability, {"dave": maps})
            for name in options.compare_methods:
                methods[name] = method_factory(name)(model, self.engine.batch_size)
                results.maps[name] = methods[name].attribute(images, targets)
            grid, grid_first = self._grid_shard(shard, device)
            for name, method in methods.items():
                first_index, grid_index = (first, grid_first) if name == "dave" else (None, None)
                inputs = MetricInputs(
                    method=name,
                    maps=results.maps[name],
                    images=encoding.picture(images),
                    targets=targets,
                    model=_encoded(model, encoding),
                    attribute=OnPictures(method, encoding, first_index),
                    grid_attribute=OnPictures(method, encoding, grid_index),
                    grid_k=options.grid_k,
                    deletion_steps=options.deletion_steps,
                    deletion_baseline=options.deletion_baseline,
                    batch_size=self.engine.batch_size or DEFAULT_DELETION_BATCH,
                    masks=_take(probe.masks, index, device),
                    regions={k: _take(v, index, device) for k, v in (probe.regions or {}).items()},
                    grid=grid,
                    patch_size=model.patch_size,
                    references={k: v[index].to(device) for k, v in (references or {}).items()},
                    adapter=model,
                    method_builders=builders,
                    method_maps=results.maps,
                )
                _compute(specs, inputs, results)
        return results

    def finish(self, results: ItemResults, *, slow: bool = True, **record: Any) -> Evaluation:
        """The evaluation record from merged, unpadded per-item results; ``record`` holds the
        record's other fields (``global_step``, ``epoch``, ``settings``)."""
        results = results.mapped(lambda _, t: t.cpu(), lambda _, t: t.cpu())
        labels = self.probe.labels
        values = {
            "probe_accuracy": (results.predictions == labels).float(),
            "map_reliability": results.reliability.float(),
        }
        for source in (results.values, results.grid_values):
            values.update({key: value.float() for key, value in source.items()})
        curves = {
            f"{info.method}/{key.rpartition('/')[2]}": Curve(
                info.fractions.cpu(),
                results.curves[key].nanmean(0),
                info.label,
                info.metric,
                info.method,
                info.control,
            )
            for key, info in results.curve_info.items()
        }
        intervals = {}
        for key, value in values.items():
            interval = mean_interval(value, self.options.confidence)
            if interval is not None:
                intervals[key] = interval
        return Evaluation(
            maps=dict(results.maps),
            targets=results.targets,
            predictions=results.predictions,
            labels=labels,
            probabilities=results.probabilities,
            reliability=results.reliability,
            metrics={key: float(value.nanmean()) for key, value in values.items()},
            values=values,
            intervals=intervals,
            curves=curves,
            slow=slow,
            **record,
        )

    # ------------------------------------------------------------------------------ parts

    def _builders(self, first_index: int) -> dict[str, MethodBuilder]:
        """Each method of the evaluation, built for a model, taking pictures (DAVE's with the
        shard's per-item seeds)."""
        encoding, batch_size = self.encoding, self.engine.batch_size

        def dave(model: ModelAdapter) -> OnPictures:
            engine = DAVE.from_settings(model, self.engine, encoding)
            return OnPictures(engine, encoding, first_index)

        def compared(name: str) -> MethodBuilder:
            return lambda model: OnPictures(method_factory(name)(model, batch_size), encoding, None)

        return {"dave": dave, **{name: compared(name) for name in self.options.compare_methods}}

    def _unmet_message(self, spec: MetricSpec, need: str, model: ModelAdapter) -> str:
        fix = NEEDS[need]
        if need == "grid" and self.grid_problem:
            fix = f"{self.grid_problem}; {fix}"
        if need == "patch_size" and model.patch_size is not None:
            size = tuple(self.probe.images.shape[-2:])
            fix = (
                f"the probe images' size {size} is not a multiple of the model's patch size "
                f"{model.patch_size}; resize the probe like the training data"
            )
        return f"metric {spec.name!r} needs {need}: {fix}"

    def _predictions(
        self, model: ModelAdapter, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted class of each image and its softmax probability, ``batch_size``
        images per pass."""
        size = self.engine.batch_size or len(images)
        with torch.no_grad():
            logits = torch.cat([model(images[i : i + size]) for i in range(0, len(images), size)])
        predictions = logits.argmax(1)
        return predictions, logits.softmax(1).gather(1, predictions[:, None])[:, 0]

    def _grid_shard(self, shard: Shard, device: torch.device) -> tuple[GridItems | None, int]:
        """This shard's grid items (pictures, on ``device``) and the index of its first one."""
        if self.grid is None:
            return None, 0
        total = len(self.grid.targets)
        index = shard.indices(total)
        images, targets, cells = (tensor[index].to(device) for tensor in self.grid)
        return GridItems(self.encoding.picture(images), targets, cells), shard.start(total)

    def _grid_items(self) -> tuple[GridItems | None, str | None]:
        """Grids of distinct classes composed once from the probe, or why there are none."""
        try:
            grids = make_grid_probe(
                self.probe.images,
                self.probe.labels,
                k=self.options.grid_k,
                size=tuple(self.probe.images.shape[-2:]),
                max_grids=MAX_GRIDS,
            )
        except ValueError as error:
            return None, str(error)
        return grids.items(), None


def _compute(specs: Sequence[MetricSpec], inputs: MetricInputs, results: ItemResults) -> None:
    """Each spec's per-item values and curves of one method, stored under its keys."""
    prefix = "" if inputs.method == "dave" else f"{inputs.method}/"
    for spec in specs:
        if spec.dave_only and inputs.method != "dave":
            continue
        output = spec.compute(inputs)
        target = results.grid_values if spec.unit == "grid" else results.values
        for key, value in output.values.items():
            target[prefix + key] = value
        for key, curve in output.curves.items():
            results.curves[prefix + key] = curve.values
            results.curve_info[prefix + key] = CurveInfo(
                curve.fractions, curve.label, spec.name, inputs.method, curve.control
            )


def _divides(patch_size: int | None, size: Sequence[int]) -> bool:
    return patch_size is not None and all(side % patch_size == 0 for side in size)


def _take(tensor: torch.Tensor | None, index: torch.Tensor, device: torch.device) -> Any:
    return None if tensor is None else tensor[index].to(device)


def _encoded(
    model: ModelAdapter, encoding: InputEncoding
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model on pictures: encode them, then run it."""
    return lambda pictures: model(encoding.encode(pictures))


class OnPictures:
    """A method on pictures (what metrics perturb): they are encoded for the model first;
    DAVE's maps keep their per-item seeds (``first_index``, None for other methods)."""

    def __init__(
        self, method: AttributionMethod, encoding: InputEncoding, first_index: int | None
    ) -> None:
        self.method = method
        self.encoding = encoding
        self.first_index = first_index

    def attribute(self, pictures: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inputs = self.encoding.encode(pictures)
        if self.first_index is None:
            return self.method.attribute(inputs, target)
        return self.method.attribute(inputs, target, first_index=self.first_index)

    __call__ = attribute
