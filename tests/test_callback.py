"""DAVEMonitor in real Lightning fits, read back through TensorBoard's own event reader."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import psutil
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning_fixtures import TinyClassifier, loader, random_data
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.utils import make_grid

from dave_lightning import DAVEMonitor, viz
from dave_lightning.snapshot import list_snapshots, load_snapshot

FAST = {"n_samples": 2, "deletion_steps": 8, "max_images": 2}
CHEAP_METRICS = ("energy_pg", "gini", "patch_artifact", "drift")


def fit(
    tmp_path: Path,
    callbacks: list[pl.Callback],
    *,
    epochs: int = 2,
    seed: int = 0,
    module: pl.LightningModule | None = None,
    **trainer_kwargs: object,
) -> tuple[pl.Trainer, pl.LightningModule]:
    pl.seed_everything(seed, verbose=False)
    module = module or TinyClassifier()
    settings: dict[str, object] = {
        "max_epochs": epochs,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "deterministic": True,
        "default_root_dir": tmp_path,
        "logger": TensorBoardLogger(tmp_path, name="run"),
    }
    trainer = pl.Trainer(callbacks=callbacks, **{**settings, **trainer_kwargs})
    trainer.fit(module, loader(24), loader(16, seed=1))
    return trainer, module


def events(log_dir: str | Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_fit_logs_scalars_images_and_snapshots_at_each_evaluation(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(8, seed=5), slow_metrics_every=5, **FAST)
    trainer, _ = fit(tmp_path, [monitor])
    accumulator = events(trainer.log_dir)
    images = accumulator.Tags()["images"]
    scalars = accumulator.Tags()["scalars"]
    for tag in (
        "dave/energy_pg",
        "dave/gini",
        "dave/patch_artifact",
        "dave/probe_accuracy",
        "dave/input_x_gradient/energy_pg",
    ):
        assert [event.step for event in accumulator.Scalars(tag)] == [0, 3, 6], tag
    # the slow metrics run at the first and the last evaluation (every 5th is not reached)
    for tag in (
        "dave/grid_pg",
        "dave/stability_spearman",
        "dave/deletion_lerf_blur",
        "dave/deletion_random_blur",
        "dave/input_x_gradient/deletion_morf_blur",
    ):
        assert [event.step for event in accumulator.Scalars(tag)] == [0, 6], tag
    assert "dave/input_x_gradient/deletion_random_blur" not in scalars  # one shared control
    assert [e.step for e in accumulator.Scalars("dave/drift_first_spearman")] == [3, 6]
    for tag in ("dave/probe/0", "dave/probe/1", "dave/probe_grid"):
        assert [event.step for event in accumulator.Images(tag)] == [0, 3, 6], tag
    assert [event.step for event in accumulator.Images("dave/deletion_curves")] == [0, 6]
    assert "dave/probe/2" not in images  # max_images=2
    (progression,) = accumulator.Images("dave/progression/0")
    assert progression.step == 6 and progression.width > progression.height
    energy = [event.value for event in accumulator.Scalars("dave/energy_pg")]
    assert energy == [entry["metrics"]["energy_pg"] for entry in monitor.history]
    paths = list_snapshots(Path(trainer.log_dir) / "dave")
    assert [p.name for p in paths] == ["step_00000000.pt", "step_00000003.pt", "step_00000006.pt"]
    # the run's first snapshot carries the probe images (for overlays in compare), no other
    assert torch.equal(load_snapshot(paths[0])["images"], monitor.probe.images)
    record = load_snapshot(paths[-1])
    assert "images" not in record
    assert record["maps"].shape == (8, 1, 32, 32)
    assert record["metrics"]["energy_pg"] == pytest.approx(energy[-1])
    assert record["epoch"] == 1 and record["global_step"] == 6
    assert len(record["settings"]["probe_sha256"]) == 64


def test_training_is_unchanged_by_the_monitor(tmp_path: Path) -> None:
    def run(callbacks: list[pl.Callback]) -> tuple[dict, dict]:
        trainer, module = fit(tmp_path, callbacks, epochs=2, logger=False)
        optimizer = trainer.optimizers[0].state_dict()
        return copy.deepcopy(module.state_dict()), copy.deepcopy(optimizer)

    weights, optimizer = run([])
    monitored_weights, monitored_optimizer = run(
        [DAVEMonitor(random_data(6, seed=2), every_n_train_steps=2, **FAST)]
    )
    assert weights.keys() == monitored_weights.keys()
    for name in weights:
        assert torch.equal(weights[name], monitored_weights[name]), name
    for key, state in optimizer["state"].items():
        for field, value in state.items():
            assert torch.equal(value, monitored_optimizer["state"][key][field]), (key, field)


def test_resume_continues_schedule_and_drift_reference(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    metrics = (*CHEAP_METRICS, "deletion")
    first = DAVEMonitor(random_data(6, seed=2), metrics=metrics, slow_metrics_every=3, **FAST)
    fit(tmp_path, [first, checkpoint], epochs=1, enable_checkpointing=True)
    assert [entry["global_step"] for entry in first.history] == [0, 3]

    resumed = DAVEMonitor(random_data(6, seed=2), metrics=metrics, slow_metrics_every=3, **FAST)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=4,
        limit_train_batches=3,
        limit_val_batches=1,
        callbacks=[resumed],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=TensorBoardLogger(tmp_path, name="resumed"),
    )
    trainer.fit(
        TinyClassifier(), loader(24), loader(16, seed=1), ckpt_path=checkpoint.last_model_path
    )
    assert [entry["global_step"] for entry in resumed.history] == [0, 3, 6, 9, 12]
    # slow metrics: the first evaluation, the last of each fit (steps 3 and 12), and every 3rd
    # counted across the resume (step 9, not step 6)
    slow = ["deletion_lerf_blur" in entry["metrics"] for entry in resumed.history]
    assert slow == [True, True, False, True, True]
    assert torch.equal(resumed.state_dict()["first_maps"], first.state_dict()["first_maps"])
    last = resumed.history[-1]["metrics"]
    assert 0 < last["drift_first_cosine"] < 1 and "drift_previous_cosine" in last


class _StopAfterFirstValidation(pl.Callback):
    """Asks the trainer to stop after the first validation, as EarlyStopping does."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = not trainer.sanity_checking


