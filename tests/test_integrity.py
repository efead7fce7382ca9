"""Nothing lost, nothing mixed, nothing silent (docs/callback.md, "Where snapshots go" and
"What the monitor guarantees"): one run, one snapshot folder; an evaluation is published whole
or not at all; every gap in what the probe and options allow is an error before the first
training step, or one warning when the user did not ask for the metric."""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning_fixtures import TinyClassifier, loader, random_data
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dave_lightning.snapshot as snapshot_module
from dave_lightning import DAVE, DAVEMonitor
from dave_lightning.compare import compare_snapshots
from dave_lightning.snapshot import list_snapshots, load_snapshot

FAST = {"n_samples": 2, "deletion_steps": 4, "max_images": 1}
CHEAP = ("gini", "patch_artifact", "drift")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StepCounter(pl.Callback):
    """Counts the optimizer steps a fit took, and whether it got past setup (``started``)."""

    def __init__(self) -> None:
        self.steps = 0
        self.started = False

    def on_fit_start(self, *args: Any) -> None:
        self.started = True

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps += 1


def fit(
    root: Path,
    callbacks: list[pl.Callback],
    *,
    epochs: int = 1,
    module: pl.LightningModule | None = None,
    train: DataLoader | None = None,
    ckpt_path: str | None = None,
    **overrides: Any,
) -> tuple[pl.Trainer, pl.LightningModule]:
    pl.seed_everything(0, verbose=False)
    module = module or TinyClassifier()
    settings: dict[str, Any] = {
        "max_epochs": epochs,
        "limit_train_batches": 2,
        "limit_val_batches": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "default_root_dir": root,
        "accelerator": "cpu",
    }
    trainer = pl.Trainer(callbacks=callbacks, **{**settings, **overrides})
    trainer.fit(module, train or loader(16), ckpt_path=ckpt_path)
    return trainer, module


def digest_tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# ===================================================================== one run, one folder


def test_two_fits_in_one_root_without_a_logger_keep_all_their_snapshots(tmp_path: Path) -> None:
    first = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    fit(tmp_path, [first])
    before = digest_tree(first.snapshot_dir)
    second = DAVEMonitor(random_data(4, seed=3), metrics=CHEAP, **FAST)
    fit(tmp_path, [second])
    assert first.snapshot_dir != second.snapshot_dir
    assert first.snapshot_dir.parent == second.snapshot_dir.parent == tmp_path / "dave"
    assert digest_tree(first.snapshot_dir) == before  # the first run's files are untouched
    for monitor in (first, second):
        records = [load_snapshot(p) for p in list_snapshots(monitor.snapshot_dir)]
        assert [r["global_step"] for r in records] == [0, 2]
        assert {r["settings"]["probe_sha256"] for r in records} == {monitor.probe.digest()}


def test_two_wandb_runs_with_one_save_dir_get_a_folder_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folders = []
    for seed in (0, 1):
        monitor = DAVEMonitor(random_data(4, seed=seed), metrics=CHEAP, log_images=False, **FAST)
        logger = WandbLogger(save_dir=str(tmp_path), project="p", offline=True)
        fit(tmp_path, [monitor], logger=logger)
        logger.experiment.finish()
        folders.append(monitor.snapshot_dir)
        assert monitor.snapshot_dir == tmp_path / "dave" / logger.version
    assert folders[0] != folders[1]
    for folder in folders:
        assert len(list_snapshots(folder)) == 2


