"""Every probe-mean metric of an evaluation carries its interval: in the history, the snapshot,
the scalars of every logger and a TensorBoard margin chart (docs/reading.md, "Reading an
interval")."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_fixtures import TinyClassifier, loader, random_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from dave_lightning import DAVEMonitor
from dave_lightning.core.uncertainty import mean_interval
from dave_lightning.snapshot import list_snapshots, load_snapshot

FAST = {"n_samples": 2, "deletion_steps": 4, "max_images": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A one-epoch fit with every default metric, masks and a region, logged to TensorBoard."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("intervals")
    images, labels, masks = random_data(6)
    corner = torch.zeros_like(masks)
    corner[:, :8, :8] = True
    monitor = DAVEMonitor((images, labels, masks), regions={"corner": corner}, **FAST)
    logger = TensorBoardLogger(root, name="run")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[monitor],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(TinyClassifier(), loader(16))
    torch.set_num_threads(threads)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {"monitor": monitor, "events": events, "trainer": trainer}


def probe_means(metrics: dict[str, float]) -> set[str]:
    """The metrics that are means over probe items (not the alarms' 0/1 flags, nor the
    monitor's time shares)."""
    return {key for key in metrics if not key.startswith(("alert/", "time_share"))}


def test_every_probe_mean_in_the_history_has_an_interval_around_it(run: dict[str, Any]) -> None:
    history = run["monitor"].history
    assert [entry["global_step"] for entry in history] == [0, 2]
    for entry in history:
        metrics, intervals = entry["metrics"], entry["intervals"]
        assert set(intervals) == probe_means(metrics), entry["global_step"]
        for key, (low, high) in intervals.items():
            assert low <= metrics[key] <= high, (key, low, metrics[key], high)
    assert {"energy_pg", "input_x_gradient/energy_pg", "grid_pg", "deletion_lerf_blur"} <= set(
        history[0]["intervals"]
    )


def test_the_interval_is_the_t_interval_of_the_snapshots_per_item_values(
    run: dict[str, Any],
) -> None:
    record = load_snapshot(list_snapshots(run["monitor"].snapshot_dir)[-1])
    for key in ("energy_pg", "gini", "grid_pg", "region_corner"):
        low, high = mean_interval(record["values"][key], 0.95)
        assert record["intervals"][key] == pytest.approx([low, high])


def test_bounds_are_scalars_of_every_logger_and_in_callback_metrics(run: dict[str, Any]) -> None:
    events, history = run["events"], run["monitor"].history
    for bound, index in (("low", 0), ("high", 1)):
        scalars = events.Scalars(f"dave/energy_pg/{bound}")
        assert [s.step for s in scalars] == [0, 2]
        expected = [entry["intervals"]["energy_pg"][index] for entry in history]
        assert [s.value for s in scalars] == pytest.approx(expected)
    assert float(run["trainer"].callback_metrics["dave/gini/high"]) == pytest.approx(
        history[-1]["intervals"]["gini"][1]
    )


def test_the_tensorboard_layout_has_a_margin_chart_per_probe_mean(run: dict[str, Any]) -> None:
    events = run["events"]
    content = events.PluginTagToContent("custom_scalars")
    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors(next(iter(content)))[0].tensor_proto.string_val[0])
    margins = {
        tuple((s.value, s.lower, s.upper) for s in chart.margin.series)
        for category in layout.category
        for chart in category.chart
        if chart.HasField("margin")
    }
    for key in probe_means(run["monitor"].history[-1]["metrics"]):
        tag = f"dave/{key}"
        assert ((tag, f"{tag}/low", f"{tag}/high"),) in margins, key
