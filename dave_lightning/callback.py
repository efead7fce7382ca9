"""DAVEMonitor: track what a ViT looks at while it trains (DESIGN §1, §4, §6).

Periodically runs DAVE and the explanation metrics on a fixed probe, logs scalars to every
logger and images to TensorBoard, and saves a snapshot per evaluation. It never changes what
training computes: the model's modes, ``requires_grad`` flags, ``.grad`` fields and the global
RNG come back exactly as they were, and a failing evaluation only warns (unless
``on_error="raise"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dave_lightning import viz
from dave_lightning.attribution.engine import check_settings
from dave_lightning.attribution.model_info import input_channels
from dave_lightning.evaluation import METRICS, ProbeEvaluator, check_names, drift_metrics
from dave_lightning.probe import Probe, build_probe
from dave_lightning.reporting import ImageSink, log_evaluation, log_progression
from dave_lightning.snapshot import list_snapshots, load_snapshot, save_snapshot
from dave_lightning.validation import check_int

ForwardFn = Callable[[pl.LightningModule, torch.Tensor], torch.Tensor]


class DAVEMonitor(pl.Callback):
    """Log DAVE heatmaps and explanation-quality metrics of a fixed probe during training.

    ``probe``: ``(images, labels[, masks])``, a ``Dataset``, a ``DataLoader`` or ``"val"`` (the
    first ``num_probe`` items of the first validation dataloader). Evaluations run before
    training (``at_start``), every ``every_n_epochs`` epochs and/or ``every_n_train_steps``
    steps, and at the end (``at_end``). The metrics that need extra model passes (stability,
    grid_pg, deletion) run at the first evaluation, every ``slow_metrics_every``-th after it and
    the last one of the fit; the others at every evaluation. ``regions`` maps a name to (N, H, W)
    bool masks whose attribution share is logged as ``dave/region_<name>``. See
    docs/callback.md for every tag.
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
        n_samples: int = 8,
        noise_alpha: float = 0.5,
        hflip_prob: float = 0.5,
        rotation: float = 20.0,
        translation: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        aggregation: str = "mad",
        batch_size: int | None = None,
        seed: int = 0,
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
        forward_fn: ForwardFn | None = None,
        snapshot_dir: str | Path | None = None,
        on_error: str = "warn",
    ) -> None:
        if not (isinstance(probe, (tuple, Dataset, DataLoader)) or probe == "val"):
            raise TypeError(
                "probe must be (images, labels[, masks]), a Dataset, a DataLoader or 'val'; "
                f"got {type(probe).__name__}"
            )
        check_int("num_probe", num_probe, minimum=1)
        if every_n_epochs is not None:
            check_int("every_n_epochs", every_n_epochs, minimum=0)
        if every_n_train_steps is not None:
            check_int("every_n_train_steps", every_n_train_steps, minimum=1)
        check_int("max_images", max_images, minimum=0)
        check_int("grid_k", grid_k, minimum=1)
        check_int("deletion_steps", deletion_steps, minimum=2)
        check_int("slow_metrics_every", slow_metrics_every, minimum=1)
        if target not in ("label", "pred"):
            raise ValueError(f"target must be 'label' or 'pred', got {target!r}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        metrics = METRICS if metrics is None else tuple(metrics)
        check_names(metrics, compare_methods)
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) not in (1, 3):
                raise ValueError(f"{name} must hold 1 or 3 values (per channel), got {values}")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError("forward_fn must be callable as forward_fn(pl_module, images)")
        self.engine = {
            "n_samples": n_samples,
            "noise_alpha": noise_alpha,
            "hflip_prob": hflip_prob,
            "rotation": rotation,
            "translation": translation,
            "scale": tuple(scale),
            "aggregation": aggregation,
            "batch_size": batch_size,
            "seed": seed,
        }
        check_settings(**self.engine)
        self.probe_source = probe
        self.num_probe = num_probe
        self.target = target
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self.at_start = at_start
        self.at_end = at_end
        self.metrics = metrics
        self.slow_metrics_every = slow_metrics_every
        self.compare_methods = tuple(compare_methods)
        self.regions = regions
        self.grid_k = grid_k
        self.deletion_steps = deletion_steps
        self.deletion_baseline = deletion_baseline
        self.log_images = log_images
        self.max_images = max_images
        self.mean = mean
        self.std = std
        self.forward_fn = forward_fn
        self.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self.on_error = on_error
        self.history: list[dict[str, Any]] = []
        self._last_step: int | None = None
        self._first_maps: torch.Tensor | None = None
        self._previous_maps: torch.Tensor | None = None
        self._probe: Probe | None = None
        self._evaluator: ProbeEvaluator | None = None
        self._sink: ImageSink | None = None

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build and check the probe against the model before the first training step."""
        if stage != "fit":
            return
        source = _val_dataloader(trainer) if self.probe_source == "val" else self.probe_source
        self._probe = build_probe(source, self.num_probe, self.regions)
        self._check_model(pl_module, self._probe)
        self.mean = self.mean or _timm_cfg(pl_module, "mean")
        self.std = self.std or _timm_cfg(pl_module, "std")
        self._evaluator = ProbeEvaluator(
            self._probe,
            engine=self.engine,
            metrics=self.metrics,
            compare_methods=self.compare_methods,
            target=self.target,
            grid_k=self.grid_k,
            deletion_steps=self.deletion_steps,
            deletion_baseline=self.deletion_baseline,
        )
        if self.snapshot_dir is None:
            self.snapshot_dir = Path(trainer.log_dir or trainer.default_root_dir) / "dave"
        self._sink = self._image_sink(trainer) if self.log_images else None

    def _check_model(self, pl_module: pl.LightningModule, probe: Probe) -> None:
        channels = input_channels(pl_module)
        if channels is not None and probe.images.shape[1] != channels:
            raise ValueError(
                f"probe images have {probe.images.shape[1]} channels but the model expects "
                f"{channels}; preprocess the probe like the training data"
            )
        model = self._logits_module(pl_module)
        device = next(pl_module.parameters(), torch.empty(0)).device
        was_training = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                logits = model(probe.images[:1].to(device))
        except Exception as error:
            raise ValueError(
                f"the model cannot take the probe images of shape "
                f"{tuple(probe.images.shape[1:])} ({type(error).__name__}: {error}); resize and "
                "normalise the probe like the training data, or pass forward_fn"
            ) from error
        finally:
            for module, flag in was_training:
                module.training = flag
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError(
                "the model's forward must return logits (B, classes); pass "
                "forward_fn=lambda module, images: <logits> to DAVEMonitor"
            )
        classes = logits.shape[1]
        if int(probe.labels.max()) >= classes or int(probe.labels.min()) < 0:
            raise ValueError(
                f"probe labels span [{int(probe.labels.min())}, {int(probe.labels.max())}] but "
                f"the model has {classes} classes; pass labels in [0, {classes - 1}]"
            )

    def _image_sink(self, trainer: pl.Trainer) -> ImageSink:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        png_dir = self.snapshot_dir / "png"
        if logger is None:
            rank_zero_warn(
                f"DAVEMonitor found no TensorBoardLogger; heatmaps go to {png_dir} as PNG files "
                "and scalars to the other loggers. Add lightning.pytorch.loggers."
                "TensorBoardLogger to see them in TensorBoard."
            )
        return ImageSink(None if logger is None else logger.experiment, png_dir)

    # --------------------------------------------------------------- schedule

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start and not self.history:
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step > 0 and step % self.every_n_train_steps == 0:
            self._evaluate(trainer, pl_module, last=0 < trainer.max_steps <= step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._evaluate(trainer, pl_module, last=_fit_ends_after_this_epoch(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end:
            self._evaluate(trainer, pl_module, last=True)
        if self._sink is not None and trainer.is_global_zero and self.history:
            self._guarded(trainer.global_step, self._log_progression, trainer.global_step)

    # ------------------------------------------------------------- evaluation

    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, last: bool = False
    ) -> None:
        """One evaluation at the current step (at most one per step); ``last``: of the fit."""
        step = trainer.global_step
        if self._evaluator is None or step == self._last_step:
            return
        self._guarded(step, self._run_evaluation, trainer, pl_module, last)

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
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, last: bool
    ) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        cuda = [pl_module.device] if pl_module.device.type == "cuda" else []
        slow_metrics = last or len(self.history) % self.slow_metrics_every == 0
        with torch.random.fork_rng(devices=cuda):
            evaluation = self._evaluator.evaluate(
                self._logits_module(pl_module), slow_metrics=slow_metrics
            )
        maps = evaluation.maps["dave"]
        if self._previous_maps is not None:
            evaluation.metrics.update(drift_metrics(maps, self._previous_maps, "previous"))
            evaluation.metrics.update(drift_metrics(maps, self._first_maps, "first"))
        if trainer.is_global_zero:
            self._publish(trainer, evaluation, step, epoch)
        self.history.append({"epoch": epoch, "global_step": step, "metrics": evaluation.metrics})
        self._last_step = step
        self._first_maps = maps if self._first_maps is None else self._first_maps
        self._previous_maps = maps

    def _publish(self, trainer: pl.Trainer, evaluation: Any, step: int, epoch: int) -> None:
        """Scalars to every logger, images to TensorBoard (or PNGs), a snapshot to disk."""
        scalars = {f"dave/{name}": value for name, value in evaluation.metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        if self._sink is not None:
            log_evaluation(self._sink, evaluation, self._images01(), step, self.max_images)
        settings = self._evaluator.settings()
        settings.update(mean=_plain(self.mean), std=_plain(self.std))
        save_snapshot(
            self.snapshot_dir,
            evaluation,
            epoch=epoch,
            global_step=step,
            settings=settings,
            labels=self._probe.labels,
            images=None if self.history else self._probe.images,
        )

    def _log_progression(self, step: int) -> None:
        maps_by_step = []
        for path in list_snapshots(self.snapshot_dir):
            record = load_snapshot(path)
            if record["settings"].get("probe_sha256") == self._probe.digest():
                maps_by_step.append((record["global_step"], record["maps"]))
        log_progression(self._sink, maps_by_step, self._images01(), step, self.max_images)

    def _images01(self) -> torch.Tensor:
        return viz.denormalize(self._probe.images, self.mean, self.std)

    def _logits_module(self, pl_module: pl.LightningModule) -> nn.Module:
        return (
            pl_module if self.forward_fn is None else _ForwardFnModule(pl_module, self.forward_fn)
        )

    # ----------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "last_step": self._last_step,
            "first_maps": self._first_maps,
            "previous_maps": self._previous_maps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self._last_step = state_dict["last_step"]
        self._first_maps = state_dict["first_maps"]
        self._previous_maps = state_dict["previous_maps"]


class _ForwardFnModule(nn.Module):
    """Wraps ``forward_fn(pl_module, images)`` as a module, so modes and flags reach the model."""

    def __init__(self, module: pl.LightningModule, forward_fn: ForwardFn) -> None:
        super().__init__()
        self.module = module
        self.forward_fn = forward_fn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_fn(self.module, images)


def _fit_ends_after_this_epoch(trainer: pl.Trainer) -> bool:
    """At an epoch's end: whether the fit stops now (max_epochs, max_steps or a stop request)."""
    max_epochs = trainer.max_epochs
    return (
        trainer.should_stop
        or (max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1)
        or 0 < trainer.max_steps <= trainer.global_step
    )


def _val_dataloader(trainer: pl.Trainer) -> DataLoader:
    """The first validation dataloader, wherever the user defined it."""
    source = trainer.fit_loop.epoch_loop.val_loop._data_source
    loaders = source.dataloader() if source.is_defined() else None
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if loaders is None:
        raise ValueError(
            "probe='val' needs a validation dataloader; pass val_dataloaders to trainer.fit, "
            "define val_dataloader(), or give DAVEMonitor a probe (images, labels[, masks])"
        )
    return loaders


def _timm_cfg(module: nn.Module, key: str) -> tuple[float, ...] | None:
    """Normalisation constants from a timm submodule's ``pretrained_cfg`` (for display)."""
    for submodule in module.modules():
        cfg = getattr(submodule, "pretrained_cfg", None)
        if isinstance(cfg, dict) and key in cfg:
            return tuple(float(v) for v in cfg[key])
    return None


def _plain(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]
