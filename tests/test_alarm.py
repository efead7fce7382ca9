"""The region alarm (docs/reading.md, "The region alarm") on real fits of a model whose maps
concentrate in a known region from a known epoch on.

From epoch ``from_epoch`` on, the model sees only its two top 8 × 8 corner patches (every other
pixel is zeroed before the patch embedding), so DAVE's maps put their mass there; before, its
maps spread over the image. The region ``corners`` is those two patches (both, because DAVE's
transformations include horizontal flips, which swap them); ``bottom`` is the two bottom corner
patches, which the model never reads from then on: the control. Each region holds 1/8 of the
pixels, so at the default ``alert_ratio`` of 1 the alarm needs the lower bound of a region's
attribution share above 0.125: more than a uniform map would put there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_fixtures import TinyClassifier, loader, random_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dave_lightning import DAVEMonitor
from dave_lightning.evaluation import Evaluation
from dave_lightning.monitor import ProbeMonitor
from dave_lightning.monitor.alarms import pixel_shares
from dave_lightning.probe import Probe

PATCH = 8
PIXEL_SHARE = 2 * PATCH * PATCH / (32 * 32)  # of each region: 0.125
BATCHES = 2  # training batches per epoch
FAST = {"n_samples": 2, "metrics": ("energy_pg",), "compare_methods": (), "log_images": False}


class CornerReader(TinyClassifier):
    """The tiny ViT classifier; from epoch ``from_epoch`` on it reads only its top corners."""

    def __init__(self, from_epoch: int) -> None:
        super().__init__()
        self.from_epoch = from_epoch
        self.corners_only = False
        self.model.patch_embed.register_forward_pre_hook(self._keep_corners)

    def _keep_corners(
        self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor] | None:
        if not self.corners_only:
            return None
        return (args[0] * corners(args[0].shape[-1]),)

    def on_train_epoch_start(self) -> None:
        self.corners_only = self.current_epoch >= self.from_epoch


def corners(size: int, top: bool = True) -> torch.Tensor:
    """Bool (size, size): the two top (or bottom) PATCH × PATCH corner squares."""
    rows = slice(0, PATCH) if top else slice(size - PATCH, size)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[rows, :PATCH] = mask[rows, size - PATCH :] = True
    return mask


def probe_and_regions(n: int = 16) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    regions = {
        "corners": corners(32).expand(n, 32, 32).clone(),
        "bottom": corners(32, top=False).expand(n, 32, 32).clone(),
    }
    return random_data(n), regions


def monitor() -> DAVEMonitor:
    probe, regions = probe_and_regions()
    return DAVEMonitor(probe, regions=regions, **FAST)


def fit(
    root: Path,
    model: CornerReader,
    callbacks: list[pl.Callback],
    epochs: int,
    logger: object = False,
) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        default_root_dir=root,  # where the snapshots go without a logger
        max_epochs=epochs,
        limit_train_batches=BATCHES,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader(16))
    return trainer


def test_the_alarm_is_raised_where_the_maps_concentrate_and_never_on_the_control(
    tmp_path: Path,
) -> None:
    torch.set_num_threads(1)
    watcher = monitor()
    logger = TensorBoardLogger(tmp_path, name="alarm", version=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, CornerReader(from_epoch=1), [watcher], epochs=3, logger=logger)

    # evaluations before training and after epochs 0, 1, 2; the model reads the corners in 1, 2
    steps = [0, 2, 4, 6]
    assert [entry["global_step"] for entry in watcher.history] == steps
    raised = [False, False, True, True]
    assert [entry["alerts"] for entry in watcher.history] == [
        {"corners": fired, "bottom": False} for fired in raised
    ]
    for entry, fired in zip(watcher.history, raised, strict=True):
        low = entry["intervals"]["region_corners"][0]
        assert (low > 1.0 * PIXEL_SHARE) == fired  # the alarm's own rule
        assert entry["metrics"]["alert/corners"] == float(fired)

    accumulator = EventAccumulator(str(logger.log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    logged = {
        region: [(event.step, event.value) for event in accumulator.Scalars(f"dave/alert/{region}")]
        for region in ("corners", "bottom")
    }
    assert logged == {
        "corners": [(step, float(fired)) for step, fired in zip(steps, raised, strict=True)],
        "bottom": [(step, 0.0) for step in steps],
    }

    alarms = [str(w.message) for w in caught if "region alarm" in str(w.message)]
    assert len(alarms) == 1  # one warning, at the first evaluation that raised it
    assert "region alarm 'corners' at step 4" in alarms[0]
    assert "more than 1 × the region's 0.125 share of the pixels" in alarms[0]


def test_early_stopping_on_the_alarm_stops_the_fit_at_the_evaluation_where_it_fires(
    tmp_path: Path,
) -> None:
    torch.set_num_threads(1)
    watcher = monitor()
    stop = EarlyStopping(
        monitor="dave/alert/corners", mode="min", divergence_threshold=0.5, patience=10
    )
    trainer = fit(tmp_path, CornerReader(from_epoch=2), [watcher, stop], epochs=10)

    # evaluations before training and after epochs 0, 1, 2: the alarm fires after epoch 2
    assert [entry["alerts"]["corners"] for entry in watcher.history] == [False] * 3 + [True]
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * BATCHES
    assert stop.stopped_epoch == 2


def test_the_alarm_needs_the_lower_bound_not_the_mean_above_the_ratio(tmp_path: Path) -> None:
    """The same maps, judged at three ratios: the threshold above the interval's lower bound
    but below the mean raises nothing; just under the lower bound it raises the alarm."""
    torch.set_num_threads(1)
    model = CornerReader(from_epoch=0)
    model.corners_only = True
    probe, regions = probe_and_regions()

    def evaluate(ratio: float) -> Evaluation:
        watcher = ProbeMonitor(probe, regions=regions, alert_ratio=ratio, **FAST)
        watcher.setup(model, root=tmp_path, writes=False)
        return watcher.evaluate(model, step=0)

    first = evaluate(2.0)
    assert first.alerts == {"corners": True, "bottom": False}
    share, (low, _) = first.metrics["region_corners"], first.intervals["region_corners"]
    assert low < share
    between = (low + share) / 2 / PIXEL_SHARE  # the mean is above the threshold, the bound not
    assert evaluate(between).alerts == {"corners": False, "bottom": False}
    assert evaluate(0.99 * low / PIXEL_SHARE).alerts == {"corners": True, "bottom": False}


def test_a_regions_pixel_share_counts_only_the_images_it_is_in() -> None:
    """A 4 × 4 square of an 8 × 8 image (1/4 of its pixels) in two of four probe images: the
    threshold is set against 1/4, the share of the images whose attribution share has a value,
    not against 1/8 (the mean over all four)."""
    region = torch.zeros(4, 8, 8, dtype=torch.bool)
    region[:2, :4, :4] = True
    probe = Probe(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), regions={"r": region})
    assert pixel_shares(probe) == {"r": 0.25}
