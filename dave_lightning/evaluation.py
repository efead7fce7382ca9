"""One evaluation of a model on a probe: maps per method, predictions and quality metrics.

Shared by the callback and the checkpoint comparison, so both compute the same numbers. Data
flows one way: probe → attribution methods → maps → metrics; nothing here knows Lightning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dave_lightning import metrics as M
from dave_lightning.attribution import DAVE, InputXEffective, InputXGradient
from dave_lightning.attribution.model_info import attribution_context, model_device, patch_size
from dave_lightning.probe import Probe

METRICS = ("stability", "grid_pg", "energy_pg", "deletion", "gini", "patch_artifact", "drift")
COMPARE_METHODS: dict[str, type[InputXGradient] | type[InputXEffective]] = {
    "input_x_gradient": InputXGradient,
    "input_x_effective": InputXEffective,
}
# Orders that depend on the map; the random order is one control per evaluation, shared.
DELETION_ORDERS = ("lerf", "morf")
# Metrics that need extra model passes beyond the maps (the rest only read the maps).
SLOW_METRICS = ("stability", "grid_pg", "deletion")
MAX_GRIDS = 4

AttributeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Evaluation:
    """What one evaluation produced, on the CPU.

    ``maps``: method → (N, 1, H, W), DAVE under ``"dave"`` first. ``metrics``: flat name →
    value; DAVE's under the metric name (``energy_pg``), other methods' under
    ``<method>/<metric>``. ``curves``: ``<method>/deletion_<order>_<baseline>`` → (fractions,
    mean probability over the probe); the random-order control, which does not depend on the
    maps, appears once, under DAVE's names.
    """

    maps: dict[str, torch.Tensor]
    targets: torch.Tensor
    predictions: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class ProbeEvaluator:
    """Runs DAVE, the compared methods and the metrics on a fixed probe."""

    def __init__(
        self,
        probe: Probe,
        *,
        engine: Mapping[str, object],
        metrics: Sequence[str] = METRICS,
        compare_methods: Sequence[str] = ("input_x_gradient",),
        target: str = "label",
        grid_k: int = 2,
        deletion_steps: int = 128,
        deletion_baseline: str = "blur",
    ) -> None:
        check_names(metrics, compare_methods)
        if target not in ("label", "pred"):
            raise ValueError(f"target must be 'label' or 'pred', got {target!r}")
        if deletion_baseline not in M.faithfulness.BASELINES:
            raise ValueError(
                f"deletion_baseline must be one of {M.faithfulness.BASELINES}, "
                f"got {deletion_baseline!r}"
            )
        self.probe = probe
        self.engine = dict(engine)
        self.metrics = tuple(metrics)
        self.compare_methods = tuple(compare_methods)
        self.target = target
        self.grid_k = grid_k
        self.deletion_steps = deletion_steps
        self.deletion_baseline = deletion_baseline
        self.grid = self._grid_probe() if "grid_pg" in self.metrics else None

    def settings(self) -> dict[str, object]:
        """Everything that determines the numbers, for snapshots and comparisons."""
        return {
            "engine": dict(self.engine),
            "metrics": list(self.metrics),
            "compare_methods": list(self.compare_methods),
            "target": self.target,
            "grid_k": self.grid_k,
            "deletion_steps": self.deletion_steps,
            "deletion_baseline": self.deletion_baseline,
            "probe_size": len(self.probe),
            "image_size": list(self.probe.images.shape[-2:]),
            "probe_sha256": self.probe.digest(),
        }

    def evaluate(self, model: nn.Module, *, slow_metrics: bool = True) -> Evaluation:
        """Maps, predictions and metrics of ``model`` (images → logits) on the probe.

        ``slow_metrics=False`` leaves out :data:`SLOW_METRICS`, which need extra model passes.
        """
        with attribution_context(model):
            device = model_device(model)
            images = self.probe.images.to(device)
            with torch.no_grad():
                predictions = model(images).argmax(1)
            targets = self.probe.labels.to(device) if self.target == "label" else predictions
            methods = self._methods(model)
            evaluation = Evaluation(
                maps={name: fn(images, targets).cpu() for name, fn in methods.items()},
                targets=targets.cpu(),
                predictions=predictions.cpu(),
            )
            evaluation.metrics["probe_accuracy"] = float(
                (predictions.cpu() == self.probe.labels).float().mean()
            )
            metrics = [m for m in self.metrics if slow_metrics or m not in SLOW_METRICS]
            for name, attribute in methods.items():
                prefix = "" if name == "dave" else f"{name}/"
                self._map_metrics(
                    model, images, targets, name, attribute, prefix, metrics, evaluation
                )
            if "deletion" in metrics:  # the random-order control, once for all methods
                dave_maps = evaluation.maps["dave"]
                self._deletion(model, images, targets, dave_maps, "random", "", evaluation)
        return evaluation

    def _methods(self, model: nn.Module) -> dict[str, AttributeFn]:
        methods: dict[str, AttributeFn] = {"dave": DAVE(model, **self.engine).attribute}
        for name in self.compare_methods:
            batch_size = self.engine.get("batch_size")
            methods[name] = COMPARE_METHODS[name](model, batch_size=batch_size).attribute
        return methods

    def _map_metrics(
        self,
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        method: str,
        attribute: AttributeFn,
        prefix: str,
        metrics: Sequence[str],
        evaluation: Evaluation,
    ) -> None:
        maps = evaluation.maps[method]
        values: dict[str, torch.Tensor] = {}
        if "energy_pg" in metrics and self.probe.masks is not None:
            values["energy_pg"] = M.energy_pointing_game(maps, self.probe.masks)
        for region, masks in (self.probe.regions or {}).items():
            values[f"region_{region}"] = M.energy_pointing_game(maps, masks)
        if "gini" in metrics:
            values["gini"] = M.gini(maps)
        patch = patch_size(model)
        if "patch_artifact" in metrics and patch is not None:
            values["patch_artifact"] = M.patch_artifact_score(maps, patch)
        if "stability" in metrics:
            stability = M.stability(attribute, images, targets, maps=maps.to(images.device))
            for key, value in stability.items():
                values[f"stability_{key}"] = value
        if self.grid is not None and "grid_pg" in metrics:
            cells = self.grid_k**2
            grid_maps = attribute(
                self.grid.images.to(images.device).repeat_interleave(cells, 0),
                self.grid.targets.flatten().to(images.device),
            )
            values["grid_pg"] = M.grid_pointing_game(
                grid_maps, self.grid_k, self.grid.cells.flatten()
            )
        for key, value in values.items():
            evaluation.metrics[prefix + key] = float(value.float().nanmean())
        if "deletion" in metrics:
            for order in DELETION_ORDERS:
                self._deletion(model, images, targets, maps, order, prefix, evaluation)

    def _deletion(
        self,
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        maps: torch.Tensor,
        order: str,
        prefix: str,
        evaluation: Evaluation,
    ) -> None:
        """One deletion curve: its AUC as a metric and its probe-mean curve for the figure."""
        name = f"deletion_{order}_{self.deletion_baseline}"
        fractions, probabilities = M.deletion_curve(
            model,
            images,
            targets,
            maps.to(images.device),
            order=order,
            baseline=self.deletion_baseline,
            steps=self.deletion_steps,
        )
        evaluation.metrics[prefix + name] = float(M.curve_auc(fractions, probabilities).nanmean())
        evaluation.curves[prefix + name] = (fractions.cpu(), probabilities.nanmean(0).cpu())

    def _grid_probe(self) -> M.GridProbe | None:
        """Grids of distinct classes composed once from the probe, or None (with a warning)."""
        try:
            return M.make_grid_probe(
                self.probe.images,
                self.probe.labels,
                k=self.grid_k,
                size=tuple(self.probe.images.shape[-2:]),
                max_grids=MAX_GRIDS,
            )
        except ValueError as error:
            warnings.warn(f"grid_pg is skipped: {error}", stacklevel=2)
            return None


def check_names(metrics: Sequence[str], compare_methods: Sequence[str]) -> None:
    """Refuse unknown metric or method names, listing the valid ones."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    unknown = sorted(set(compare_methods) - set(COMPARE_METHODS))
    if unknown:
        raise ValueError(f"unknown compare_methods {unknown}; choose from {list(COMPARE_METHODS)}")


def drift_metrics(maps: torch.Tensor, reference: torch.Tensor, name: str) -> dict[str, float]:
    """Mean drift of ``maps`` from ``reference`` as ``drift_<name>_<statistic>`` entries."""
    drift = M.attribution_drift(maps, reference)
    return {f"drift_{name}_{key}": float(value.nanmean()) for key, value in drift.items()}
