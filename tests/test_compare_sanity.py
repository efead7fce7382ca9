"""``compare --sanity``: the model-randomization check of DAVE and each compared method.

Runs ``main`` in-process, so that a method registered here (a constant map, blind to the
model) is a compared method of the command.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from cli_fixtures import assert_usage_error, call_cli, fit_checkpoints, synthetic_probe, write_run
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dave_lightning.attribution import METHODS, register_method
from dave_lightning.metrics.sanity import SANITY_THRESHOLD

FAST = ("--n-samples", "2", "--num-probe", "4", "--quiet")
METHODS_COMPARED = ("input_x_gradient", "constant_map")


@pytest.fixture(autouse=True, scope="module")
def _threads() -> None:
    torch.set_num_threads(1)


class ConstantMap:
    """A "method" that ignores the model and the image: the same map whatever the weights."""

    def attribute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(images), 1, *images.shape[-2:], device=images.device)


@pytest.fixture
def constant_map() -> Iterator[str]:
    register_method("constant_map", lambda model, batch_size: ConstantMap())
    yield "constant_map"
    METHODS.pop("constant_map")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return fit_checkpoints(tmp_path_factory.getbasetemp() / "checkpoints")


def test_sanity_writes_csv_png_and_names_the_failing_method(
    constant_map: str,
    checkpoints: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The cascade runs on the last checkpoint; the constant map fails at every step; the
    values at full cascade are the ``sanity/<method>`` metrics of that evaluation."""
    args = ("compare", "--checkpoints", *checkpoints, "--module", "cli_fixtures:TinyLit")
    code, stderr = call_cli(
        capsys,
        *args,
        "--sanity",
        "--compare-methods",
        *METHODS_COMPARED,
        "--metrics",
        "gini",
        "sanity",
        *FAST,
        "--out",
        tmp_path,
    )
    assert code == 0, stderr
    rows = list(csv.DictReader((tmp_path / "sanity.csv").open()))
    assert [(row["method"], row["step"]) for row in rows] == [
        (method, step)
        for method in ("dave", *METHODS_COMPARED)
        for step in ("head", "block 2", "block 1")
    ]
    assert {row["evaluation"] for row in rows} == {"epoch=0-step=2"}
    by_method = {row["method"]: row for row in rows}  # the last row: full cascade
    for row in rows:
        if row["method"] == constant_map:
            assert (row["spearman"], row["topk_iou"], row["check"]) == ("1", "1", "fail")
    evaluations = json.loads((tmp_path / "metrics.json").read_text())["evaluations"]
    last = evaluations[-1]["metrics"]
    for method, row in by_method.items():
        assert float(row["spearman"]) == pytest.approx(last[f"sanity/{method}"], abs=1e-5)
        assert float(row["topk_iou"]) == pytest.approx(last[f"sanity/{method}/topk_iou"], abs=1e-5)
        failed = float(row["spearman"]) > SANITY_THRESHOLD
        assert row["check"] == ("fail" if failed else "pass"), method
    assert Image.open(tmp_path / "sanity.png").size == (800, 320)
    report = (tmp_path / "metrics.md").read_text()
    section = report[report.index("## Sanity check") :]
    failing = [m for m, row in by_method.items() if row["check"] == "fail"]
    assert f"Fails the check: {', '.join(f'`{m}`' for m in failing)}." in section
    assert "| `constant_map` | 1.0000 | 1.0000 | fail |" in section
    for number, evaluation in enumerate(evaluations):  # the sanity/<method> metrics' verdicts
        values = evaluation["metrics"]
        methods = ("dave", *METHODS_COMPARED)
        failing = [f"`{m}`" for m in methods if values[f"sanity/{m}"] > SANITY_THRESHOLD]
        assert f"- #{number}: fails: {', '.join(failing)}\n" in section


def test_snapshot_mode_refuses_sanity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "run", (0,), synthetic_probe())
    code, stderr = call_cli(capsys, "compare", run, "--sanity", "--out", tmp_path / "report")
    assert_usage_error(code, stderr, "--sanity", "snapshots hold no model", "--checkpoints")
    assert not (tmp_path / "report").exists()


PLAIN_SIZE = 32


class PlainLit(pl.LightningModule):
    """A patch-embedding convolution and a linear head: no transformer blocks to randomize."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.Linear(4 * 16, 4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_model_without_blocks_is_refused_before_any_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = TensorDataset(torch.zeros(4, 3, PLAIN_SIZE, PLAIN_SIZE), torch.arange(4))
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(PlainLit(), DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    args = ("compare", "--checkpoints", tmp_path / "plain.ckpt", "--module", __name__ + ":PlainLit")
    options = ("--sanity", "--image-size", str(PLAIN_SIZE), "--metrics", "gini", *FAST)
    code, stderr = call_cli(capsys, *args, *options, "--out", tmp_path / "report")
    assert_usage_error(code, stderr, "--sanity re-initialises", "cannot find them in PlainLit")
    assert not (tmp_path / "report").exists()