def test_a_stop_request_makes_that_evaluation_the_last_with_slow_metrics(tmp_path: Path) -> None:
    metrics = (*CHEAP_METRICS, "deletion")
    monitor = DAVEMonitor(random_data(6, seed=2), metrics=metrics, slow_metrics_every=5, **FAST)
    fit(tmp_path, [_StopAfterFirstValidation(), monitor], epochs=5, logger=False)
    assert [entry["global_step"] for entry in monitor.history] == [0, 3]
    assert all("deletion_lerf_blur" in entry["metrics"] for entry in monitor.history)


class _CountingClassifier(TinyClassifier):
    steps = 0

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        type(self).steps += 1
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("probe", "match"),
    [
        ((torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long)), "1 channels"),
        ((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 9])), "labels span"),
        ((torch.randn(0, 3, 32, 32), torch.zeros(0, dtype=torch.long)), "probe is empty"),
        (
            (
                torch.randn(4, 3, 32, 32),
                torch.zeros(4, dtype=torch.long),
                torch.ones(4, 16, 16) > 0,
            ),
            "masks have shape",
        ),
        ((torch.randn(4, 3, 40, 40), torch.zeros(4, dtype=torch.long)), "cannot take the probe"),
    ],
)
def test_bad_probe_fails_at_setup_before_training(tmp_path: Path, probe, match) -> None:
    _CountingClassifier.steps = 0
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, [DAVEMonitor(probe, **FAST)], module=_CountingClassifier(), logger=False)
    assert _CountingClassifier.steps == 0


def test_too_few_classes_for_the_grid_leaves_out_a_default_grid_pg_with_one_warning(
    tmp_path: Path,
) -> None:
    images, labels, masks = random_data(4)
    monitor = DAVEMonitor((images, labels % 2, masks), **FAST)
    with pytest.warns(UserWarning, match="leaves out grid_pg: grid_pg needs grid") as caught:
        fit(tmp_path, [monitor], epochs=1, logger=False)
    assert sum("leaves out" in str(w.message) for w in caught) == 1
    assert "grid_pg" not in monitor.history[-1]["metrics"]
    assert "gini" in monitor.history[-1]["metrics"]


