"""What the monitor costs a fit: model passes counted at setup, wall time measured at every
evaluation, and the opt-in overhead budget (docs/callback.md, "What it costs").

The estimate counts image-passes: images through the model's forward, with gradients (a forward
and a backward) and without. Each method declares its passes per explained image
(``passes_per_image``) and each slow metric its passes in its ``MetricSpec`` (``cost``), so the
count needs no knowledge of names. Training is counted the same way: one image-pass with
gradients per training image.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from dave_lightning.attribution import DAVE
from dave_lightning.attribution.methods import method_factory
from dave_lightning.evaluation import MetricPlan, ProbeEvaluator
from dave_lightning.metrics.registry import CostContext, Passes
from dave_lightning.models import ModelAdapter
from dave_lightning.monitor.schedule import Schedule

#: A forward without gradients, in forward+backward equivalents (a pass with gradients counts
#: 1). A backward costs about two forwards (the gradients of the activations and of the
#: weights), so a forward alone is about a third of a training pass; measured on the
#: development CPU with ViT-S/16 at 224 px: 0.31 (docs/benchmarks.md).
NO_GRAD_WEIGHT = 1 / 3


def equivalents(passes: Passes) -> float:
    """``passes`` in forward+backward equivalents: no-gradient forwards weigh ``NO_GRAD_WEIGHT``."""
    return passes.grad + NO_GRAD_WEIGHT * passes.no_grad


def method_passes(evaluator: ProbeEvaluator, adapter: ModelAdapter) -> dict[str, Passes]:
    """Each method's declared passes per explained image (DAVE first); a method without a
    declaration is uncounted. Builds each method once, so one that cannot explain this model
    fails here, before training."""
    dave = DAVE.from_settings(adapter, evaluator.engine, evaluator.encoding)
    methods: dict[str, Any] = {"dave": dave}
    for name in evaluator.options.compare_methods:
        methods[name] = method_factory(name)(adapter, evaluator.engine.batch_size)
    per_image = {}
    for name, method in methods.items():
        declared = getattr(method, "passes_per_image", None)
        per_image[name] = Passes(*declared) if declared else Passes(uncounted=frozenset({name}))
    return per_image


def evaluation_passes(
    evaluator: ProbeEvaluator, plan: MetricPlan, adapter: ModelAdapter, *, world_size: int = 1
) -> tuple[Passes, Passes]:
    """The image-passes of one evaluation in each of ``world_size`` processes (each takes an
    equal share of the probe and the grid items), without and with the slow metrics: the
    predictions, every method's maps and the planned metrics' passes."""
    probe = math.ceil(len(evaluator.probe) / world_size)
    grid = 0 if evaluator.grid is None else math.ceil(len(evaluator.grid.targets) / world_size)
    blocks = adapter.family.blocks(adapter.root)
    per_image = method_passes(evaluator, adapter)
    fast = slow = Passes(no_grad=probe)  # the predictions
    for name, passes in per_image.items():
        fast, slow = fast + passes * probe, slow + passes * probe
        context = CostContext(
            name,
            per_image,
            probe,
            grid,
            evaluator.options.deletion_steps,
            len(blocks) if blocks else None,
        )
        for spec in plan.specs:
            metric = spec.passes(context)
            slow += metric
            if not spec.slow:
                fast += metric
    return fast, slow


@dataclass(frozen=True)
class Training:
    """How much one process trains in a fit: images and optimizer steps per epoch, and the
    fit's limits (None: no limit)."""

    images_per_epoch: int
    steps_per_epoch: int
    max_epochs: int | None = None
    max_steps: int | None = None

    def total_steps(self) -> int | None:
        """The fit's optimizer steps, or None when it has no limit."""
        limits = [] if self.max_epochs is None else [self.max_epochs * self.steps_per_epoch]
        if self.max_steps is not None:
            limits.append(self.max_steps)
        return min(limits) if limits else None

    def total_images(self) -> float | None:
        """The fit's training images, or None when it has no limit."""
        steps = self.total_steps()
        return None if steps is None else steps * self.images_per_epoch / self.steps_per_epoch


def fit_evaluations(schedule: Schedule, training: Training) -> tuple[int, int] | None:
    """(evaluations, those with the slow metrics) in a fit run at ``schedule``, or None for a
    fit without a limit."""
    steps = training.total_steps()
    if steps is None:
        return None
    per_epoch = training.steps_per_epoch
    points = {0} if schedule.at_start else set()
    for epoch in range(math.ceil(steps / per_epoch)):
        if schedule.epoch_due(epoch):
            points.add(min((epoch + 1) * per_epoch, steps))
    if schedule.every_n_train_steps:
        points.update(range(schedule.every_n_train_steps, steps + 1, schedule.every_n_train_steps))
    if schedule.at_end:
        points.add(steps)
    ordered = sorted(points)
    slow = sum(schedule.slow(i, step == steps) for i, step in enumerate(ordered))
    return len(ordered), slow


