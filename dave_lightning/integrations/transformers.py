"""DAVETrainerCallback: DAVE's maps and metrics of a fixed probe while a HuggingFace
``transformers.Trainer`` trains.

A thin front door over :class:`~dave_lightning.monitor.ProbeMonitor` (docs/beyond_the_trainer.md,
"HuggingFace Trainer"): it maps the Trainer's events to the monitor's schedule, puts the
scalars in ``state.log_history`` and in the metrics of every HF evaluation (as ``eval_<tag>``,
where ``metric_for_best_model`` finds them), and hands the pictures and scalars to the
``report_to`` integrations that show them: TensorBoard (a run folder of its own), the active W&B
run, the active MLflow run. Under ``torch.distributed`` every rank evaluates its share of the
probe and rank 0 writes and logs.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import transformers
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter

from dave_lightning.evaluation import Evaluation
from dave_lightning.monitor import MonitorSettings, ProbeMonitor, default_collective
from dave_lightning.monitor.cost import Training
from dave_lightning.monitor.front_door import FrontDoor, check_probe_source

# The arguments of every Trainer event: the Trainer's arguments, state and control.
Arguments, State, Control = (
    transformers.TrainingArguments,
    transformers.TrainerState,
    transformers.TrainerControl,
)


class DAVETrainerCallback(FrontDoor, transformers.TrainerCallback):
    """Log DAVE heatmaps and explanation-quality metrics of a fixed probe during ``Trainer.train``.

    The schedule: before training (``at_start``, step 0), every ``every_n_train_steps``
    optimizer steps (``state.global_step``), at the end of every ``every_n_epochs``-th epoch
    (``on_epoch_end``), at every HF evaluation (``eval_strategy``), and at the end of training
    (``at_end``); never twice at one step.

    Args:
        probe: ``(images, labels[, masks])``, a ``DataLoader``, or a ``Dataset`` such as the
            Trainer's ``eval_dataset`` (items ``{"pixel_values", "labels"}``): its first
            ``num_probe`` items, batched by the Trainer's data collator when training starts.
        options: the options of :class:`~dave_lightning.DAVEMonitor` (docs/callback.md), e.g.
            ``n_samples=16, every_n_train_steps=100``.

    Raises:
        TypeError, ValueError: for a bad probe or option here, and when training starts for a
            probe the model cannot take or a snapshot folder that cannot be used.
    """

    def __init__(self, probe: tuple | Dataset | DataLoader, **options: Any) -> None:
        check_probe_source(probe, "a Dataset (e.g. the Trainer's eval_dataset)")
        settings = MonitorSettings.from_options(**options)
        self._dataset = probe if isinstance(probe, Dataset) else None
        self.monitor = ProbeMonitor(None if self._dataset is not None else probe, settings=settings)
        self._latest: dict[str, float] = {}  # every tag's last value, for HF's evaluations
        self._entry: dict[str, Any] | None = None  # the last log_history entry of the monitor
        self._writer: SummaryWriter | None = None

    # ---------------------------------------------------------------------------- events

    def on_train_begin(
        self,
        args: Arguments,
        state: State,
        control: Control,
        model: nn.Module | None = None,
        train_dataloader: DataLoader | None = None,
        **kwargs: Any,
    ) -> None:
        """Build and check the probe, claim ``<output_dir>/<name>`` (or ``snapshot_dir``),
        open the destinations (rank 0), say what the evaluations cost against the training and,
        with ``at_start``, evaluate the untrained model."""
        destinations = []
        if state.is_world_process_zero:
            destinations = self._open_destinations(args)
        probe = None
        if self._dataset is not None:
            collate = getattr(train_dataloader, "collate_fn", None)
            probe = DataLoader(self._dataset, collate_fn=collate) if collate else self._dataset
        self.monitor.setup(
            model,
            *destinations,
            probe=probe,
            folder=Path(args.output_dir) / self.name,
            collective=default_collective(),
        )
        self.monitor.announce_cost(_training(args, state, train_dataloader))
        if self.settings.schedule.at_start and not self.history:
            self._evaluate(state, control, model)

    def on_step_end(self, args: Arguments, state: State, control: Control, **kwargs: Any) -> None:
        if self.monitor.due(state.global_step):
            self._evaluate(state, control, kwargs.get("model"))

    def on_epoch_end(self, args: Arguments, state: State, control: Control, **kwargs: Any) -> None:
        if self.monitor.due(state.global_step, epoch_end=_epoch(state)):
            self._evaluate(state, control, kwargs.get("model"))

    def on_evaluate(
        self,
        args: Arguments,
        state: State,
        control: Control,
        metrics: dict[str, float] | None = None,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """An HF evaluation: evaluate (unless the monitor did at this step), then add every
        tag's last value to its metrics as ``eval_<tag>``, where ``metric_for_best_model``
        (``"dave/energy_pg"`` → ``eval_dave/energy_pg``) and ``trainer.evaluate()``'s caller
        find it."""
        if self.monitor.due(state.global_step, requested=True):
            self._evaluate(state, control, model)
        if metrics is not None:
            metrics.update({f"eval_{tag}": value for tag, value in self._latest.items()})

    def on_train_end(self, args: Arguments, state: State, control: Control, **kwargs: Any) -> None:
        """With ``at_end``: the last evaluation (or the slow metrics added to one that ran at
        this step), redone when the weights changed since (``load_best_model_at_end`` loads the
        best checkpoint before this event), then the progression pictures."""
        model, step, epoch = kwargs.get("model"), state.global_step, _epoch(state)
        self._record(state, self.monitor.finish(model, step=step, epoch=epoch))
        self._record(state, self.monitor.close(model, step=step, epoch=epoch))
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ----------------------------------------------------------------------------- parts

    def _evaluate(self, state: State, control: Control, model: nn.Module | None) -> None:
        last = state.global_step >= state.max_steps > 0 or control.should_training_stop
        evaluation = self.monitor.run(model, step=state.global_step, epoch=_epoch(state), last=last)
        self._record(state, evaluation)

    def _record(self, state: State, evaluation: Evaluation | None) -> None:
        """A published evaluation's scalars into ``state.log_history`` (an evaluation redone or
        completed at the step of the last one updates its entry) and into ``_latest``."""
        if evaluation is None:
            return
        scalars = self.monitor.finite_scalars(evaluation)
        self._latest.update(scalars)
        step = evaluation.global_step
        if self._entry is not None and self._entry["step"] == step:
            self._entry.update(scalars)
            return
        self._entry = dict(scalars)
        if state.epoch is not None:
            self._entry["epoch"] = state.epoch
        self._entry["step"] = step
        state.log_history.append(self._entry)

    def _open_destinations(self, args: Arguments) -> list[Any]:
        """Where pictures and scalars go: the ``report_to`` integrations that show them."""
        report_to = list(args.report_to or ())
        destinations: list[Any] = []
        if "tensorboard" in report_to:
            self._writer = SummaryWriter(log_dir=str(tensorboard_dir(args.output_dir, self.name)))
            destinations.append(self._writer)
        if "wandb" in report_to:
            import wandb

            if wandb.run is None:
                self._not_active("wandb", "W&B run")
            else:
                destinations.append(_TrainerWandb(experiment=wandb.run))
        if "mlflow" in report_to:
            import mlflow

            run = mlflow.active_run()
            if run is None:
                self._not_active("mlflow", "MLflow run")
            else:
                destinations.append(
                    MLFlowLogger(run_id=run.info.run_id, tracking_uri=mlflow.get_tracking_uri())
                )
        return destinations

    def _not_active(self, integration: str, what: str) -> None:
        warnings.warn(
            f"DAVETrainerCallback {self.name!r}: report_to names {integration!r} but no {what} "
            "is active when training starts; DAVE's scalars and pictures do not go there",
            stacklevel=3,
        )


class _TrainerWandb(WandbLogger):
    """The Trainer's active W&B run as a logger whose values sit on the x-axis the Trainer's
    W&B integration declares (``train/global_step``), so DAVE's line up with its own."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.experiment.log({**metrics, "train/global_step": step})