def test_too_few_classes_for_a_grid_pg_asked_for_is_an_error_at_setup(tmp_path: Path) -> None:
    images, labels, masks = random_data(4)
    monitor = DAVEMonitor((images, labels % 2, masks), metrics=("grid_pg", "gini"), **FAST)
    with pytest.raises(ValueError, match="'grid_pg' needs grid: need images of at least 4"):
        fit(tmp_path, [monitor], epochs=1, logger=False)
    assert monitor.history == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"probe": "train"}, TypeError, "probe must be"),
        ({"num_probe": 0}, ValueError, "num_probe"),
        ({"target": "logit"}, ValueError, "target"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
        ({"metrics": ("accuracy",)}, ValueError, "unknown metrics"),
        ({"compare_methods": ("gradcam",)}, ValueError, "unknown compare_methods"),
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"every_n_train_steps": 0}, ValueError, "every_n_train_steps"),
        ({"mean": (0.5, 0.5)}, ValueError, "mean"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs, error, match) -> None:
    kwargs.setdefault("probe", random_data(4))
    with pytest.raises(error, match=match):
        DAVEMonitor(**kwargs)


class _FailingForward:
    """forward_fn that works for the setup check, then fails inside every evaluation."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module: pl.LightningModule, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("broken explainer")
        return module(images)


def test_failing_evaluation_warns_and_training_continues(tmp_path: Path) -> None:
    reference, module = fit(tmp_path, [], epochs=1, logger=False)
    monitor = DAVEMonitor(random_data(4), forward_fn=_FailingForward(), **FAST)
    with pytest.warns(UserWarning, match="broken explainer"):
        trainer, monitored = fit(tmp_path, [monitor], epochs=1)
    assert trainer.global_step == reference.global_step == 3
    assert monitor.history == []
    assert not [tag for tag in events(trainer.log_dir).Tags()["scalars"] if tag.startswith("dave/")]
    for name, value in module.state_dict().items():
        assert torch.equal(value, monitored.state_dict()[name])


def test_on_error_raise_stops_training(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(4), forward_fn=_FailingForward(), on_error="raise", **FAST)
    with pytest.raises(RuntimeError, match="broken explainer"):
        fit(tmp_path, [monitor], epochs=1, logger=False)


def test_val_probe_frozen_backbone_and_bf16(tmp_path: Path) -> None:
    module = TinyClassifier()
    module.model.blocks.requires_grad_(False)
    metrics = ("gini", "patch_artifact", "drift")  # the val loader has no masks
    monitor = DAVEMonitor("val", num_probe=5, metrics=metrics, **FAST)
    fit(tmp_path, [monitor], epochs=1, module=module, precision="bf16-mixed", logger=False)
    assert monitor.probe.images.shape == (5, 3, 32, 32)
    assert torch.equal(monitor.probe.images, loader(16, seed=1).dataset.tensors[0][:5])
    assert all(
        torch.isfinite(torch.tensor(list(h["metrics"].values()))).all() for h in monitor.history
    )
    assert not any(p.requires_grad for p in module.model.blocks.parameters())
    assert module.model.head.weight.requires_grad


def test_a_logger_without_images_gets_pngs_in_its_log_dir(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=CHEAP_METRICS, **FAST)
    logger = CSVLogger(tmp_path)
    with pytest.warns(UserWarning, match="CSVLogger cannot show images"):
        fit(tmp_path, [monitor], epochs=1, logger=logger)
    assert len(list_snapshots(monitor.snapshot_dir)) == 2
    images = Path(logger.log_dir) / "images"
    pngs = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    assert "step_00000000/dave_probe_0.png" in pngs
    assert "step_00000003/dave_progression_0.png" in pngs
    csv = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "dave/energy_pg" in csv


def test_repeated_evaluations_do_not_grow_memory(tmp_path: Path) -> None:
    class RecordMemory(pl.Callback):
        def __init__(self) -> None:
            self.rss: dict[int, int] = {}

        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            self.rss[trainer.global_step] = psutil.Process().memory_info().rss

    monitor = DAVEMonitor(
        random_data(4), every_n_train_steps=1, every_n_epochs=None, metrics=CHEAP_METRICS, **FAST
    )
    recorder = RecordMemory()
    fit(tmp_path, [monitor, recorder], epochs=30, max_steps=60)
    assert len(monitor.history) >= 51
    growth = recorder.rss[60] - recorder.rss[10]
    assert growth < 64 * 2**20, (
        f"resident memory grew by {growth / 2**20:.1f} MiB over 50 evaluations"
    )


def test_no_warnings_from_a_plain_fit(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(8, seed=5), metrics=CHEAP_METRICS, **FAST)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, [monitor], epochs=1)
    ours = [w for w in caught if "DAVEMonitor" in str(w.message) or "dave_lightning" in w.filename]
    assert ours == []


def test_metrics_gini_alone_logs_no_drift_and_reliability_every_time(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=("gini",), **FAST)
    trainer, _ = fit(tmp_path, [monitor])
    scalars = events(trainer.log_dir).Tags()["scalars"]
    assert not [tag for tag in scalars if "drift" in tag]
    steps = [e.step for e in events(trainer.log_dir).Scalars("dave/map_reliability")]
    assert steps == [h["global_step"] for h in monitor.history] == [0, 3, 6]
    record = load_snapshot(list_snapshots(monitor.snapshot_dir)[-1])
    assert record["reliability"].shape == (4,)
    assert record["metrics"]["map_reliability"] == pytest.approx(
        float(record["reliability"].nanmean())
    )


def test_tensorboard_gets_a_chart_layout_and_the_settings_as_hparams(tmp_path: Path) -> None:
    from tensorboard.plugins.custom_scalar import layout_pb2

    monitor = DAVEMonitor(random_data(4), metrics=("gini", "energy_pg"), **FAST)
    trainer, _ = fit(tmp_path, [monitor])
    accumulator = events(trainer.log_dir)
    (config,) = accumulator.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(config.tensor_proto.string_val[0])
    (category,) = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts["energy_pg"] == ["dave/energy_pg", "dave/input_x_gradient/energy_pg"]
    assert charts["map_reliability"] == ["dave/map_reliability"]
    hparams = (Path(trainer.log_dir) / "hparams.yaml").read_text()
    assert "dave/n_samples: 2" in hparams and "dave/metrics: gini, energy_pg" in hparams


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny models run faster so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_without_a_logger_the_pictures_are_pngs_under_the_snapshot_dir(tmp_path: Path) -> None:
    """docs/callback.md: no logger → ``<snapshot_dir>/png/step_<step:08d>/<tag, / as _>.png``."""
    monitor = DAVEMonitor(
        random_data(4, seed=5),
        metrics=("gini", "deletion"),
        n_samples=2,
        deletion_steps=4,
        max_images=2,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    fit(tmp_path / "root", [monitor], epochs=1, logger=False)
    assert [h["global_step"] for h in monitor.history] == [0, 3]
    per_evaluation = ["dave_probe_0", "dave_probe_1", "dave_probe_grid", "dave_deletion_curves"]
    expected = {
        "step_00000000": per_evaluation,
        "step_00000003": [*per_evaluation, "dave_progression_0", "dave_progression_1"],
    }
    png = Path(monitor.snapshot_dir) / "png"
    expected_paths = {png / step / f"{tag}.png" for step, tags in expected.items() for tag in tags}
    found = {*tmp_path.rglob("*.png"), *Path(monitor.snapshot_dir).rglob("*.png")}
    assert found == expected_paths  # these files, and no picture anywhere else
    # what the probe grid shows: the last evaluation's maps over the probe images
    record = load_snapshot(list_snapshots(monitor.snapshot_dir)[-1])
    images01 = viz.denormalize(monitor.probe.images, (0.5,) * 3, (0.25,) * 3)
    grid = make_grid(viz.overlay(images01, record["maps"]), nrow=8, padding=2)
    written = np.array(Image.open(png / "step_00000003" / "dave_probe_grid.png"))
    assert torch.equal(torch.from_numpy(written).permute(2, 0, 1), viz.to_uint8(grid))