def test_an_explicit_snapshot_dir_holding_another_run_is_refused_at_setup(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    fit(tmp_path, [DAVEMonitor(random_data(4), metrics=CHEAP, snapshot_dir=folder, **FAST)])
    before = digest_tree(folder)
    counter = StepCounter()
    second = DAVEMonitor(random_data(4), metrics=CHEAP, snapshot_dir=folder, **FAST)
    with pytest.raises(OSError, match="holds the snapshots of another run; pass a new"):
        fit(tmp_path, [counter, second])
    assert not counter.started and digest_tree(folder) == before


def test_a_default_folder_holding_another_run_gives_way_to_a_sibling(tmp_path: Path) -> None:
    """A logger told to reuse a version (one log dir for two runs) gets two snapshot folders."""
    folders = []
    for seed in (0, 1):
        monitor = DAVEMonitor(random_data(4, seed=seed), metrics=CHEAP, **FAST)
        logger = TensorBoardLogger(tmp_path, name="run", version=0)
        fit(tmp_path, [monitor], logger=logger)
        folders.append(monitor.snapshot_dir)
    log_dir = tmp_path / "run" / "version_0"
    assert folders == [log_dir / "dave", log_dir / "dave-1"]
    for folder, seed in zip(folders, (0, 1), strict=True):
        records = [load_snapshot(p) for p in list_snapshots(folder)]
        assert [r["global_step"] for r in records] == [0, 2]
        digest = DAVEMonitor(random_data(4, seed=seed)).probe.digest()
        assert {r["settings"]["probe_sha256"] for r in records} == {digest}


def checkpointed_run(root: Path, **monitor: Any) -> tuple[DAVEMonitor, str]:
    """A one-epoch fit with a monitor and a checkpoint at its end."""
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    first = DAVEMonitor(random_data(4), metrics=CHEAP, **{**FAST, **monitor})
    fit(root, [first, checkpoint], enable_checkpointing=True)
    return first, checkpoint.last_model_path


def test_resume_with_changed_settings_overwrites_nothing(tmp_path: Path) -> None:
    first, checkpoint = checkpointed_run(tmp_path)
    before = digest_tree(first.snapshot_dir)
    changed = DAVEMonitor(random_data(4), metrics=CHEAP, **{**FAST, "n_samples": 3})
    with pytest.warns(UserWarning, match="start afresh, in a new snapshot folder"):
        fit(tmp_path, [changed], epochs=2, ckpt_path=checkpoint)
    assert changed.snapshot_dir != first.snapshot_dir
    assert digest_tree(first.snapshot_dir) == before
    assert [h["global_step"] for h in changed.history] == [2, 4]
    assert [load_snapshot(p)["global_step"] for p in list_snapshots(changed.snapshot_dir)] == [
        2,
        4,
    ]


def test_resume_from_a_checkpoint_without_the_monitor_overwrites_nothing(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    earlier = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    fit(tmp_path, [earlier])  # a monitored run in the same root
    fit(tmp_path, [checkpoint], enable_checkpointing=True)  # the checkpoint has no monitor
    before = digest_tree(earlier.snapshot_dir)
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    fit(tmp_path, [monitor], epochs=2, ckpt_path=checkpoint.last_model_path)
    assert monitor.snapshot_dir != earlier.snapshot_dir
    assert digest_tree(earlier.snapshot_dir) == before


def test_resume_with_a_versioned_logger_continues_in_the_original_folder(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    logger = TensorBoardLogger(tmp_path, name="run")
    fit(tmp_path, [first, checkpoint], logger=logger, enable_checkpointing=True)
    assert first.snapshot_dir == tmp_path / "run" / "version_0" / "dave"

    resumed = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    logger = TensorBoardLogger(tmp_path, name="run")
    fit(tmp_path, [resumed], epochs=3, logger=logger, ckpt_path=checkpoint.last_model_path)
    assert logger.version == 1 and resumed.snapshot_dir == first.snapshot_dir
    assert not (tmp_path / "run" / "version_1" / "dave").exists()
    comparison = compare_snapshots([tmp_path / "run" / "version_0"])
    assert [e.evaluation.global_step for e in comparison.entries] == [0, 2, 4, 6]
    assert comparison.images01 is not None  # the run's first snapshot carries the probe


# ================================================================ all or nothing per evaluation


class ReplaceFolderWithFile(pl.Callback):
    """After the first evaluation, the snapshot folder becomes a file."""

    def __init__(self, monitor: DAVEMonitor) -> None:
        self.monitor = monitor

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = self.monitor.snapshot_dir
        shutil.rmtree(folder)
        folder.write_text("not a folder")


def csv_steps(logger: CSVLogger, tag: str) -> list[int]:
    """The steps of the rows that hold ``tag`` in the logger's CSV file (none without one)."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get(tag)]


def test_a_snapshot_folder_replaced_by_a_file_publishes_nothing(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    logger = CSVLogger(tmp_path)
    with pytest.warns(UserWarning, match="was replaced by a file") as caught:
        trainer, _ = fit(tmp_path, [ReplaceFolderWithFile(monitor), monitor], logger=logger)
    failures = [w for w in caught if "nothing of it was logged" in str(w.message)]
    assert len(failures) == 2  # steps 0 and 2
    assert monitor.history == [] and not any(
        k.startswith("dave/") for k in trainer.callback_metrics
    )
    assert csv_steps(logger, "dave/gini") == []
    images = Path(logger.log_dir) / "images"
    assert not images.exists() or not any(images.rglob("*.png"))


def test_a_full_disk_publishes_nothing_leaves_no_partial_file_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    logger = CSVLogger(tmp_path)
    real_write = snapshot_module._write_file

    def full_disk_at_step_2(path: Path, data: memoryview) -> None:
        if "00000002" not in path.name:
            return real_write(path, data)
        with path.open("wb") as handle:
            handle.write(data[: len(data) // 2])  # half the bytes reach the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(snapshot_module, "_write_file", full_disk_at_step_2)
    with pytest.warns(UserWarning, match="No space left on device"):
        fit(tmp_path, [monitor], logger=logger)
    assert [h["global_step"] for h in monitor.history] == [0]
    assert csv_steps(logger, "dave/gini") == [0]
    assert sorted(p.name for p in monitor.snapshot_dir.iterdir()) == [
        "run.json",
        "step_00000000.pt",
    ]
    images = Path(logger.log_dir) / "images"
    assert (images / "step_00000000" / "dave_probe_0.png").exists()
    assert not (images / "step_00000002" / "dave_probe_0.png").exists()


def test_a_picture_that_cannot_be_written_takes_back_the_whole_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dave_lightning.sinks.png as png_module

    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    logger = CSVLogger(tmp_path)
    real_save = png_module.viz.save_png

    def full_disk_at_the_grid_of_step_2(image: torch.Tensor, path: Path) -> None:
        real_save(image, path)  # the file is written, then the disk is full
        if path.parent.name == "step_00000002" and path.name == "dave_probe_grid.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(png_module.viz, "save_png", full_disk_at_the_grid_of_step_2)
    with pytest.warns(UserWarning, match="No space left on device"):
        fit(tmp_path, [monitor], logger=logger)
    assert [h["global_step"] for h in monitor.history] == [0]
    assert csv_steps(logger, "dave/gini") == [0]
    assert [p.name for p in list_snapshots(monitor.snapshot_dir)] == ["step_00000000.pt"]
    step_2 = Path(logger.log_dir) / "images" / "step_00000002"
    assert not any(p.name.startswith("dave_probe") for p in step_2.glob("*.png"))


def test_a_snapshot_folder_deleted_mid_run_is_made_again_with_the_probe(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)

    class DeleteFolder(pl.Callback):
        def on_train_start(self, *args: Any) -> None:
            shutil.rmtree(monitor.snapshot_dir)

    with pytest.warns(UserWarning, match="was deleted during the run"):
        fit(tmp_path, [monitor, DeleteFolder()])
    records = [load_snapshot(p) for p in list_snapshots(monitor.snapshot_dir)]
    assert [r["global_step"] for r in records] == [2]
    assert torch.equal(records[0]["images"], monitor.probe.images)


def test_an_unwritable_snapshot_dir_is_an_error_at_setup(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    counter = StepCounter()
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, snapshot_dir=blocker / "dave", **FAST)
    with pytest.raises(OSError, match=f"cannot write snapshots to {blocker / 'dave'}"):
        fit(tmp_path, [counter, monitor])
    assert not counter.started


def test_fast_dev_run_writes_no_snapshots_or_pngs(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    fit(tmp_path, [monitor], fast_dev_run=True)
    assert monitor.history  # it evaluated
    assert not any(tmp_path.rglob("*.pt")) and not any(tmp_path.rglob("*.png"))


# =============================================================================== weights at end


def test_the_end_evaluation_sees_the_averaged_weights_of_swa(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    swa = StochasticWeightAveraging(swa_lrs=0.5, swa_epoch_start=1)
    _, module = fit(tmp_path, [monitor, swa], epochs=3)
    last = load_snapshot(list_snapshots(monitor.snapshot_dir)[-1])
    assert last["global_step"] == 6
    module.eval()
    with torch.no_grad():
        probabilities = module(monitor.probe.images).softmax(1).amax(1)
    torch.testing.assert_close(last["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
    # and it is not the last epoch's model: SWA changed the weights after the last batch
    assert len(monitor.history) == 4


# ======================================================================= setup checks (gaps)


def test_a_metric_asked_for_without_its_inputs_is_a_setup_error(tmp_path: Path) -> None:
    images, labels, _ = random_data(4)
    counter = StepCounter()
    monitor = DAVEMonitor((images, labels), metrics=("energy_pg",), **FAST)
    with pytest.raises(ValueError, match=r"energy_pg' needs masks: pass object masks .*masks\)"):
        fit(tmp_path, [counter, monitor])
    assert not counter.started


def test_default_metrics_without_inputs_are_left_out_with_one_warning(tmp_path: Path) -> None:
    images, labels, _ = random_data(4)
    monitor = DAVEMonitor((images, labels), **FAST)
    with pytest.warns(UserWarning, match="leaves out energy_pg: energy_pg needs masks") as caught:
        fit(tmp_path, [monitor])
    assert sum("leaves out" in str(w.message) for w in caught) == 1
    assert "energy_pg" not in monitor.history[-1]["metrics"]


def test_a_checkpoint_on_a_key_the_monitor_never_logs_is_a_setup_error(tmp_path: Path) -> None:
    images, labels, _ = random_data(4)
    counter = StepCounter()
    checkpoint = ModelCheckpoint(monitor="dave/energy_pg", mode="max")
    with pytest.raises(ValueError, match="energy_pg needs masks: pass object masks"):
        fit(
            tmp_path,
            [counter, DAVEMonitor((images, labels), **FAST), checkpoint],
            enable_checkpointing=True,
        )
    assert not counter.started


def test_early_stopping_before_the_first_evaluation_is_a_setup_error(tmp_path: Path) -> None:
    stop = EarlyStopping(monitor="dave/gini", mode="max", patience=5)
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, every_n_epochs=2, at_start=False)
    counter = StepCounter()
    with pytest.raises(ValueError, match="pass at_start=True"):
        fit(tmp_path, [counter, monitor, stop], epochs=2)
    assert not counter.started


def test_early_stopping_between_evaluations_sees_the_last_value(tmp_path: Path) -> None:
    stop = EarlyStopping(monitor="dave/gini", mode="max", patience=5)
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, every_n_epochs=2, **FAST)
    trainer, _ = fit(tmp_path, [monitor, stop], epochs=3)
    assert [h["global_step"] for h in monitor.history] == [0, 4, 6]
    assert trainer.current_epoch == 3  # no "metric not available" on the odd epochs


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("nan", r"probe images hold NaN or Inf values \(items 2\)"),
        ("empty mask", r"masks of probe images 1 mark no pixel"),
        ("full mask", r"masks of probe images 3 mark every pixel"),
    ],
)
def test_bad_probe_values_are_setup_errors(tmp_path: Path, change: str, match: str) -> None:
    images, labels, masks = random_data(4)
    if change == "nan":
        images[2, 0, 5, 5] = float("nan")
    elif change == "empty mask":
        masks[1] = False
    else:
        masks[3] = True
    with pytest.raises(ValueError, match=match):
        DAVEMonitor((images, labels, masks), **FAST)


def test_a_probe_the_model_cannot_patchify_is_refused_at_setup(tmp_path: Path) -> None:
    import timm

    class Padding(TinyClassifier):
        """A ViT whose patch embedding pads 36 px images to 40 (a dynamic-padding ViT)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = timm.create_model(
                "vit_tiny_patch16_224",
                img_size=32,
                patch_size=8,
                depth=2,
                embed_dim=32,
                num_heads=2,
                num_classes=5,
                dynamic_img_size=True,
                dynamic_img_pad=True,
            )

    images, labels, masks = random_data(4)
    images = torch.nn.functional.interpolate(images, size=36)
    masks = torch.nn.functional.interpolate(masks[:, None].float(), size=36)[:, 0] > 0.5
    monitor = DAVEMonitor((images, labels, masks), metrics=("patch_artifact",), **FAST)
    counter = StepCounter()
    with pytest.raises(ValueError, match=r"size \(36, 36\) is not a multiple of .* patch size 8"):
        fit(tmp_path, [counter, monitor], module=Padding())
    assert not counter.started


def test_dave_refuses_nan_inputs_with_a_clear_error() -> None:
    from tiny_models import timm_vit

    images = torch.randn(3, 3, 32, 32)
    images[1, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"images hold NaN or Inf values \(items 1\)"):
        DAVE(timm_vit().eval(), n_samples=2).attribute(images, 0)


def test_a_zero_head_warns_once_and_drift_starts_from_the_first_real_maps(
    tmp_path: Path,
) -> None:
    class ZeroHead(TinyClassifier):
        def __init__(self) -> None:
            super().__init__(lr=0.05)
            torch.nn.init.zeros_(self.model.head.weight)
            torch.nn.init.zeros_(self.model.head.bias)

    monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
    with pytest.warns(UserWarning, match="every DAVE map at step 0 is zero") as caught:
        fit(tmp_path, [monitor], epochs=3, module=ZeroHead())
    assert sum("is zero" in str(w.message) for w in caught) == 1
    assert "drift_first_spearman" not in monitor.history[1]["metrics"]
    assert torch.isfinite(torch.tensor(monitor.history[2]["metrics"]["drift_first_spearman"]))


# ================================================================================= the probe


def test_a_loader_probe_goes_through_its_collate_fn(tmp_path: Path) -> None:
    images, labels, masks = random_data(6)
    dataset = TensorDataset(images, labels, masks)

    def collate(items: list) -> tuple[torch.Tensor, ...]:
        batch = torch.utils.data.default_collate(items)
        return batch[0] * 2 - 1, batch[1], batch[2]  # the loader normalises

    probe_loader = DataLoader(dataset, batch_size=4, collate_fn=collate)
    monitor = DAVEMonitor(probe_loader, num_probe=5, metrics=CHEAP, **FAST)
    expected = torch.cat([batch[0] for batch in probe_loader])[:5]
    assert torch.equal(monitor.probe.images, expected)


class PilImages(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.new("RGB", (32, 32)), index


def test_pil_probe_items_are_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match="probe items are PIL images; give the dataset"):
        DAVEMonitor(PilImages(), **FAST)
    with pytest.raises(TypeError, match="PIL images that the loader's collate_fn cannot batch"):
        DAVEMonitor(DataLoader(PilImages(), batch_size=2), **FAST)


def test_a_longer_tuple_probe_is_truncated_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="holds 6 images; the first num_probe=4 are used"):
        monitor = DAVEMonitor(random_data(6), num_probe=4, **FAST)
    assert len(monitor.probe) == 4


def test_early_stopping_records_the_epoch_each_evaluation_ran_in(tmp_path: Path) -> None:
    class StopAfterEpochOne(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            trainer.should_stop = trainer.current_epoch == 1

    monitor = DAVEMonitor(
        random_data(4), metrics=CHEAP, every_n_epochs=0, every_n_train_steps=3, **FAST
    )
    fit(tmp_path, [monitor, StopAfterEpochOne()], epochs=5)
    recorded = [(h["global_step"], h["epoch"]) for h in monitor.history]
    assert recorded == [(0, 0), (3, 1), (4, 1)]  # the end evaluation ran after epoch 1


# ============================================================================ extension points


@pytest.fixture
def registered() -> Any:
    """Registers specs for a test and removes them after it."""
    from dave_lightning.metrics.registry import METRICS, register_metric

    names: list[str] = []

    def add(spec: Any) -> None:
        register_metric(spec)
        names.append(spec.name)

    yield add
    for name in names:
        del METRICS[name]


def test_a_registered_metric_gets_the_drift_references_and_grid_it_needs(
    tmp_path: Path, registered: Any
) -> None:
    from dave_lightning.metrics import MetricSpec, MetricValues

    def moved(inputs: Any) -> MetricValues:
        previous = inputs.references["previous"]
        return MetricValues({"moved": (inputs.maps - previous).abs().flatten(1).mean(1)})

    def cells(inputs: Any) -> MetricValues:
        return MetricValues({"cells": inputs.grid.cells.float()})

    registered(MetricSpec("moved", moved, needs=frozenset({"references"}), dave_only=True))
    registered(MetricSpec("cells", cells, needs=frozenset({"grid"}), unit="grid", slow=True))
    monitor = DAVEMonitor(random_data(8), metrics=("moved", "cells"), **FAST)
    fit(tmp_path, [monitor], epochs=2)
    first, second = monitor.history[0]["metrics"], monitor.history[1]["metrics"]
    assert "moved" not in first and second["moved"] > 0  # from the second evaluation on
    assert first["cells"] == pytest.approx(1.5)  # the mean cell index of 2×2 grids


def test_a_curve_metric_named_without_underscores_is_drawn(tmp_path: Path, registered: Any) -> None:
    from dave_lightning.metrics import CurveFigure, ItemCurve, MetricSpec, MetricValues

    def sweep(inputs: Any) -> MetricValues:
        x = torch.linspace(0, 1, 3)
        values = inputs.maps.flatten(1).mean(1, keepdim=True) * x
        return MetricValues({"sweep": values[:, -1]}, {"sweep": ItemCurve(x, values, "mean")})

    registered(MetricSpec("sweep", sweep, figure=CurveFigure("Sweep", "x", "y")))
    monitor = DAVEMonitor(random_data(4), metrics=("sweep",), **FAST)
    fit(tmp_path, [monitor])
    assert [h["global_step"] for h in monitor.history] == [0, 2]
    record = load_snapshot(list_snapshots(monitor.snapshot_dir)[-1])
    assert record["curves"]["dave/sweep"]["label"] == "mean"
    assert (monitor.snapshot_dir / "png" / "step_00000002" / "dave_deletion_curves.png").exists()


def test_a_sink_for_a_logger_subclass_wins_over_its_base_class(tmp_path: Path) -> None:
    from dave_lightning.sinks import SINKS, ImageSink, register_sink

    tags: list[str] = []

    class Recording(ImageSink):
        def __init__(self, logger: TensorBoardLogger) -> None:
            self.logger = logger

        def log_image(self, tag: str, image: torch.Tensor, step: int, caption: Any = None) -> None:
            tags.append(tag)

    class MyTensorBoard(TensorBoardLogger):
        pass

    register_sink(MyTensorBoard, Recording)
    try:
        monitor = DAVEMonitor(random_data(4), metrics=CHEAP, **FAST)
        fit(tmp_path, [monitor], logger=MyTensorBoard(tmp_path, name="mine"))
    finally:
        del SINKS[MyTensorBoard]
    assert "dave/probe/0" in tags


def test_registering_a_taken_name_is_refused_unless_replace() -> None:
    from lightning.fabric.loggers import TensorBoardLogger as FabricTensorBoardLogger

    from dave_lightning.attribution import METHODS, register_method
    from dave_lightning.metrics import MetricSpec
    from dave_lightning.metrics.registry import METRICS, register_metric
    from dave_lightning.models import FAMILIES, register_family
    from dave_lightning.models.timm_family import TimmFamily
    from dave_lightning.sinks import SINKS, register_sink

    builtin_gini, builtin_method = METRICS["gini"], METHODS["input_x_gradient"]
    with pytest.raises(ValueError, match=r"'gini' is already registered; .* replace=True"):
        register_metric(MetricSpec("gini", lambda inputs: None))
    with pytest.raises(ValueError, match="'input_x_gradient' is already registered"):
        register_method("input_x_gradient", lambda model, batch_size: None)
    with pytest.raises(ValueError, match="'timm' is already registered"):
        register_family(TimmFamily())
    with pytest.raises(ValueError, match="TensorBoardLogger has a sink already"):
        register_sink(FabricTensorBoardLogger, lambda logger: None)
    assert METRICS["gini"] is builtin_gini and METHODS["input_x_gradient"] is builtin_method
    timm_families = [family for family in FAMILIES if family.name == "timm"]
    replacement = register_family(TimmFamily(), replace=True)
    assert [family for family in FAMILIES if family.name == "timm"] == [replacement]
    assert len(timm_families) == 1
    assert len(SINKS) >= 4
