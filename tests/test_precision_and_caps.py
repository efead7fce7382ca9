"""Promises of the callback guide: half-precision training, reference noise levels, the memory
cap on every pass, and the slow metrics at the last evaluation of any schedule."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import timm
import torch
import torch.nn.functional as F
from lightning_fixtures import TinyClassifier, loader, random_data

from dave_lightning import DAVE, DAVEMonitor
from dave_lightning.snapshot import list_snapshots, load_snapshot

FAST = {"n_samples": 2, "deletion_steps": 4, "max_images": 1}
SLOW = ("stability_spearman", "grid_pg", "deletion_lerf_blur")


def fit(tmp_path: Path, monitor: DAVEMonitor, module: pl.LightningModule, **kwargs) -> None:
    pl.seed_everything(0, verbose=False)
    settings = {
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
    }
    trainer = pl.Trainer(callbacks=[monitor], **{**settings, **kwargs})
    trainer.fit(module, loader(16), loader(8, seed=1))


def cpu_supports(dtype: torch.dtype) -> bool:
    try:
        torch.nn.functional.linear(torch.ones(2, 2, dtype=dtype), torch.ones(2, 2, dtype=dtype))
    except RuntimeError:
        return False
    return True


class SGDClassifier(TinyClassifier):
    """Plain SGD: AdamW's eps underflows in float16 and turns the weights into NaN."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_pure_half_precision_training_gets_float32_maps_and_metrics(
    tmp_path: Path, precision: str
) -> None:
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float16
    if not cpu_supports(dtype):
        pytest.skip(f"this CPU's torch has no {dtype} matmul")
    module = SGDClassifier()
    monitor = DAVEMonitor(random_data(6), on_error="raise", **FAST)
    fit(tmp_path, monitor, module, precision=precision)
    assert [h["global_step"] for h in monitor.history] == [0, 2]
    metrics = monitor.history[-1]["metrics"]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if "drift" not in k)
    assert 0 < metrics["energy_pg"] < 1 and 0 < metrics["stability_spearman"] <= 1
    assert all(p.dtype == dtype for p in module.parameters())  # the weights stayed half


class TimmSmall(TinyClassifier):
    """A timm ViT-S/16 family model (the paper's reference noise level is 0.1)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = timm.create_model(
            "vit_small_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=5
        )


def test_reference_noise_alpha_through_the_lightning_module(tmp_path: Path) -> None:
    monitor = DAVEMonitor(random_data(4), noise_alpha=None, metrics=("gini",), **FAST)
    fit(tmp_path, monitor, TimmSmall())
    settings = load_snapshot(list_snapshots(monitor.snapshot_dir)[-1])["settings"]
    assert settings["engine"]["noise_alpha"] == 0.1
    assert len(monitor.history) == 2
    with pytest.raises(ValueError, match="noise_alpha=None needs a model whose family"):
        fit(tmp_path, DAVEMonitor(random_data(4), noise_alpha=None, **FAST), TinyClassifier())


class PassSizes(TinyClassifier):
    """Records the batch size of every forward pass outside training."""

    def __init__(self) -> None:
        super().__init__()
        self.eval_passes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.eval_passes.append(len(images))
        return super().forward(images)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        with torch.no_grad():
            F.cross_entropy(self.model(batch[0]), batch[1])  # not through forward


def test_batch_size_caps_every_model_pass_of_an_evaluation(tmp_path: Path) -> None:
    module = PassSizes()
    monitor = DAVEMonitor(
        random_data(8), batch_size=4, slow_metrics_every=1, compare_methods=(
            "input_x_gradient", "input_x_effective"
        ), n_samples=3, deletion_steps=4,
    )  # fmt: skip
    fit(tmp_path, monitor, module)
    assert "deletion_lerf_blur" in monitor.history[-1]["metrics"]  # every kind of pass ran
    assert len(module.eval_passes) > 20 and max(module.eval_passes) == 4


def test_the_last_evaluation_of_a_step_scheduled_fit_has_the_slow_metrics(
    tmp_path: Path,
) -> None:
    monitor = DAVEMonitor(
        random_data(6), every_n_train_steps=2, every_n_epochs=None, slow_metrics_every=5, **FAST
    )
    fit(tmp_path, monitor, TinyClassifier(), max_epochs=2)
    steps = [h["global_step"] for h in monitor.history]
    assert steps == [0, 2, 4]  # step 4 is the fit's last (max_epochs, not max_steps)
    assert not any(key in monitor.history[1]["metrics"] for key in SLOW)
    assert all(key in monitor.history[-1]["metrics"] for key in SLOW)


class _WeightsAtStart(pl.Callback):
    """Placed before the monitor: a copy of the module's weights as its step-0 evaluation sees
    them."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = copy.deepcopy(pl_module.state_dict())


