"""DAVEMonitor's state the Lightning way: several monitors per Trainer, resume, probe changes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_fixtures import TinyClassifier, loader, random_data

from dave_lightning import DAVEMonitor

FAST = {"n_samples": 2, "deletion_steps": 4, "max_images": 1, "metrics": ("gini", "drift")}


def trainer(tmp_path: Path, callbacks: list[pl.Callback], epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=tmp_path,
    )


def fit_and_checkpoint(tmp_path: Path, monitors: list[DAVEMonitor]) -> str:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    pl.seed_everything(0, verbose=False)
    trainer(tmp_path, [*monitors, checkpoint], epochs=1).fit(
        TinyClassifier(), loader(16), loader(8, seed=1)
    )
    return checkpoint.last_model_path


def resume(tmp_path: Path, monitors: list[DAVEMonitor], checkpoint: str) -> None:
    pl.seed_everything(0, verbose=False)
    trainer(tmp_path / "resumed", monitors, epochs=2).fit(
        TinyClassifier(), loader(16), loader(8, seed=1), ckpt_path=checkpoint
    )


def test_two_monitors_checkpoint_and_resume_independently(tmp_path: Path) -> None:
    val = DAVEMonitor("val", num_probe=4, **FAST)
    hard = DAVEMonitor(random_data(4, seed=7), name="dave_hard", **FAST)
    assert val.state_key != hard.state_key
    checkpoint = fit_and_checkpoint(tmp_path, [val, hard])
    assert [h["global_step"] for h in val.history] == [0, 2]
    assert [h["global_step"] for h in hard.history] == [0, 2]
    assert val.history[-1]["metrics"] != hard.history[-1]["metrics"]

    # a fresh Trainer, monitors listed in the other order: each gets back its own history
    val_again = DAVEMonitor("val", num_probe=4, **FAST)
    hard_again = DAVEMonitor(random_data(4, seed=7), name="dave_hard", **FAST)
    resume(tmp_path, [hard_again, val_again], checkpoint)
    assert val_again.history[:2] == val.history
    assert [h["global_step"] for h in val_again.history] == [0, 2, 4]
    assert hard_again.history[:2] == hard.history
    assert [h["global_step"] for h in hard_again.history] == [0, 2, 4]
    assert torch.equal(val_again.state_dict()["first_maps"], val.state_dict()["first_maps"])
    assert torch.equal(hard_again.state_dict()["first_maps"], hard.state_dict()["first_maps"])


def test_same_name_twice_is_refused_at_setup(tmp_path: Path) -> None:
    monitors = [DAVEMonitor(random_data(4), **FAST), DAVEMonitor(random_data(4, seed=1), **FAST)]
    with pytest.raises(ValueError, match="give each its own name"):
        trainer(tmp_path, monitors, epochs=1).fit(TinyClassifier(), loader(16))


@pytest.mark.parametrize("probe", ["val", "tuple"])
def test_a_changed_probe_restarts_the_history_with_a_warning(tmp_path: Path, probe: str) -> None:
    def monitor(seed: int) -> DAVEMonitor:
        source = "val" if probe == "val" else random_data(4, seed=seed)
        return DAVEMonitor(source, num_probe=4, **FAST)

    first = monitor(seed=0)
    checkpoint = fit_and_checkpoint(tmp_path, [first])
    resumed = monitor(seed=1)
    pl.seed_everything(0, verbose=False)
    fit = trainer(tmp_path / "resumed", [resumed], epochs=2)
    val = loader(8, seed=2 if probe == "val" else 1)  # another val set: another "val" probe
    with pytest.warns(UserWarning, match=r"the probe differs from the checkpoint's \(probe_sha256"):
        fit.fit(TinyClassifier(), loader(16), val, ckpt_path=checkpoint)
    assert [h["global_step"] for h in resumed.history] == [2, 4]  # afresh from the resume point
    assert not any(key.startswith("drift") for key in resumed.history[0]["metrics"])
    assert fit.global_step == 4  # the fit went on


def test_a_checkpoint_of_the_first_version_still_loads(tmp_path: Path) -> None:
    """Version 1 stored one monitor's state under the class name, without probe or settings."""
    first = DAVEMonitor(random_data(4), **FAST)
    checkpoint = fit_and_checkpoint(tmp_path, [first])
    state = torch.load(checkpoint, weights_only=False)
    (key,) = [k for k in state["callbacks"] if k.startswith("DAVEMonitor")]
    old = state["callbacks"].pop(key)
    state["callbacks"]["DAVEMonitor"] = {
        name: old[name] for name in ("history", "last_step", "first_maps", "previous_maps")
    }
    legacy = tmp_path / "legacy.ckpt"
    torch.save(state, legacy)
    resumed = DAVEMonitor(random_data(4), **FAST)
    resume(tmp_path, [resumed], str(legacy))
    assert resumed.history[:2] == first.history
    assert torch.equal(resumed.state_dict()["first_maps"], first.state_dict()["first_maps"])


def test_state_dict_round_trip() -> None:
    state = DAVEMonitor(random_data(4)).state_dict()
    state.update(
        history=[{"epoch": 0, "global_step": 5, "metrics": {"gini": 0.5}, "slow": True}],
        last_step=5,
        first_maps=torch.rand(4, 1, 32, 32),
        previous_maps=torch.rand(4, 1, 32, 32),
    )
    restored = DAVEMonitor(random_data(4))
    restored.load_state_dict(copy.deepcopy(state))
    again = restored.state_dict()
    assert again["history"] == state["history"] and again["last_step"] == 5
    assert torch.equal(again["first_maps"], state["first_maps"])
    assert torch.equal(again["previous_maps"], state["previous_maps"])
    assert again["run_id"] == state["run_id"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny models run faster so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_monitors_differing_only_in_name_resume_their_own_histories(tmp_path: Path) -> None:
    """Same probe and settings, other names and schedules: the name alone keeps them apart."""

    def monitors() -> list[DAVEMonitor]:
        probe = random_data(4, seed=7)
        return [
            DAVEMonitor(probe, name="dave_epochs", **FAST),
            DAVEMonitor(
                probe, name="dave_steps", every_n_epochs=None, every_n_train_steps=1, **FAST
            ),
        ]

    by_epoch, by_step = monitors()
    assert by_epoch.state_key != by_step.state_key
    checkpoint = fit_and_checkpoint(tmp_path, [by_epoch, by_step])
    assert [h["global_step"] for h in by_epoch.history] == [0, 2]
    assert [h["global_step"] for h in by_step.history] == [0, 1, 2]
    by_epoch_again, by_step_again = monitors()
    resume(tmp_path, [by_step_again, by_epoch_again], checkpoint)
    assert by_epoch_again.history[:2] == by_epoch.history
    assert [h["global_step"] for h in by_epoch_again.history] == [0, 2, 4]
    assert by_step_again.history[:3] == by_step.history
    assert [h["global_step"] for h in by_step_again.history] == [0, 1, 2, 3, 4]