@dataclass(frozen=True)
class CostEstimate:
    """An evaluation's image-passes without and with the slow metrics (``upper_bound``: DAVE
    samples adaptively, so they are at most these), against the training of one process."""

    fast: Passes
    slow: Passes
    upper_bound: bool
    training: Training | None = None
    evaluations: tuple[int, int] | None = None

    def epoch_share(self, passes: Passes) -> float | None:
        """``passes`` as a share of an epoch of training, or None when that is unknown."""
        if self.training is None:
            return None
        return equivalents(passes) / self.training.images_per_epoch

    def fit_share(self) -> float | None:
        """The fit's evaluations as a share of its training, or None when that is unknown."""
        if self.evaluations is None:
            return None
        count, slow = self.evaluations
        passes = (count - slow) * equivalents(self.fast) + slow * equivalents(self.slow)
        return passes / self.training.total_images()

    def uncounted(self) -> tuple[str, ...]:
        return tuple(sorted(self.fast.uncounted | self.slow.uncounted))

    def line(self, name: str) -> str:
        """The setup line: passes per evaluation, their share of an epoch and of the fit."""
        text = f"DAVEMonitor {name!r}: an evaluation runs {self._part(self.fast)}"
        if self.slow != self.fast:
            text += f"; with the slow metrics {self._part(self.slow)}"
        share = self.fit_share()
        if share is not None:
            count, slow = self.evaluations
            text += (
                f"; ~{_percent(share)} of the fit at this schedule ({count} evaluations, "
                f"{slow} with the slow metrics)"
            )
        if self.uncounted():
            text += f"; not counted (no cost declaration): {', '.join(self.uncounted())}"
        return text + ' (docs/callback.md, "What it costs")'

    def _part(self, passes: Passes) -> str:
        about = "up to " if self.upper_bound else "~"
        text = (
            f"{about}{passes.grad + passes.no_grad:,} image-passes ({passes.grad:,} with "
            f"gradients, {passes.no_grad:,} without: {equivalents(passes):,.0f} forward+backward "
            "equivalents"
        )
        share = self.epoch_share(passes)
        if share is not None:
            text += f", ~{_percent(share)} of an epoch of training"
        return text + ")"

    def hyperparameters(self, name: str) -> dict[str, Any]:
        """The estimate as ``<name>/cost/...`` entries, those that are known."""
        values: dict[str, Any] = {"upper_bound": self.upper_bound}
        for kind, passes in (("fast", self.fast), ("slow", self.slow)):
            values[f"{kind}/grad_passes"] = passes.grad
            values[f"{kind}/no_grad_passes"] = passes.no_grad
            values[f"{kind}/equivalents"] = equivalents(passes)
            if self.training is not None:
                values[f"{kind}/epoch_share"] = self.epoch_share(passes)
        if self.training is not None:
            values["training_images_per_epoch"] = self.training.images_per_epoch
        if self.evaluations is not None:
            values["evaluations"], values["slow_evaluations"] = self.evaluations
            values["fit_share"] = self.fit_share()
        if self.uncounted():
            values["uncounted"] = ", ".join(self.uncounted())
        return {f"{name}/cost/{key}": value for key, value in values.items()}


def _percent(share: float) -> str:
    return f"{share * 100:.1f} %" if share < 0.1 else f"{share * 100:.0f} %"


class Clock:
    """The monitor's wall time against the rest of one fit's: each evaluation's share, the
    cumulative share, and the overhead budget (``max_overhead``) that skips evaluations."""

    def __init__(self, max_overhead: float | None = None) -> None:
        self.max_overhead = max_overhead
        self.started = time.perf_counter()
        self.monitor = 0.0  # seconds in evaluations so far
        self.last_end = self.started
        self.last_seconds: dict[bool, float] = {}  # the last evaluation's, by slow or not
        self.skipped = 0

    def training(self, now: float) -> float:
        """The fit's wall time outside the monitor, up to ``now``."""
        return now - self.started - self.monitor

    def shares(self, seconds: float, started: float) -> dict[str, float]:
        """``time_share`` (``seconds`` against the time since the previous evaluation ended)
        and ``time_share_cumulative`` of an evaluation that began at ``started``."""
        since, training = started - self.last_end, self.training(started)
        if since <= 0 or training <= 0:
            return {}
        return {
            "time_share": seconds / since,
            "time_share_cumulative": (self.monitor + seconds) / training,
        }

    def spent(self, started: float, slow: bool) -> None:
        """An evaluation that began at ``started`` ended now."""
        now = time.perf_counter()
        self.monitor += now - started
        self.last_end = now
        self.last_seconds[slow] = now - started

    def predicted(self, slow: bool) -> float | None:
        """An evaluation's seconds, predicted from the last one of its kind (before the first
        one without the slow metrics: from the longest so far); None before any."""
        if not self.last_seconds:
            return None
        return self.last_seconds.get(slow, max(self.last_seconds.values()))

    def within_budget(self, slow: bool) -> bool:
        """Whether an evaluation keeps the monitor's time within ``max_overhead`` of the
        training time: always without a budget, and for the fit's first evaluation."""
        predicted = self.predicted(slow)
        if self.max_overhead is None or predicted is None:
            return True
        return self.monitor + predicted <= self.max_overhead * self.training(time.perf_counter())