def test_bf16_true_maps_are_dave_on_a_float32_copy_of_the_bf16_weights(tmp_path: Path) -> None:
    """The monitor attributes bf16 weights through exact float32 copies: its maps must be
    those of the public DAVE, with the monitor's settings, on a float32 model holding the
    same values, bit for bit (the same float32 operations in the same order)."""
    if not cpu_supports(torch.bfloat16):
        pytest.skip("this CPU's torch has no bfloat16 matmul")
    module, start = SGDClassifier(), _WeightsAtStart()
    monitor = DAVEMonitor(random_data(6), metrics=("gini",), on_error="raise", **FAST)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pl.seed_everything(0, verbose=False)
        pl.Trainer(
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=0,
            precision="bf16-true",
            callbacks=[start, monitor],
            logger=False,
            default_root_dir=tmp_path,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        ).fit(module, loader(16))
        records = [load_snapshot(path) for path in list_snapshots(monitor.snapshot_dir)]
        assert [record["global_step"] for record in records] == [0, 2]
        assert not torch.equal(records[0]["maps"], records[1]["maps"])  # training moved them
        for record, state in zip(records, (start.state, module.state_dict()), strict=True):
            assert all(value.dtype == torch.bfloat16 for value in state.values())
            float32 = TinyClassifier().eval()
            float32.load_state_dict({name: value.float() for name, value in state.items()})
            dave = DAVE(float32, n_samples=FAST["n_samples"], noise_alpha=0.5, seed=0)
            expected = dave.attribute(monitor.probe.images, monitor.probe.labels)
            assert torch.equal(record["maps"], expected), record["global_step"]
    finally:
        torch.set_num_threads(threads)


SLOW_KEYS = {
    "stability_pearson",
    "stability_spearman",
    "stability_topk_iou",
    "grid_pg",
    "deletion_lerf_blur",
    "deletion_morf_blur",
    "deletion_random_blur",
    "insertion_lerf_blur",
    "insertion_morf_blur",
    "insertion_random_blur",
}
DELETION_CURVES = {
    f"{method}/{kind}_{order}_blur"
    for kind in ("deletion", "insertion")
    for method, orders in (
        ("dave", ("lerf", "morf", "random")),
        ("input_x_gradient", ("lerf", "morf")),
    )
    for order in orders
}


class _StopAtStep(pl.Callback):
    """Placed after the monitor: stops the fit after ``step``'s batch, mid-epoch, once the
    monitor's evaluation of that step has run (it could not know it was the last)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        trainer.should_stop = trainer.global_step >= self.step


@pytest.mark.parametrize(
    ("schedule", "stop"),
    [
        ({"every_n_epochs": 0}, None),  # the last evaluation is at_end's own
        ({"every_n_epochs": None, "every_n_train_steps": 1}, 1),  # at_end completes step 1's
    ],
    ids=["at_end_evaluates", "at_end_completes"],
)
def test_the_end_of_fit_evaluation_has_every_slow_metric_and_curve(
    tmp_path: Path, schedule: dict, stop: int | None
) -> None:
    """Default metrics and masks, ``slow_metrics_every=5``: only the first and the last
    evaluation compute stability, grid_pg and deletion."""
    monitor = DAVEMonitor(random_data(6), slow_metrics_every=5, **schedule, **FAST)
    callbacks = [monitor] if stop is None else [monitor, _StopAtStep(stop)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pl.seed_everything(0, verbose=False)
        pl.Trainer(
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=0,
            callbacks=callbacks,
            logger=False,
            default_root_dir=tmp_path,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        ).fit(TinyClassifier(), loader(16))
    finally:
        torch.set_num_threads(threads)
    last_step = 2 if stop is None else stop
    assert [h["global_step"] for h in monitor.history] == [0, last_step]
    records = [load_snapshot(path) for path in list_snapshots(monitor.snapshot_dir)]
    assert [record["global_step"] for record in records] == [0, last_step]
    for metrics in (monitor.history[-1]["metrics"], records[-1]["metrics"]):
        assert set(metrics) >= SLOW_KEYS, SLOW_KEYS - set(metrics)
        assert "energy_pg" in metrics and "drift_first_spearman" in metrics  # kept, not replaced
    assert set(records[-1]["curves"]) == DELETION_CURVES
