"""DAVEMonitor: track what a ViT looks at while it trains (docs/callback.md).

Periodically runs DAVE and the explanation metrics on a fixed probe, logs scalars and pictures
to every logger of the Trainer, puts the metrics in ``trainer.callback_metrics`` and saves a
snapshot per evaluation. The callback orchestrates only: the evaluator computes, the sinks draw,
the snapshot module writes. It never changes what training computes: modes, ``requires_grad``
flags, ``.grad`` fields and the global RNG come back exactly as they were, and a failing
evaluation only warns (unless ``on_error="raise"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from dave_lightning import panels, viz
from dave_lightning.attribution.settings import MONITOR_ENGINE, DAVESettings
from dave_lightning.core.validation import check_choice, check_int
from dave_lightning.evaluation import (
    Evaluation,
    EvaluationOptions,
    ItemResults,
    ProbeEvaluator,
    Shard,
)
from dave_lightning.metrics.registry import METRICS
from dave_lightning.models import ModelAdapter
from dave_lightning.models.adapter import ForwardFn, requested_normalization
from dave_lightning.models.encoding import resolve_encoding
from dave_lightning.probe import Probe, build_probe, check_probe_for_model, val_dataloader
from dave_lightning.resume import STATE_VERSION, change_from, settings_id
from dave_lightning.schedule import Schedule
from dave_lightning.sharding import run_sharded
from dave_lightning.sinks import ImageSink, sinks_for_loggers
from dave_lightning.snapshot import list_snapshots, load_evaluation, save_snapshot


class DAVEMonitor(pl.Callback):
    """Log DAVE heatmaps and explanation-quality metrics of a fixed probe during training.

    Args:
        probe: ``(images, labels[, masks])``, a ``Dataset``, a ``DataLoader`` or ``"val"`` (the
            first ``num_probe`` items of the first validation dataloader).
        num_probe: probe images taken from the source.
        target: explain the ``"label"`` or the model's prediction (``"pred"``).
        every_n_epochs, every_n_train_steps: the schedule (``0``/``None`` turns one off).
        at_start, at_end: also evaluate before training and at its end.
        n_samples, noise_alpha, hflip_prob, rotation, translation, scale, aggregation,
            batch_size, seed, target_reliability, max_samples: DAVE's settings, as in
            :class:`dave_lightning.DAVE`; ``batch_size`` caps the images of every model pass.
        metrics: the metrics to compute (default: all registered ones).
        slow_metrics_every: the metrics that need extra model passes run at the first
            evaluation, every n-th after it and the last one of the fit.
        compare_methods: attribution methods computed and logged beside DAVE.
        regions: ``{name: (N, H, W) bool masks}`` whose attribution share is logged.
        grid_k, deletion_steps, deletion_baseline: grid pointing game and deletion settings.
        log_images, max_images: pictures to every logger, for this many probe images.
        mean, std: the probe's normalisation, for display (default: the model's own).
        image_processor: a HuggingFace image processor whose ``image_mean``/``image_std`` give
            that normalisation instead.
        forward_fn: ``forward_fn(pl_module, images)`` when the module's output holds no logits.
        input_encoding: ``"add_inverse"`` for B-cos inputs ``[x, 1 − x]`` (default: the
            model's own, else detected from the probe).
        snapshot_dir: where snapshots go (default ``<log_dir>/<name>``).
        name: the prefix of every tag and the snapshot folder; give each monitor of a Trainer
            its own.
        on_error: ``"warn"`` skips a failing evaluation, ``"raise"`` stops the fit.

    Raises:
        TypeError, ValueError: for a bad option here, and for a probe the model cannot take
            in ``setup``, before the first training step.
    """

    def __init__(
        self,
        probe: tuple | Dataset | DataLoader | str = "val",
        *,
        num_probe: int = 16,
        target: str = "label",
        every_n_epochs: int | None = 1,
        every_n_train_steps: int | None = None,
        at_start: bool = True,
        at_end: bool = True,
        n_samples: int = MONITOR_ENGINE.n_samples,
        noise_alpha: float | None = 0.5,
        batch_size: int | None = None,
        seed: int = 0,
        hflip_prob: float = 0.5,
        rotation: float = 20.0,
        translation: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        aggregation: str = "mad",
        target_reliability: float | None = None,
        max_samples: int | None = None,
        metrics: Sequence[str] | None = None,
        slow_metrics_every: int = 3,
        compare_methods: Sequence[str] = ("input_x_gradient",),
        regions: Mapping[str, torch.Tensor] | None = None,
        grid_k: int = 2,
        deletion_steps: int = 16,
        deletion_baseline: str = "blur",
        log_images: bool = True,
        max_images: int = 8,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_processor: Any | None = None,
        forward_fn: ForwardFn | None = None,
        input_encoding: str | None = None,
        snapshot_dir: str | Path | None = None,
        name: str = "dave",
        on_error: str = "warn",
    ) -> None:
        if not (isinstance(probe, (tuple, Dataset, DataLoader)) or probe == "val"):
            raise TypeError(
                "probe must be (images, labels[, masks]), a Dataset, a DataLoader or 'val'; "
                f"got {type(probe).__name__}"
            )
        check_int("num_probe", num_probe, minimum=1)
        check_int("max_images", max_images, minimum=0)
        check_choice("on_error", on_error, ("warn", "raise"))
        if regions is not None and not isinstance(regions, Mapping):
            raise TypeError(
                f"regions must map a name to (N, H, W) bool masks, got {type(regions).__name__}"
            )
        mean, std = requested_normalization(mean, std, image_processor)
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError("forward_fn must be callable as forward_fn(pl_module, images)")
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"name must be a non-empty tag prefix without spaces, got {name!r}")
        self.engine = DAVESettings.from_arguments(locals())
        self.options = EvaluationOptions(
            metrics=() if metrics is None else tuple(metrics),
            compare_methods=tuple(compare_methods),
            target=target,
            grid_k=grid_k,
            deletion_steps=deletion_steps,
            deletion_baseline=deletion_baseline,
        )
        self.schedule = Schedule(
            every_n_epochs, every_n_train_steps, at_start, at_end, slow_metrics_every
        )
        self.num_probe = num_probe
        self.regions = regions
        self.log_images = log_images
        self.max_images = max_images
        self.mean, self.std = mean, std
        self.forward_fn = forward_fn
        self.input_encoding = input_encoding
        self.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self.name = name
        self.on_error = on_error
        self.history: list[dict[str, Any]] = []
        self._last_step: int | None = None
        self._attempted_step: int | None = None  # the last step tried, even if it failed
        self._first_maps: torch.Tensor | None = None
        self._previous_maps: torch.Tensor | None = None
        self._probe_source = probe
        self.probe: Probe | None = (
            None if probe == "val" else build_probe(probe, num_probe, regions)
        )
        self._adapter: ModelAdapter | None = None
        self._evaluator: ProbeEvaluator | None = None
        self._sinks: list[ImageSink] = []
        self._images01: torch.Tensor | None = None
        self._normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._layout_logged = False

    # -------------------------------------------------------------------------- identity

    @property
    def state_key(self) -> str:
        """Tells monitors apart in checkpoints: name, probe and what determines the numbers."""
        probe = f"val[{self.num_probe}]" if self.probe is None else self.probe.digest()[:16]
        return self._generate_state_key(
            name=self.name, probe=probe, settings=settings_id(self._identity())
        )

    def _identity(self) -> dict[str, Any]:
        """The settings that make two evaluations comparable (everything but the memory cap)."""
        engine = self.engine.to_dict()
        engine.pop("batch_size")
        return {"engine": engine, **self.options.to_dict()}

    # ----------------------------------------------------------------------------- setup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build and check the probe against the model before the first training step."""
        if stage != "fit":
            return
        self._check_names(trainer)
        if self.probe is None:
            self.probe = build_probe(val_dataloader(trainer), self.num_probe, self.regions)
        adapter = ModelAdapter(pl_module, forward_fn=self.forward_fn)
        encoding = resolve_encoding(self.input_encoding, adapter, self.probe.images)
        check_probe_for_model(self.probe, adapter)
        engine = self.engine.for_model(adapter.reference_noise_alpha)
        self._adapter = adapter
        self._evaluator = ProbeEvaluator(
            self.probe, engine, self.options, input_encoding=self.input_encoding
        )
        self._normalization = adapter.normalization(self.mean, self.std)
        self._images01 = viz.denormalize(encoding.picture(self.probe.images), *self._normalization)
        if self.snapshot_dir is None:
            self.snapshot_dir = Path(trainer.log_dir or trainer.default_root_dir) / self.name
        self._sinks = []
        if self.log_images:
            self._sinks, as_png = sinks_for_loggers(trainer.loggers, self.snapshot_dir / "png")
            if as_png:
                rank_zero_warn(
                    f"DAVEMonitor: {', '.join(as_png)} cannot show images; the heatmaps go to "
                    "PNG files in its log directory (images/step_*/). Scalars reach every logger."
                )
        self._warn_about_stale_monitors(trainer)
        self._layout_logged = False
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams(self._hyperparameters())

    def _hyperparameters(self) -> dict[str, Any]:
        """The monitor's settings, flat, as ``<name>/<setting>`` (an hparams entry per logger)."""
        settings = {**self.engine.to_dict(), **self.options.to_dict()}
        settings.update(
            num_probe=len(self.probe),
            probe_sha256=self.probe.digest(),
            every_n_epochs=self.schedule.every_n_epochs,
            every_n_train_steps=self.schedule.every_n_train_steps,
            slow_metrics_every=self.schedule.slow_metrics_every,
        )
        return {
            f"{self.name}/{key}": ", ".join(map(str, value)) if isinstance(value, list) else value
            for key, value in settings.items()
        }

    def _check_names(self, trainer: pl.Trainer) -> None:
        names = [cb.name for cb in trainer.callbacks if isinstance(cb, DAVEMonitor)]
        if names.count(self.name) > 1:
            raise ValueError(
                f"{names.count(self.name)} DAVEMonitors log under the name {self.name!r}; give "
                "each its own name (e.g. DAVEMonitor(..., name='dave_hard'))"
            )

    def _warn_about_stale_monitors(self, trainer: pl.Trainer) -> None:
        """A checkpoint or early-stopping callback on a slow metric sees it only now and then."""
        every = self.schedule.slow_metrics_every
        if every == 1:
            return
        slow = {
            f"{self.name}/{key}"
            for key in self._slow_keys()
            for key in (key, *(f"{m}/{key}" for m in self.options.compare_methods))
        }
        for callback in trainer.callbacks:
            watched = getattr(callback, "monitor", None)
            if isinstance(callback, (ModelCheckpoint, EarlyStopping)) and watched in slow:
                rank_zero_warn(
                    f"{type(callback).__name__} monitors {watched}, which DAVEMonitor computes "
                    f"only at the first, every {every}-th and the last "
                    "evaluation; in between it sees the last computed value. Pass "
                    "slow_metrics_every=1 to compute it at every evaluation."
                )

    def _slow_keys(self) -> list[str]:
        """Metric keys the slow metrics produce (as far as they can be told before running)."""
        keys = {
            "stability": ["stability_pearson", "stability_spearman", "stability_topk_iou"],
            "grid_pg": ["grid_pg"],
            "deletion": [
                f"deletion_{order}_{self.options.deletion_baseline}"
                for order in ("lerf", "morf", "random")
            ],
        }
        return [
            key
            for name in self.options.metrics
            if METRICS[name].slow
            for key in keys.get(name, [name])
        ]

    # -------------------------------------------------------------------------- schedule

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.at_start and not self.history:
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        by_steps = self.schedule.step_due(trainer.global_step)
        epoch_ends = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        # An epoch's evaluation runs after its last batch, before validation and epoch-end
        # hooks, so that checkpoint and early-stopping callbacks see its metrics.
        if by_steps or (epoch_ends and self.schedule.epoch_due(trainer.current_epoch)):
            self._evaluate(trainer, pl_module, last=_fit_ends_now(trainer, epoch_ends))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.epoch_due(trainer.current_epoch):  # cut short (max_steps): no last batch
            self._evaluate(trainer, pl_module, last=_fit_ends_now(trainer, epoch_ends=True))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.schedule.at_end:
            return
        if trainer.global_step not in (self._last_step, self._attempted_step):
            self._evaluate(trainer, pl_module, last=True)
        elif trainer.global_step == self._last_step and not self.history[-1].get("slow", True):
            # the fit ended right after an evaluation that did not know it was the last
            self._guarded(trainer.global_step, self._run_evaluation, trainer, pl_module, True, True)
        if self._sinks and trainer.is_global_zero and self.history:
            self._guarded(trainer.global_step, self._log_progression, trainer.global_step)

    # ------------------------------------------------------------------------ evaluation

    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, last: bool = False
    ) -> None:
        """One evaluation at the current step (at most one try per step); ``last``: of the fit."""
        step = trainer.global_step
        if self._evaluator is None or step in (self._last_step, self._attempted_step):
            return
        self._attempted_step = step
        self._guarded(step, self._run_evaluation, trainer, pl_module, last, False)

    def _guarded(self, step: int, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn``; with ``on_error="warn"`` a failure warns and training goes on."""
        try:
            fn(*args)
        except Exception as error:
            if self.on_error == "raise":
                raise
            rank_zero_warn(
                f"DAVEMonitor: evaluation at step {step} failed and was skipped "
                f"({type(error).__name__}: {error}). Training continues; pass "
                "on_error='raise' to stop on such errors."
            )

    def _run_evaluation(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, last: bool, complete: bool
    ) -> None:
        """Evaluate (this rank's share), gather, publish on rank 0, and remember.

        ``complete``: the last evaluation ran without the slow metrics at this same step; add
        them to it instead of recording a new evaluation.
        """
        slow = self.schedule.slow(len(self.history), last)
        references = {}
        if not complete and self._previous_maps is not None and "drift" in self.options.metrics:
            references = {"previous": self._previous_maps, "first": self._first_maps}
        evaluation = self._evaluation(trainer, pl_module, slow, references)
        evaluation.epoch, evaluation.global_step = trainer.current_epoch, trainer.global_step
        evaluation.settings = {
            **self._evaluator.settings(),
            "name": self.name,
            "mean": list(self._normalization[0]),
            "std": list(self._normalization[1]),
        }
        if complete:
            evaluation = self._completed(evaluation)
        new = {k: v for k, v in evaluation.metrics.items() if k not in self._logged_keys(complete)}
        if trainer.is_global_zero:
            self._publish(trainer, evaluation, new, images=not complete)
        for key, value in evaluation.metrics.items():
            trainer.callback_metrics[f"{self.name}/{key}"] = torch.tensor(value)
        record = {
            "epoch": evaluation.epoch,
            "global_step": evaluation.global_step,
            "metrics": evaluation.metrics,
            "slow": slow,
        }
        if complete:
            self.history[-1] = record
            return
        self.history.append(record)
        self._last_step = evaluation.global_step
        maps = evaluation.maps["dave"]
        self._first_maps = maps if self._first_maps is None else self._first_maps
        self._previous_maps = maps

    def _evaluation(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        slow: bool,
        references: dict[str, torch.Tensor],
    ) -> Evaluation:
        """This rank's share of the probe evaluated, and every rank's results averaged."""
        cuda = [pl_module.device] if pl_module.device.type == "cuda" else []

        def run(shard: Shard) -> ItemResults:
            with torch.random.fork_rng(devices=cuda):
                return self._evaluator.run(
                    self._adapter, slow_metrics=slow, references=references, shard=shard
                )

        grid = self._evaluator.grid
        grid_size = 0 if grid is None else len(grid.targets)
        return self._evaluator.finish(run_sharded(trainer, run, len(self.probe), grid_size))

    def _completed(self, evaluation: Evaluation) -> Evaluation:
        """``evaluation``'s slow results added to the last recorded evaluation's."""
        evaluation.metrics = {**self.history[-1]["metrics"], **evaluation.metrics}
        return evaluation

    def _logged_keys(self, complete: bool) -> set[str]:
        return set(self.history[-1]["metrics"]) if complete and self.history else set()

    def _publish(
        self, trainer: pl.Trainer, evaluation: Evaluation, scalars: dict[str, float], images: bool
    ) -> None:
        """Scalars to every logger, pictures to every sink, the snapshot to disk."""
        step = evaluation.global_step
        tagged = {f"{self.name}/{key}": value for key, value in scalars.items()}
        for logger in trainer.loggers:
            logger.log_metrics(tagged, step=step)
        if self._sinks and images:
            panels.log_evaluation(
                self._sinks, self.name, evaluation, self._images01, step, self.max_images
            )
        if self._sinks and not self._layout_logged:
            charts = self._charts([*(h["metrics"] for h in self.history), evaluation.metrics])
            for sink in self._sinks:
                sink.log_layout(f"DAVE ({self.name})", charts)
            self._layout_logged = True
        if not self.history:
            evaluation.images = self.probe.images  # the run's first snapshot carries the probe
        save_snapshot(self.snapshot_dir, evaluation)

    def _charts(self, evaluations: Sequence[Mapping[str, float]]) -> dict[str, list[str]]:
        """One chart per metric: DAVE's value and each compared method's, as tags."""
        keys = list(dict.fromkeys(key for metrics in evaluations for key in metrics))
        charts = {}
        for key in (k for k in keys if "/" not in k):
            methods = [m for m in self.options.compare_methods if f"{m}/{key}" in keys]
            charts[key] = [f"{self.name}/{key}", *(f"{self.name}/{m}/{key}" for m in methods)]
        return charts

    def _log_progression(self, step: int) -> None:
        digest = self.probe.digest()
        columns = []
        for path in list_snapshots(self.snapshot_dir):
            evaluation = load_evaluation(path)
            if evaluation.settings.get("probe_sha256") == digest:
                columns.append((f"step {evaluation.global_step}", evaluation.maps["dave"]))
        panels.log_progression(
            self._sinks, self.name, columns, self._images01, step, self.max_images
        )

    # ---------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "probe_sha256": None if self.probe is None else self.probe.digest(),
            "settings": self._identity(),
            "history": self.history,
            "last_step": self._last_step,
            "first_maps": self._first_maps,
            "previous_maps": self._previous_maps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the checkpointed history, unless the probe differs (then start afresh)."""
        shape = None if self.probe is None else (len(self.probe), 1, *self.probe.images.shape[-2:])
        digest = None if self.probe is None else self.probe.digest()
        change = change_from(state_dict, digest, shape, self._identity())
        if change:
            rank_zero_warn(
                f"DAVEMonitor {self.name!r}: {change}; its history and drift baseline start "
                "afresh and the fit goes on."
            )
            return
        self.history = list(state_dict["history"])
        self._last_step = state_dict["last_step"]
        self._first_maps = state_dict["first_maps"]
        self._previous_maps = state_dict["previous_maps"]

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Find this monitor's state when its key changed: a changed probe or settings, or a
        checkpoint of the first version (which stored a single monitor under its class name)."""
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return  # Lightning passes it to load_state_dict
        claimed = {cb.state_key for cb in trainer.callbacks if isinstance(cb, DAVEMonitor)}
        for key, state in states.items():
            if not isinstance(key, str) or not key.startswith(type(self).__name__):
                continue
            if key not in claimed and state.get("name", "dave") == self.name:
                self.load_state_dict(state)
                return


def _fit_ends_now(trainer: pl.Trainer, epoch_ends: bool) -> bool:
    """Whether the fit stops after this step (max_steps, a stop request, or the last epoch)."""
    max_epochs = trainer.max_epochs
    last_epoch = max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1
    return 0 < trainer.max_steps <= trainer.global_step or (
        epoch_ends and (trainer.should_stop or last_epoch)
    )
