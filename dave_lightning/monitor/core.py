"""The framework-neutral monitor: one probe, its evaluations, their snapshots and publication.

Every front door (``DAVEMonitor`` for Lightning's Trainer, the Fabric and HuggingFace ones, a
plain loop) drives a :class:`ProbeMonitor` through the same lifecycle (docs/architecture.md,
"The monitor core"): **decide** (the schedule) → **compute** (each rank its share of the probe)
→ **write** (the snapshot, rank 0) → **publish** (pictures and scalars on rank 0; the history and
drift references on every rank). A failure at any point publishes nothing and leaves no file
behind; with ``on_error="warn"`` it is one warning and training goes on.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dave_lightning import viz
from dave_lightning.evaluation import Evaluation, MetricPlan, ProbeEvaluator
from dave_lightning.metrics.registry import METRICS, NEEDS, Passes
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import resolve_encoding
from dave_lightning.monitor.alarms import alarm_message, pixel_shares, with_alerts
from dave_lightning.monitor.collective import SINGLE_PROCESS, Collective, run_sharded
from dave_lightning.monitor.cost import (
    Clock,
    CostEstimate,
    Training,
    evaluation_passes,
    fit_evaluations,
)
from dave_lightning.monitor.folder import (
    FolderError,
    RunFolder,
    check_writable,
    default_folder,
    free_folder,
    holds_another_run,
    new_run_id,
)
from dave_lightning.monitor.publish import Publisher, chart_layout
from dave_lightning.monitor.settings import MonitorSettings
from dave_lightning.monitor.state import STATE_VERSION, change_from, settings_id
from dave_lightning.probe import Probe, build_probe, check_probe_for_model
from dave_lightning.sinks.base import Charts, Margins

ProbeSource = tuple | Dataset | DataLoader | Probe
#: The time shares in an evaluation's metrics (monitor/cost.py's Clock).
TIME_SHARES = ("time_share", "time_share_cumulative")


class ProbeMonitor:
    """DAVE maps and explanation metrics of a fixed probe, evaluated, written and published.

    Args:
        probe: ``(images, labels[, masks])``, a ``Dataset``, a ``DataLoader`` or a
            :class:`~dave_lightning.probe.Probe`; ``None`` when the front door gives it at
            :meth:`setup` (e.g. Lightning's ``probe="val"``).
        settings: the monitor's settings, or the flat ``options`` to build them from (the
            options of ``DAVEMonitor``, docs/callback.md).

    In a plain loop: ``setup(model, writer)``, then ``publish(evaluate(model, step=...))``
    whenever an evaluation is due (docs/beyond_the_trainer.md).
    """

    def __init__(
        self,
        probe: ProbeSource | None = None,
        *,
        settings: MonitorSettings | None = None,
        **options: Any,
    ) -> None:
        if settings is not None and options:
            raise TypeError("pass settings or options, not both")
        self.settings = settings or MonitorSettings.from_options(**options)
        self.probe: Probe | None = None if probe is None else self._build_probe(probe)
        self.history: list[dict[str, Any]] = []
        self._adapter: ModelAdapter | None = None
        self._evaluator: ProbeEvaluator | None = None
        self._plan: MetricPlan | None = None
        self._normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._objects: tuple[Any, ...] = ()
        self._collective: Collective = SINGLE_PROCESS
        self._publisher = Publisher(self.name, self._warn_once)
        self._writes = True
        self._candidate: Path | None = None
        self._run_id = new_run_id()
        self._resumed_folder: Path | None = None
        self._last: Evaluation | None = None
        self._first_maps: torch.Tensor | None = None
        self._last_step: int | None = None
        self._attempted_step: int | None = None
        self._fingerprint: torch.Tensor | None = None
        self._warned: set[str] = set()
        self._pixel_shares: dict[str, float] = {}
        # what it costs (monitor/cost.py): passes per evaluation, the fit's clock and budget
        self._passes: tuple[Passes, Passes] | None = None  # without, with the slow metrics
        self.cost: CostEstimate | None = None
        self._clock = Clock(self.settings.max_overhead)
        self._skipped_step: int | None = None

    # ------------------------------------------------------------------------- identity

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def snapshot_dir(self) -> Path | None:
        """The run's snapshot folder (once claimed), else where it will be."""
        folder = self._publisher.folder
        return folder.path if folder is not None else self._candidate

    @property
    def is_set_up(self) -> bool:
        """Whether :meth:`setup` built the evaluations (a probe checked against the model)."""
        return self._evaluator is not None

    @property
    def last_step(self) -> int | None:
        """The global step of the last recorded evaluation."""
        return self._last_step

    def identity(self) -> dict[str, Any]:
        """The settings that make two evaluations comparable (everything but the memory cap)."""
        engine = self.settings.engine.to_dict()
        engine.pop("batch_size")
        return {"engine": engine, **self.settings.evaluation.to_dict()}

    def settings_id(self) -> str:
        return settings_id(self.identity())

    def hyperparameters(self) -> dict[str, Any]:
        """The settings, flat, as ``<name>/<setting>`` (an hparams entry per logger)."""
        schedule = self.settings.schedule
        values = {**self.settings.engine.to_dict(), **self.settings.evaluation.to_dict()}
        values.update(
            num_probe=len(self.probe),
            probe_sha256=self.probe.digest(),
            every_n_epochs=schedule.every_n_epochs,
            every_n_train_steps=schedule.every_n_train_steps,
            slow_metrics_every=schedule.slow_metrics_every,
        )
        return {
            f"{self.name}/{key}": ", ".join(map(str, value)) if isinstance(value, list) else value
            for key, value in values.items()
        }

    # ---------------------------------------------------------------------------- setup

    def setup(
        self,
        model: nn.Module,
        *destinations_: Any,
        probe: ProbeSource | None = None,
        root: str | Path = ".",
        collective: Collective = SINGLE_PROCESS,
        writes: bool = True,
        resuming: bool = False,
        start: bool = True,
        folder: str | Path | None = None,
    ) -> None:
        """Build and check everything the evaluations need, before the first training step.

        Args:
            model: the module that is trained (its logits are read as docs/models.md says).
            destinations_: loggers (Lightning's or Fabric's), a ``SummaryWriter`` or sinks:
                where scalars and pictures go.
            probe: the probe, when the monitor was made without one.
            root: where the snapshot folder goes when no destination has a run directory.
            collective: the run's processes (rank 0 writes and publishes), for every later
                call.
            writes: ``False`` writes no snapshots or PNG files (a ``fast_dev_run``).
            resuming: the run resumes from a checkpoint (its state comes before :meth:`start`).
            start: claim the snapshot folder now; a front door whose run restores the
                monitor's state later calls :meth:`start` after that.
            folder: the default snapshot folder when the front door knows where its run's
                files go (the HuggingFace Trainer's ``output_dir``), instead of
                :func:`default_folder` of the destinations and ``root``; like that one, it
                moves to a free numbered sibling when it holds another run.

        Raises:
            ValueError, TypeError: for a probe the model cannot take, a metric named in
                ``metrics`` whose inputs are missing, or a snapshot folder that cannot be used.
        """
        settings = self.settings
        if probe is not None:
            self.probe = self._build_probe(probe)
        if self.probe is None:
            raise ValueError("the monitor has no probe; pass one (images, labels[, masks])")
        adapter = ModelAdapter(model, forward_fn=settings.forward_fn)
        check_probe_for_model(self.probe, adapter)
        encoding = resolve_encoding(settings.input_encoding, adapter, self.probe.images)
        engine = settings.engine.for_model(adapter.reference_noise_alpha)
        evaluator = ProbeEvaluator(self.probe, engine, settings.evaluation, encoding)
        plan = evaluator.plan(adapter)
        if plan.left_out:
            self._warn_once("left out", _left_out_message(self.name, plan.left_out))
        self._adapter, self._evaluator, self._plan = adapter, evaluator, plan
        self._collective = collective
        self._passes = evaluation_passes(evaluator, plan, adapter, world_size=collective.world_size)
        self._pixel_shares = pixel_shares(self.probe)
        self._normalization = adapter.normalization(settings.mean, settings.std)
        images01 = viz.denormalize(encoding.picture(self.probe.images), *self._normalization)
        self._publisher.prepare(self.probe.images, images01, settings.max_images)
        self._objects, self._writes = destinations_, writes
        default = default_folder(self.name, destinations_, root) if folder is None else folder
        self._candidate = settings.snapshot_dir or Path(default)
        if writes and collective.rank == 0:
            self._check_folder(resuming)
        if start:
            self.start()

    def _check_folder(self, resuming: bool) -> None:
        """The snapshot folder can be written, and an explicit one holds no other run."""
        option = "snapshot_dir"
        check_writable(self._candidate, option)
        explicit = self.settings.snapshot_dir is not None
        if explicit and not resuming and holds_another_run(self._candidate, self._run_id):
            raise FolderError(
                f"snapshot_dir {self._candidate} holds the snapshots of another run; pass a new "
                "snapshot_dir (or remove that folder) so that two runs' evaluations are never "
                "mixed"
            )

    def start(self) -> None:
        """Claim the run's snapshot folder (rank 0) and open the destinations: after a resumed
        run's state is loaded, before the first evaluation."""
        publisher, collective = self._publisher, self._collective
        if self._writes and collective.rank == 0:
            publisher.folder = RunFolder(
                self._run_folder(), self._run_id, self.name, self.probe.digest()
            )
            publisher.folder.claim()
        path = collective.broadcast(None if publisher.folder is None else str(self.snapshot_dir))
        if path is not None and publisher.folder is None:
            self._candidate = Path(path)
        images = self.settings.log_images and self._writes
        publisher.open(self._objects, self.snapshot_dir / "png", images=images)
        if collective.rank == 0:
            publisher.log_hyperparameters(self.hyperparameters())
        self._clock = Clock(self.settings.max_overhead)

    def announce_cost(self, training: Training | None = None) -> CostEstimate:
        """The cost estimate of this fit's evaluations against its ``training`` (None: not
        known), said in one line and sent to the loggers as ``<name>/cost/...``
        hyper-parameters, on rank 0; call it once per fit, after :meth:`start`."""
        fast, slow = self._passes
        evaluations = (
            None if training is None else fit_evaluations(self.settings.schedule, training)
        )
        adaptive = self.settings.engine.target_reliability is not None
        self.cost = CostEstimate(fast, slow, adaptive, training, evaluations)
        if self._collective.rank == 0:
            print(self.cost.line(self.name), flush=True)
            self._publisher.log_hyperparameters(self.cost.hyperparameters(self.name))
        return self.cost

    def _run_folder(self) -> Path:
        """Where this run's snapshots go: the resumed run's folder, else the candidate (or,
        for a default folder that holds another run, its first free numbered sibling)."""
        if self._resumed_folder is not None:
            if self._resumed_folder.is_dir():
                return self._resumed_folder
            self._warn_once(
                "resumed folder",
                f"DAVEMonitor {self.name!r}: the resumed run's snapshot folder "
                f"{self._resumed_folder} is gone; its snapshots continue in {self._candidate}",
            )
        if self.settings.snapshot_dir is not None:
            return self._candidate
        return free_folder(self._candidate, self._run_id)

    def _build_probe(self, source: ProbeSource) -> Probe:
        settings = self.settings
        return build_probe(source, settings.num_probe, settings.regions)

    def metric_keys(self) -> set[str]:
        """Every key this monitor can log, without the name prefix: metrics, their interval
        bounds (``<key>/low``, ``<key>/high``) and the region alarms (``alert/<region>``)."""
        metrics = set(self._evaluator.metric_keys(self._plan))
        metrics.update(("probe_accuracy", "map_reliability"))
        keys = {*metrics, *(f"{key}/{bound}" for key in metrics for bound in ("low", "high"))}
        keys.update(f"alert/{region}" for region in self._pixel_shares)
        keys.update(TIME_SHARES)
        if self.settings.max_overhead is not None:
            keys.add("skipped")
        return keys

    def is_slow(self, key: str) -> bool:
        """Whether ``key`` comes from a slow metric (computed only now and then)."""
        spec = self._evaluator.metric_keys(self._plan).get(key)
        return spec is not None and spec.slow

    def why_not_logged(self, key: str) -> str | None:
        """Why a default metric that would log ``key`` was left out, with the fix, or None."""
        left_out = MetricPlan(
            tuple(METRICS[name] for name in self._plan.left_out if name in METRICS)
        )
        spec = self._evaluator.metric_keys(left_out).get(key)
        if spec is None:
            return None
        need = self._plan.left_out[spec.name][0]
        return f"{spec.name} needs {need}: {NEEDS[need]}"

    def finite_scalars(self, evaluation: Evaluation) -> dict[str, float]:
        """The evaluation's metrics and their interval bounds (``<key>/low``, ``<key>/high``)
        as tagged scalars, leaving out values that are not finite (a metric undefined on this
        probe), which a warning names once."""
        scalars, undefined = {}, []
        for key, value in evaluation.metrics.items():
            if math.isfinite(value):
                scalars[f"{self.name}/{key}"] = value
                for bound, end in zip(
                    ("low", "high"), evaluation.intervals.get(key, ()), strict=False
                ):
                    scalars[f"{self.name}/{key}/{bound}"] = end
            else:
                undefined.append(key)
        if undefined:
            self._warn_once(
                f"undefined {sorted(undefined)}",
                f"DAVEMonitor {self.name!r}: {', '.join(sorted(undefined))} had no value at step "
                f"{evaluation.global_step} (NaN: e.g. no positive attribution, or no item with "
                "the metric's inputs) and are not logged there; docs/troubleshooting.md says why",
            )
        return scalars

    # ----------------------------------------------------------------------- lifecycle

    def due(self, step: int, *, epoch_end: int | None = None, requested: bool = False) -> bool:
        """Whether the schedule evaluates at ``step`` (after the optimizer step), or at the end
        of (0-based) epoch ``epoch_end``, or the run ``requested`` an evaluation now (the
        HuggingFace Trainer's evaluation events); never twice at one step."""
        if self._evaluator is None or step in (
            self._last_step,
            self._attempted_step,
            self._skipped_step,
        ):
            return False
        schedule = self.settings.schedule
        by_epoch = epoch_end is not None and schedule.epoch_due(epoch_end)
        return requested or schedule.step_due(step) or by_epoch

    def run(
        self,
        model: nn.Module | None = None,
        *,
        step: int,
        epoch: int | None,
        last: bool = False,
    ) -> Evaluation | None:
        """One scheduled evaluation, computed, written and published; None when it failed
        (with a warning; ``on_error="raise"`` raises instead) or skipped by the overhead
        budget. Its metrics carry its time shares (``time_share``, ``time_share_cumulative``)
        and, with ``max_overhead``, the evaluations ``skipped`` so far in this fit."""
        slow = self.settings.schedule.slow(len(self.history), last)
        if not self._within_budget(step, slow, last):
            return None
        self._attempted_step = step
        return self._guarded(
            step,
            lambda: self._evaluate_and_publish(step, epoch, slow, model, last=last, timed=True),
        )

    def _within_budget(self, step: int, slow: bool, last: bool) -> bool:
        """The overhead budget (``max_overhead``): an evaluation whose predicted time would take
        the monitor's over that share of the training time is skipped, never the first of a fit
        (nothing predicts it) or the last; rank 0's decision holds on every rank."""
        clock, collective = self._clock, self._collective
        if clock.max_overhead is None or last:
            return True
        if collective.broadcast(clock.within_budget(slow)):
            return True
        clock.skipped += 1
        self._skipped_step = step
        if collective.rank == 0:
            self._warn_once(
                "budget",
                f"DAVEMonitor {self.name!r}: skipped the evaluation at step {step} to keep its "
                f"time within max_overhead={clock.max_overhead:g} of the training time (it "
                f"would take about {clock.predicted(slow):.1f} s); the first and the last "
                f"evaluation of a fit always run, and {self.name}/skipped counts the skipped "
                "ones",
            )
        return False

    def evaluate(
        self,
        model: nn.Module | None = None,
        *,
        step: int,
        epoch: int | None = None,
        slow: bool = True,
    ) -> Evaluation:
        """Compute one evaluation of ``model`` (each rank its share of the probe); nothing is
        written or published until :meth:`publish`."""
        start = time.perf_counter()
        references = {}
        if self._last is not None and self._plan.needs("references"):
            references = {"previous": self._last.maps["dave"]}
            if self._first_maps is not None:
                references["first"] = self._first_maps
        adapter = self._adapter if model is None else self._adapter_for(model)
        evaluator = self._evaluator
        devices = [adapter.device] if adapter.device.type == "cuda" else []

        def shard_run(shard):
            with torch.random.fork_rng(devices=devices):
                return evaluator.run(
                    adapter, self._plan, slow_metrics=slow, references=references, shard=shard
                )

        grid = 0 if evaluator.grid is None else len(evaluator.grid.targets)
        results = run_sharded(self._collective, shard_run, len(self.probe), grid)
        evaluation = evaluator.finish(
            results,
            slow=slow,
            global_step=step,
            epoch=epoch,
            settings={
                **evaluator.settings(),
                "name": self.name,
                "run_id": self._run_id,
                "mean": list(self._normalization[0]),
                "std": list(self._normalization[1]),
            },
            seconds=time.perf_counter() - start,
        )
        return self._with_alerts(evaluation)

    def _with_alerts(self, evaluation: Evaluation) -> Evaluation:
        """The region alarms (monitor/alarms.py), each said once when first raised."""
        ratio = self.settings.alert_ratio
        evaluation = with_alerts(evaluation, self._pixel_shares, ratio)
        for region, raised in evaluation.alerts.items():
            if raised:
                pixels, confidence = self._pixel_shares[region], self._confidence_label()
                self._warn_once(
                    f"alert {region}",
                    alarm_message(self.name, evaluation, region, pixels, ratio, confidence),
                )
        return evaluation

    def publish(self, evaluation: Evaluation) -> Evaluation:
        """Write the evaluation's snapshot, send its pictures and scalars (rank 0), then record
        it (every rank): all or nothing. An evaluation at the step of the last one replaces it.
        Returns the evaluation as recorded.

        Raises:
            RuntimeError: when writing or publishing failed (on any rank); nothing of the
                evaluation is then left behind.
        """
        same_step = self._last is not None and evaluation.global_step == self._last_step
        return self._publish(evaluation, "replace" if same_step else "new")

    def _publish(self, evaluation: Evaluation, mode: str) -> Evaluation:
        """:meth:`publish` with ``mode``: ``new`` (a new step), ``replace`` (the last step's
        evaluation, redone) or ``complete`` (the last step's slow metrics, added to it)."""
        logged = set()
        if mode == "complete":
            logged = set(self._last.metrics)
            evaluation = _completed(self._last, evaluation)
        scalars = {
            tag: value
            for tag, value in self.finite_scalars(evaluation).items()
            if tag.removeprefix(f"{self.name}/") not in logged
        }
        error, collective = None, self._collective
        if collective.rank == 0:
            error = self._publisher.write_and_send(
                evaluation, scalars, lambda: self._charts(evaluation), pictures=mode != "complete"
            )
        if collective.any(error is not None):
            raise error or RuntimeError("publishing the evaluation failed on rank 0")
        self._record(evaluation, replace_last=mode != "new")
        return evaluation

    def _record(self, evaluation: Evaluation, *, replace_last: bool) -> None:
        """Remember an evaluation that was published: history, drift references."""
        if replace_last:
            self.history[-1] = evaluation.summary()
        else:
            self.history.append(evaluation.summary())
        maps = evaluation.maps["dave"]
        degenerate = not bool((maps.flatten(1).amax(1) > 0).any())
        if degenerate:
            self._warn_once(
                "degenerate",
                f"DAVEMonitor {self.name!r}: every DAVE map at step {evaluation.global_step} is "
                "zero (e.g. a zero-initialised classifier head), so its map metrics are NaN; "
                "drift is measured from the first evaluation with non-zero maps",
            )
        elif self._first_maps is None:
            self._first_maps = maps
        self._last = evaluation
        self._last_step = evaluation.global_step

    def _charts(self, evaluation: Evaluation) -> tuple[Charts, Margins]:
        """The chart layout of every key this monitor logs (monitor/publish.py)."""
        keys = list(dict.fromkeys([*self._evaluator.metric_keys(self._plan), *evaluation.metrics]))
        methods = self.settings.evaluation.compare_methods
        return chart_layout(self.name, keys, methods, self._confidence_label())

    def _confidence_label(self) -> str:
        return f"{self.settings.evaluation.confidence:.0%}"

    def finish(
        self, model: nn.Module | None = None, *, step: int, epoch: int | None
    ) -> Evaluation | None:
        """The end of a fit: its last evaluation (with ``at_end``), or the slow metrics added
        to an evaluation that ran at this step without knowing it was the last."""
        if not self.settings.schedule.at_end or self._evaluator is None:
            return None
        if step != self._last_step:
            if step == self._attempted_step:
                return None  # it failed at this step already
            return self.run(model, step=step, epoch=epoch, last=True)
        if self._last.slow:
            return None
        return self._guarded(
            step, lambda: self._evaluate_and_publish(step, epoch, True, model, mode="complete")
        )

    def close(
        self, model: nn.Module | None = None, *, step: int, epoch: int | None
    ) -> Evaluation | None:
        """After the fit, with the weights it ends with: the last evaluation redone when they
        changed since it ran (e.g. averaged weights swapped in), then each probe image's maps
        across the run."""
        if not self.settings.schedule.at_end or self._evaluator is None:
            return None
        evaluation = None
        if self._last_step == step and self._weights_changed():
            evaluation = self._guarded(
                step, lambda: self._evaluate_and_publish(step, epoch, True, model)
            )
        publisher = self._publisher
        if self.history and self._collective.rank == 0 and publisher.destinations.sinks:
            digest = self.probe.digest()
            self._guarded(step, lambda: publisher.send_progression(step, digest))
        return evaluation

    def flush(self) -> None:
        """Make what was published visible now, for runs that never finalise their loggers (a
        Fabric loop): every picture sink flushes (a TensorBoard writer, its scalars included)
        and every logger saves (a CSV logger writes its file)."""
        self._publisher.flush()

    def _weights_changed(self) -> bool:
        """Whether the weights differ from those of the last evaluation of the fit (on any
        rank), e.g. after a callback swapped averaged weights in."""
        changed = self._fingerprint is not None and not torch.equal(
            self._fingerprint, _fingerprint(self._adapter.model)
        )
        return self._collective.any(changed)

    # ---------------------------------------------------------------------------- parts

    def _evaluate_and_publish(
        self,
        step: int,
        epoch: int | None,
        slow: bool,
        model: nn.Module | None,
        *,
        last: bool = True,
        mode: str | None = None,
        timed: bool = False,
    ) -> Evaluation:
        started = time.perf_counter()
        try:
            evaluation = self.evaluate(model, step=step, epoch=epoch, slow=slow)
            if timed:
                evaluation = self._with_time_shares(evaluation, started)
            if mode is None:
                same_step = self._last is not None and step == self._last_step
                mode = "replace" if same_step else "new"
            published = self._publish(evaluation, mode)
        finally:
            self._clock.spent(started, slow)
        self._fingerprint = _fingerprint(self._adapter.model) if last else None
        return published

    def _with_time_shares(self, evaluation: Evaluation, started: float) -> Evaluation:
        """The evaluation's time shares (when training ran since the previous one) and, with
        ``max_overhead``, the count of skipped evaluations, added to its metrics."""
        metrics = dict(evaluation.metrics)
        if evaluation.global_step > (self._last_step or 0):  # training ran since the last one
            metrics.update(self._clock.shares(evaluation.seconds, started))
        if self._clock.max_overhead is not None:
            metrics["skipped"] = float(self._clock.skipped)
        return replace(evaluation, metrics=metrics)

    def _adapter_for(self, model: nn.Module) -> ModelAdapter:
        if model is self._adapter.model:
            return self._adapter
        return ModelAdapter(model, forward_fn=self.settings.forward_fn)

    def _guarded(self, step: int, action: Any) -> Any:
        """Run ``action``; with ``on_error="warn"`` a failure warns and training goes on."""
        try:
            return action()
        except Exception as error:
            if self.settings.on_error == "raise":
                raise
            warnings.warn(
                f"DAVEMonitor {self.name!r}: evaluation at step {step} failed and was skipped; "
                f"nothing of it was logged or written ({type(error).__name__}: {error}). "
                "Training continues; pass on_error='raise' to stop on such errors.",
                stacklevel=2,
            )
            return None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    # --------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "probe_sha256": None if self.probe is None else self.probe.digest(),
            "settings": self.identity(),
            "history": self.history,
            "last_step": self._last_step,
            "first_maps": self._first_maps,
            "previous_maps": None if self._last is None else self._last.maps["dave"],
            "run_id": self._run_id,
            "snapshot_dir": None if self.snapshot_dir is None else str(self.snapshot_dir),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> str | None:
        """Continue a checkpointed history, unless the probe or settings differ: then say
        what differs (the history starts afresh, in a new snapshot folder)."""
        shape = None if self.probe is None else (len(self.probe), 1, *self.probe.images.shape[-2:])
        digest = None if self.probe is None else self.probe.digest()
        change = change_from(state, digest, shape, self.identity())
        if change:
            return change
        self.history = list(state["history"])
        self._last_step = state["last_step"]
        self._first_maps = state["first_maps"]
        previous = state["previous_maps"]
        if previous is not None:
            self._last = Evaluation(
                maps={"dave": previous},
                targets=torch.empty(0, dtype=torch.long),
                predictions=torch.empty(0, dtype=torch.long),
                metrics=dict(self.history[-1]["metrics"]) if self.history else {},
                global_step=self._last_step,
                slow=bool(self.history[-1].get("slow", True)) if self.history else True,
            )
        if state.get("run_id"):
            self._run_id = state["run_id"]
        if state.get("snapshot_dir"):
            self._resumed_folder = Path(state["snapshot_dir"])
            self._publisher.images_due = False
        return None


