"""DAVEMonitor: track what a ViT looks at while Lightning's Trainer trains it (docs/callback.md).

A thin front door over the framework-neutral :class:`~dave_lightning.monitor.ProbeMonitor`: it
wires the Trainer's hooks to the monitor's lifecycle (decide → compute → write → publish), hands
it the Trainer's loggers and strategy, and puts the metrics in ``trainer.callback_metrics``. It
never changes what training computes: modes, ``requires_grad`` flags, ``.grad`` fields and the
global RNG come back exactly as they were, and a failing evaluation only warns (unless
``on_error="raise"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from dave_lightning.attribution.settings import MONITOR_ENGINE
from dave_lightning.evaluation import Evaluation, EvaluationOptions
from dave_lightning.models.adapter import ForwardFn
from dave_lightning.monitor import MonitorSettings, ProbeMonitor, StrategyCollective
from dave_lightning.monitor.cost import Training
from dave_lightning.monitor.front_door import FrontDoor
from dave_lightning.monitor.schedule import Schedule
from dave_lightning.probe import Probe, val_dataloader

_OPTIONS = EvaluationOptions()
_SCHEDULE = Schedule()
_OWN = MonitorSettings()


class DAVEMonitor(FrontDoor, pl.Callback):
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
        metrics: the metrics to compute (default: every registered one the probe allows).
        slow_metrics_every: the metrics that need extra model passes run at the first
            evaluation, every n-th after it and the last one of the fit.
        compare_methods: attribution methods computed and logged beside DAVE.
        regions: ``{name: (N, H, W) bool masks}`` whose attribution share is logged.
        grid_k, deletion_steps, deletion_baseline: grid pointing game and deletion settings.
        confidence: the confidence of each metric's interval.
        alert_ratio: a region's alarm is raised when the lower bound of its attribution share
            exceeds this many times its share of the pixels.
        log_images, max_images: pictures to every logger, for this many probe images.
        mean, std: the probe's normalisation, for display (default: the model's own).
        image_processor: a HuggingFace image processor whose ``image_mean``/``image_std`` give
            that normalisation instead.
        forward_fn: ``forward_fn(pl_module, images)`` when the module's output holds no logits.
        input_encoding: ``"add_inverse"`` for B-cos inputs ``[x, 1 − x]`` (default: the
            model's own, else detected from the probe).
        snapshot_dir: where snapshots go (default: a folder of this run's own, see
            docs/callback.md "Where snapshots go").
        name: the prefix of every tag and the snapshot folder; give each monitor of a Trainer
            its own.
        on_error: ``"warn"`` skips a failing evaluation, ``"raise"`` stops the fit.
        max_overhead: the largest share of the training time the monitor may take (e.g.
            ``0.05``): scheduled evaluations that would exceed it are skipped, never the first
            or the last of a fit (default: no budget).

    Raises:
        TypeError, ValueError: for a bad option here, and in ``setup`` (before the first
            training step) for a probe the model cannot take, a metric whose inputs are
            missing, a checkpoint or early-stopping callback watching a key the monitor never
            logs, or a snapshot folder that cannot be used.
    """

    def __init__(
        self,
        probe: tuple | Dataset | DataLoader | str = "val",
        *,
        num_probe: int = _OWN.num_probe,
        target: str = _OPTIONS.target,
        every_n_epochs: int | None = _SCHEDULE.every_n_epochs,
        every_n_train_steps: int | None = _SCHEDULE.every_n_train_steps,
        at_start: bool = _SCHEDULE.at_start,
        at_end: bool = _SCHEDULE.at_end,
        n_samples: int = MONITOR_ENGINE.n_samples,
        noise_alpha: float | None = MONITOR_ENGINE.noise_alpha,
        batch_size: int | None = MONITOR_ENGINE.batch_size,
        seed: int = MONITOR_ENGINE.seed,
        hflip_prob: float = MONITOR_ENGINE.hflip_prob,
        rotation: float = MONITOR_ENGINE.rotation,
        translation: float = MONITOR_ENGINE.translation,
        scale: tuple[float, float] = MONITOR_ENGINE.scale,
        aggregation: str = MONITOR_ENGINE.aggregation,
        target_reliability: float | None = MONITOR_ENGINE.target_reliability,
        max_samples: int | None = MONITOR_ENGINE.max_samples,
        metrics: Sequence[str] | None = _OPTIONS.metrics,
        slow_metrics_every: int = _SCHEDULE.slow_metrics_every,
        compare_methods: Sequence[str] = _OPTIONS.compare_methods,
        regions: Mapping[str, torch.Tensor] | None = _OWN.regions,
        grid_k: int = _OPTIONS.grid_k,
        deletion_steps: int = _OPTIONS.deletion_steps,
        deletion_baseline: str = _OPTIONS.deletion_baseline,
        confidence: float = _OPTIONS.confidence,
        alert_ratio: float = _OWN.alert_ratio,
        log_images: bool = _OWN.log_images,
        max_images: int = _OWN.max_images,
        mean: Sequence[float] | None = _OWN.mean,
        std: Sequence[float] | None = _OWN.std,
        image_processor: Any | None = None,
        forward_fn: ForwardFn | None = _OWN.forward_fn,
        input_encoding: str | None = _OWN.input_encoding,
        snapshot_dir: str | Path | None = _OWN.snapshot_dir,
        name: str = _OWN.name,
        on_error: str = _OWN.on_error,
        max_overhead: float | None = _OWN.max_overhead,
    ) -> None:
        if not (isinstance(probe, (tuple, Dataset, DataLoader, Probe)) or probe == "val"):
            raise TypeError(
                "probe must be (images, labels[, masks]), a Dataset, a DataLoader or 'val'; "
                f"got {type(probe).__name__}"
            )
        options = {key: value for key, value in locals().items() if key not in _NOT_OPTIONS}
        self.monitor = ProbeMonitor(
            None if probe == "val" else probe, settings=MonitorSettings.from_options(**options)
        )
        self._from_val = probe == "val"
        self._batch_epoch = 0

    # -------------------------------------------------------------------------- identity

    @property
    def probe(self) -> Probe | None:
        return self.monitor.probe

    @property
    def state_key(self) -> str:
        """Tells monitors apart in checkpoints: name, probe and what determines the numbers."""
        probe = (
            f"val[{self.settings.num_probe}]" if self.probe is None else self.probe.digest()[:16]
        )
        return self._generate_state_key(
            name=self.name, probe=probe, settings=self.monitor.settings_id()
        )

    # ----------------------------------------------------------------------------- setup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build and check the probe, the metrics and the snapshot folder against the model
        and the Trainer's callbacks, before the first training step."""
        if stage != "fit":
            return
        self._check_names(trainer)
        probe = val_dataloader(trainer) if self._from_val and self.probe is None else None
        self.monitor.setup(
            pl_module,
            *trainer.loggers,
            probe=probe,
            root=trainer.default_root_dir,
            collective=_collective(trainer),
            writes=not trainer.fast_dev_run,
            resuming=trainer.ckpt_path is not None,
            start=False,
        )
        _check_watchers(trainer, self.monitor)
        if not any(isinstance(cb, _FitEnd) and cb.owner is self for cb in trainer.callbacks):
            trainer.callbacks.append(_FitEnd(self))  # runs after every other on_train_end

    def _check_names(self, trainer: pl.Trainer) -> None:
        names = [cb.name for cb in trainer.callbacks if isinstance(cb, DAVEMonitor)]
        if names.count(self.name) > 1:
            raise ValueError(
                f"{names.count(self.name)} DAVEMonitors log under the name {self.name!r}; give "
                "each its own name (e.g. DAVEMonitor(..., name='dave_hard'))"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Claim the snapshot folder: after a resumed run's state is loaded."""
        if self.monitor.is_set_up:
            self.monitor.start()

    # -------------------------------------------------------------------------- schedule

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the training the evaluations are measured against is known from here on
        self.monitor.announce_cost(_training(trainer))
        if self.settings.schedule.at_start and not self.history:
            self._evaluate(trainer, pl_module, epoch=trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self._batch_epoch = trainer.current_epoch
        epoch_ends = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        # An epoch's evaluation runs after its last batch, before validation and epoch-end
        # hooks, so that checkpoint and early-stopping callbacks see its metrics.
        epoch_end = trainer.current_epoch if epoch_ends else None
        if self.monitor.due(trainer.global_step, epoch_end=epoch_end):
            last = _fit_ends_now(trainer, epoch_ends)
            self._evaluate(trainer, pl_module, epoch=trainer.current_epoch, last=last)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # an epoch cut short (max_steps) has no last batch
        if self.monitor.due(trainer.global_step, epoch_end=trainer.current_epoch):
            last = _fit_ends_now(trainer, epoch_ends=True)
            self._evaluate(trainer, pl_module, epoch=trainer.current_epoch, last=last)

    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, epoch: int, last: bool = False
    ) -> None:
        step = trainer.global_step
        evaluation = self.monitor.run(pl_module, step=step, epoch=epoch, last=last)
        self._to_callback_metrics(trainer, evaluation)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step, epoch = trainer.global_step, self._batch_epoch
        self._to_callback_metrics(trainer, self.monitor.finish(pl_module, step=step, epoch=epoch))

    def _close(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After every other callback's ``on_train_end``: with the weights the fit ends with."""
        step, epoch = trainer.global_step, self._batch_epoch
        self._to_callback_metrics(trainer, self.monitor.close(pl_module, step=step, epoch=epoch))

    def _to_callback_metrics(self, trainer: pl.Trainer, evaluation: Evaluation | None) -> None:
        """The published metrics, for checkpoint and early-stopping callbacks (every rank)."""
        if evaluation is None:
            return
        for key, value in self.monitor.finite_scalars(evaluation).items():
            trainer.callback_metrics[key] = torch.tensor(value)

    # ---------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the checkpointed history, unless the probe or settings differ (then start
        afresh, in a new snapshot folder, with a warning that names the change)."""
        change = self.monitor.load_state_dict(state_dict)
        if change:
            rank_zero_warn(
                f"DAVEMonitor {self.name!r}: {change}; its history and drift baseline start "
                "afresh, in a new snapshot folder, and the fit goes on."
            )

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


class _FitEnd(pl.Callback):
    """Appended to the Trainer's callbacks at setup, so that the monitor sees the weights the
    fit ends with, after every other ``on_train_end`` (e.g. ``StochasticWeightAveraging``
    swapping the averaged weights in)."""

    def __init__(self, owner: DAVEMonitor) -> None:
        self.owner = owner

    @property
    def state_key(self) -> str:
        return f"_FitEnd[{self.owner.name}]"

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.owner._close(trainer, pl_module)


_NOT_OPTIONS = frozenset({"self", "probe", "__class__"})


def _collective(trainer: pl.Trainer) -> StrategyCollective:
    return StrategyCollective(trainer.strategy, trainer.global_rank, trainer.world_size)


def _training(trainer: pl.Trainer) -> Training | None:
    """How much this process trains in the fit: ``num_training_batches`` (after
    ``limit_train_batches``) × the train loader's batch size per epoch, optimizer steps per
    epoch after ``accumulate_grad_batches``, ``max_epochs`` and ``max_steps``; None when the
    loader's batch size or the epoch's length is not known."""
    batches = trainer.num_training_batches
    loader = trainer.train_dataloader
    size = getattr(loader, "batch_size", None)
    if size is None:  # a loader with its own batch sampler
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if not isinstance(size, int) or not math.isfinite(batches) or batches < 1:
        return None
    max_epochs = trainer.max_epochs
    return Training(
        images_per_epoch=int(batches) * size,
        steps_per_epoch=math.ceil(batches / trainer.accumulate_grad_batches),
        max_epochs=max_epochs if max_epochs is not None and max_epochs >= 0 else None,
        max_steps=trainer.max_steps if trainer.max_steps >= 0 else None,
    )


def _fit_ends_now(trainer: pl.Trainer, epoch_ends: bool) -> bool:
    """Whether the fit stops after this step (max_steps, a stop request, or the last epoch)."""
    max_epochs = trainer.max_epochs
    last_epoch = max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1
    return 0 < trainer.max_steps <= trainer.global_step or (
        epoch_ends and (trainer.should_stop or last_epoch)
    )


def _check_watchers(trainer: pl.Trainer, monitor: ProbeMonitor) -> None:
    """Checkpoint and early-stopping callbacks on the monitor's keys: each key must be one
    it logs, and exist when they first look; slow keys are only updated now and then."""
    prefix = f"{monitor.name}/"
    keys = monitor.metric_keys()
    schedule = monitor.settings.schedule
    for callback in trainer.callbacks:
        watched = getattr(callback, "monitor", None)
        if not isinstance(callback, (ModelCheckpoint, EarlyStopping)) or not isinstance(
            watched, str
        ):
            continue
        if not watched.startswith(prefix):
            continue
        kind = type(callback).__name__
        key = watched.removeprefix(prefix)
        if key not in keys:
            raise ValueError(_unknown_key_message(kind, watched, key, monitor))
        late = not schedule.at_start and (
            schedule.every_n_epochs != 1 or schedule.every_n_train_steps
        )
        if late:
            raise ValueError(
                f"{kind}(monitor={watched!r}) looks at every epoch's end, but DAVEMonitor "
                f"{monitor.name!r} first evaluates later (at_start=False); pass at_start=True "
                "so that the monitor has a value from the start (between evaluations the "
                "callbacks see the last one)"
            )
        if monitor.is_slow(key) and schedule.slow_metrics_every > 1:
            rank_zero_warn(
                f"{kind} monitors {watched}, which DAVEMonitor computes only at the first, "
                f"every {schedule.slow_metrics_every}-th and the last evaluation; in "
                "between it sees the last computed value. Pass slow_metrics_every=1 to "
                "compute it at every evaluation."
            )


def _unknown_key_message(kind: str, watched: str, key: str, monitor: ProbeMonitor) -> str:
    """Why ``key`` is never logged, and the fix."""
    reason = monitor.why_not_logged(key)
    logged = ", ".join(sorted(monitor.metric_keys())[:12])
    return (
        f"{kind}(monitor={watched!r}) watches a key that DAVEMonitor {monitor.name!r} never "
        f"logs{': ' + reason if reason else ''}. It logs {logged}, …"
    )
