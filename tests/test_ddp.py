"""DDP-sharded evaluations on 2 CPU processes: each rank attributes its share of the probe,
the results are gathered, rank 0 publishes; a failure on one rank skips the evaluation on all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dave_lightning.snapshot import list_snapshots, load_snapshot

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_fixtures import TinyClassifier, loader, random_data
from dave_lightning import DAVEMonitor

class Counting(TinyClassifier):
    '''Counts the images its forward sees in eval mode (the monitor's passes), per step.'''

    def __init__(self):
        super().__init__(lr=0.05)
        self.counts, self.fail_at = {{}}, None

    def forward(self, images):
        if not self.training:
            step = str(self.trainer.global_step)
            self.counts[step] = self.counts.get(step, 0) + len(images)
            if self.fail_at == self.trainer.global_step and self.trainer.global_rank == 1:
                raise RuntimeError("rank 1 failed")
        return super().forward(images)

pl.seed_everything(0)
module = Counting()
module.fail_at = {fail_at}
monitor = DAVEMonitor(random_data(7), n_samples=2, deletion_steps=4, max_images=1,
                      slow_metrics_every=1)
checkpoint = ModelCheckpoint(dirpath={out!r} + "/ckpt", monitor="dave/energy_pg", mode="max")
trainer = pl.Trainer(accelerator="cpu", devices={devices}, strategy={strategy!r}, max_epochs=2,
                     limit_train_batches=2, callbacks=[checkpoint, monitor], log_every_n_steps=1,
                     enable_progress_bar=False, enable_model_summary=False,
                     logger=TensorBoardLogger({out!r}, name="run", version=0))
trainer.fit(module, loader(32))
print("RESULT", json.dumps({{
    "rank": trainer.global_rank,
    "steps": [h["global_step"] for h in monitor.history],
    "energy": [h["metrics"]["energy_pg"] for h in monitor.history],
    "counts": module.counts,
    "best_score": float(checkpoint.best_model_score),
    "best_step": torch.load(checkpoint.best_model_path, weights_only=False)["global_step"],
}}))
"""


def run(tmp_path: Path, devices: int, fail_at: int | None = None) -> dict[int, dict]:
    out = tmp_path / f"devices_{devices}_fail_{fail_at}"
    script = out / "fit.py"
    script.parent.mkdir(parents=True)
    strategy = "ddp" if devices > 1 else "auto"
    tests = str(Path(__file__).parent)
    script.write_text(
        SCRIPT.format(
            tests=tests, out=str(out), devices=devices, strategy=strategy, fail_at=fail_at
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    results = [json.loads(line.removeprefix("RESULT ")) for line in lines]
    return {result["rank"]: result | {"dir": out, "stderr": done.stderr} for result in results}


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run(tmp_path_factory.mktemp("single"), devices=1)[0]


def test_each_rank_attributes_its_share_and_rank_0_publishes_the_whole(
    single: dict, tmp_path: Path
) -> None:
    ranks = run(tmp_path, devices=2)
    assert set(ranks) == {0, 1}
    for rank in ranks.values():
        assert rank["steps"] == single["steps"] == [0, 2, 4]
        for step, count in single["counts"].items():
            # 7 images: shares of 4 and 3 (+1 padding), the grid's 4 items as 2 + 2
            assert rank["counts"][step] <= 0.6 * count, (step, rank["counts"][step], count)
    maps = load_snapshot(list_snapshots(ranks[0]["dir"] / "run" / "version_0" / "dave")[0])
    reference = load_snapshot(list_snapshots(single["dir"] / "run" / "version_0" / "dave")[0])
    assert maps["global_step"] == 0 and maps["maps"].shape == (7, 1, 32, 32)
    torch.testing.assert_close(maps["maps"], reference["maps"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ranks[1]["energy"], ranks[0]["energy"])  # both ranks agree
    # ModelCheckpoint on a DAVE metric works under DDP: the best epoch-end evaluation is kept
    epoch_ends = dict(zip(ranks[0]["steps"][1:], ranks[0]["energy"][1:], strict=True))
    best_step = max(epoch_ends, key=epoch_ends.get)
    assert ranks[0]["best_step"] == best_step
    assert ranks[0]["best_score"] == pytest.approx(epoch_ends[best_step])


def test_a_failure_on_one_rank_skips_that_evaluation_on_both(tmp_path: Path) -> None:
    ranks = run(tmp_path, devices=2, fail_at=2)
    assert ranks[0]["steps"] == ranks[1]["steps"] == [0, 4]  # step 2 skipped on both
    assert "evaluation at step 2 failed and was skipped" in ranks[0]["stderr"]
    snapshots = list_snapshots(ranks[0]["dir"] / "run" / "version_0" / "dave")
    assert [load_snapshot(p)["global_step"] for p in snapshots] == [0, 4]