def tensorboard_dir(output_dir: str | Path, name: str) -> Path:
    """The monitor's TensorBoard run folder: ``$TENSORBOARD_LOGGING_DIR/<name>`` where the
    Trainer's TensorBoard integration writes to that folder, else a new run folder beside the
    integration's: ``<output_dir>/runs/<time>_<host>_<name>``."""
    shared = os.getenv("TENSORBOARD_LOGGING_DIR")
    if shared:
        return Path(shared).expanduser() / name
    stamp = datetime.now().strftime("%b%d_%H-%M-%S")
    return Path(output_dir) / "runs" / f"{stamp}_{socket.gethostname()}_{name}"


def _training(args: Arguments, state: State, loader: DataLoader | None) -> Training | None:
    """How much this process trains: the train loader's batches × the per-device batch size per
    epoch, optimizer steps per epoch after gradient accumulation, the Trainer's ``max_steps``;
    None when the loader has no length."""
    try:
        batches = len(loader)
    except TypeError:  # no loader, or an iterable one
        return None
    if batches < 1:
        return None
    return Training(
        images_per_epoch=batches * args.per_device_train_batch_size,
        steps_per_epoch=math.ceil(batches / args.gradient_accumulation_steps),
        max_steps=state.max_steps if state.max_steps > 0 else None,
    )


def _epoch(state: State) -> int:
    """The 0-based epoch the Trainer is in (``state.epoch`` counts epochs as a float)."""
    return max(math.ceil(state.epoch or 0) - 1, 0)
