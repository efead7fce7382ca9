"""DAVETrainerCallback in real HuggingFace ``Trainer`` fits of a tiny random-init ViT: scalars and
pictures in TensorBoard, the ``dave/…`` values in ``state.log_history`` and in HF's evaluation
metrics (``metric_for_best_model``), snapshots that compare reads, a probe batched by the
Trainer's data collator, and training left bitwise unchanged."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from hf_models import hf_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from dave_lightning.compare import compare_snapshots
from dave_lightning.integrations.transformers import DAVETrainerCallback
from dave_lightning.snapshot import list_snapshots, load_snapshot

# at_start, the HF evaluation at step 3, the end of the first epoch (4 steps), the HF evaluation
# and the end of training at step 6
STEPS = [0, 3, 4, 6]


class RawImages(Dataset):
    """Items ``{"pixel_values": (3, 32, 32) in [0, 1], "labels"}``: the collator normalises."""

    def __init__(self, length: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(length, 3, 32, 32, generator=generator)
        self.labels = torch.arange(length) % 5

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The Trainer's data collator: stacks and normalises with mean = std = 0.5."""
    images = torch.stack([item["pixel_values"] for item in items])
    return {
        "pixel_values": (images - 0.5) / 0.5,
        "labels": torch.stack([i["labels"] for i in items]),
    }


def train(out: Path, callback: DAVETrainerCallback | None) -> Trainer:
    """6 optimizer steps (epochs of 4) with an HF evaluation every 3, from seeded weights, with
    dropout (training draws from the global RNG)."""
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=6,
        per_device_train_batch_size=4,
        eval_strategy="steps",
        eval_steps=3,
        metric_for_best_model="dave/grid_pg" if callback else None,
        save_strategy="no",
        report_to=["tensorboard"],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=hf_model("vit", hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2),
        args=args,
        data_collator=collate,
        train_dataset=RawImages(16, seed=0),
        eval_dataset=RawImages(8, seed=1),
        callbacks=[callback] if callback else None,
    )
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("hf")
    callback = DAVETrainerCallback(
        RawImages(8, seed=1), num_probe=6, n_samples=2, deletion_steps=4, max_images=1
    )
    printed = io.StringIO()
    with pytest.warns(UserWarning, match="energy_pg needs masks"), redirect_stdout(printed):
        watched = train(out / "watched", callback)
    return {
        "printed": printed.getvalue(),
        "out": out / "watched",
        "callback": callback,
        "watched": watched,
        "plain": train(out / "plain", None),
    }


def dave_runs(out: Path) -> list[EventAccumulator]:
    """The TensorBoard runs under ``<out>/runs`` that hold DAVE's scalars."""
    found = []
    for folder in sorted(p for p in (out / "runs").iterdir() if p.is_dir()):
        accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        if "dave/gini" in accumulator.Tags()["scalars"]:
            found.append(accumulator)
    return found


def test_scalars_and_pictures_reach_tensorboard(fits: dict) -> None:
    (run,) = dave_runs(fits["out"])
    gini = run.Scalars("dave/gini")
    assert [event.step for event in gini] == STEPS
    recorded = [h["metrics"]["gini"] for h in fits["callback"].history]
    assert [event.value for event in gini] == pytest.approx(recorded)
    assert {"dave/probe/0", "dave/probe_grid", "dave/progression/0"} <= set(run.Tags()["images"])


def test_log_history_holds_the_values_at_the_evaluation_steps(fits: dict) -> None:
    entries = [e for e in fits["watched"].state.log_history if "dave/gini" in e]
    assert [entry["step"] for entry in entries] == STEPS
    history = fits["callback"].history
    assert [entry["dave/gini"] for entry in entries] == [h["metrics"]["gini"] for h in history]
    assert [h["global_step"] for h in history] == STEPS
    assert [h["epoch"] for h in history] == [0, 0, 0, 1]  # 0-based; step 4 ends epoch 0


def test_metric_for_best_model_selects_on_the_dave_metric(fits: dict) -> None:
    """HF looks ``dave/grid_pg`` up as ``eval_dave/grid_pg`` in the metrics of its evaluations
    (steps 3 and 6; greater is better). The slow grid_pg is computed at the first and the last
    evaluation only (steps 0 and 6): the HF evaluation at step 3 sees the value of step 0."""
    history = fits["callback"].history
    by_step = {h["global_step"]: h["metrics"].get("grid_pg") for h in history}
    assert by_step[3] is None and None not in (by_step[0], by_step[6])
    assert fits["watched"].state.best_metric == max(by_step[0], by_step[6])
    assert fits["watched"].evaluate()["eval_dave/grid_pg"] == by_step[6]


def test_snapshots_go_to_the_output_dir_and_compare_reads_them(fits: dict) -> None:
    assert fits["callback"].snapshot_dir == fits["out"] / "dave"
    comparison = compare_snapshots([fits["callback"].snapshot_dir])
    assert [entry.evaluation.global_step for entry in comparison.entries] == STEPS


def test_the_eval_dataset_probe_is_batched_by_the_trainers_collator(fits: dict) -> None:
    first = load_snapshot(list_snapshots(fits["callback"].snapshot_dir)[0])
    dataset = RawImages(8, seed=1)
    expected = collate([dataset[i] for i in range(6)])
    torch.testing.assert_close(first["images"], expected["pixel_values"], atol=0, rtol=0)
    assert first["labels"].tolist() == expected["labels"].tolist()


def test_training_is_bitwise_unchanged(fits: dict) -> None:
    watched = fits["watched"].model.state_dict()
    plain = fits["plain"].model.state_dict()
    assert watched.keys() == plain.keys()
    assert all(torch.equal(watched[key], plain[key]) for key in watched)


def test_the_cost_is_said_once_against_the_trainers_training(fits: dict) -> None:
    """One setup line: 16 images in batches of 4 are 16 image-passes per epoch of 4 steps, and
    max_steps=6 makes the fit (at_start, the first epoch's end, the last step)."""
    lines = [
        line
        for line in fits["printed"].splitlines()
        if line.startswith("DAVEMonitor 'dave': an evaluation runs")
    ]
    assert len(lines) == 1
    assert "of an epoch of training" in lines[0]
    assert "of the fit at this schedule (3 evaluations" in lines[0]
