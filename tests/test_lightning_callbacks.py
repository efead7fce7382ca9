"""DAVE's metrics drive Lightning's own callbacks: ModelCheckpoint and EarlyStopping."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning_fixtures import TinyClassifier, loader, random_data

from dave_lightning import DAVEMonitor

FAST = {"n_samples": 2, "metrics": ("energy_pg", "gini"), "log_images": False}


def fit(tmp_path: Path, callbacks: list[pl.Callback], with_val: bool, epochs: int) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyClassifier(lr=0.05), loader(16), loader(8, seed=1) if with_val else None)
    return trainer


@pytest.mark.parametrize("with_val", [True, False])
def test_model_checkpoint_keeps_the_checkpoint_of_the_best_explanations(
    tmp_path: Path, with_val: bool
) -> None:
    monitor = DAVEMonitor(random_data(6), at_start=False, **FAST)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="dave/energy_pg", mode="max", save_top_k=1
    )
    fit(tmp_path, [checkpoint, monitor], with_val, epochs=4)  # the checkpoint listed first
    values = [h["metrics"]["energy_pg"] for h in monitor.history]
    steps = [h["global_step"] for h in monitor.history]
    assert steps == [2, 4, 6, 8] and len(set(values)) == 4
    best = max(range(4), key=values.__getitem__)
    assert float(checkpoint.best_model_score) == pytest.approx(values[best])
    kept = torch.load(checkpoint.best_model_path, weights_only=False)
    assert kept["global_step"] == steps[best]


@pytest.mark.parametrize("with_val", [True, False])
def test_early_stopping_on_a_dave_metric_stops_the_run(tmp_path: Path, with_val: bool) -> None:
    monitor = DAVEMonitor(random_data(6), **FAST)
    stop = EarlyStopping(monitor="dave/gini", mode="max", stopping_threshold=0.0)
    trainer = fit(tmp_path, [stop, monitor], with_val, epochs=5)  # listed before the monitor
    assert trainer.global_step == 2 and trainer.current_epoch == 1  # stopped after one epoch
    assert trainer.callback_metrics["dave/gini"] == pytest.approx(
        monitor.history[-1]["metrics"]["gini"]
    )


def test_a_checkpoint_on_a_slow_metric_is_warned_about(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(6), **{**FAST, "metrics": ("stability",)})
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="dave/stability_spearman", mode="max")
    with pytest.warns(UserWarning, match=r"computes only at the first, every 3-th and the last"):
        fit(tmp_path, [monitor, checkpoint], with_val=False, epochs=1)