def _completed(earlier: Evaluation, slow: Evaluation) -> Evaluation:
    """``slow``'s results added to ``earlier``'s, at the same step (the slow metrics of an
    evaluation that did not know it was the last)."""
    return replace(
        slow,
        metrics={**earlier.metrics, **slow.metrics},
        values={**earlier.values, **slow.values},
        intervals={**earlier.intervals, **slow.intervals},
        curves={**earlier.curves, **slow.curves},
    )


def _fingerprint(model: nn.Module) -> torch.Tensor:
    """(sum, sum of squares) of this process's part of every parameter, in float64: changes
    when the weights do."""
    with torch.no_grad():
        values = []
        for parameter in model.parameters():
            local = parameter.detach()
            local = local.to_local() if hasattr(local, "to_local") else local  # a sharded DTensor
            values.append(torch.stack([local.double().sum(), local.double().square().sum()]).cpu())
    return torch.stack(values) if values else torch.zeros(0, 2, dtype=torch.float64)


def _left_out_message(name: str, left_out: Mapping[str, Sequence[str]]) -> str:
    reasons = "; ".join(
        f"{metric} needs {needs[0]} ({NEEDS[needs[0]]})" for metric, needs in left_out.items()
    )
    return (
        f"DAVEMonitor {name!r} leaves out {', '.join(left_out)}: {reasons}. Pass metrics=... to "
        "choose the metrics and silence this warning."
    )
