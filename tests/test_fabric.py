"""FabricMonitor in real Fabric loops: under bf16-mixed in this process, under DDP on 2 CPU
processes. It logs through Fabric's loggers, writes snapshots that compare reads, evaluates the
unwrapped float32 module, shards the probe like the Trainer path, and leaves training bitwise
unchanged."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from fabric_fixtures import OPTIONS, PROBE_SIZE, Counting, fit, same_weights
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger, TensorBoardLogger
from lightning_fixtures import random_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dave_lightning import ProbeMonitor
from dave_lightning.compare import compare_snapshots
from dave_lightning.integrations.fabric import FabricMonitor
from dave_lightning.snapshot import list_snapshots, load_snapshot

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from fabric_fixtures import OPTIONS, PROBE_SIZE, fit, same_weights
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger, TensorBoardLogger
from lightning_fixtures import random_data
from dave_lightning.integrations.fabric import FabricMonitor

def main(fabric):
    plain = fit(fabric, watched=False, items=32)
    watched = fit(fabric, watched=True, items=32)
    print("RESULT", json.dumps({{
        "rank": fabric.global_rank,
        "steps": [h["global_step"] for h in monitor.history],
        "energy": [h["metrics"]["energy_pg"] for h in monitor.history],
        "counts": watched.counts,
        "unchanged": same_weights(plain, watched),
    }}), flush=True)

# DDP whose processes are forked from this one (imported once): the DDP strategy and collectives
monitor = FabricMonitor(random_data(PROBE_SIZE), **OPTIONS)
fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_fork", callbacks=[monitor],
                loggers=TensorBoardLogger({out!r}, name="run", version=0))
fabric.launch(main)
"""


def reference(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, int]]:
    """DAVE's maps of the probe by one float32 process, and the images its passes took."""
    monitor = ProbeMonitor(random_data(PROBE_SIZE), **OPTIONS)
    monitor.setup(model, writes=False)
    maps = monitor.evaluate(model, step=0).maps["dave"]
    return maps, model.counts


@pytest.fixture(scope="module")
def bf16_fits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bf16")
    fits = {}
    for watched in (False, True):
        monitor = FabricMonitor(random_data(PROBE_SIZE), **OPTIONS)
        fabric = Fabric(
            accelerator="cpu",
            devices=1,
            precision="bf16-mixed",
            callbacks=[monitor],
            loggers=[
                TensorBoardLogger(out / f"watched_{watched}", name="run", version=0),
                CSVLogger(out / f"csv_{watched}", name="run", version=0),
            ],
        )
        printed = io.StringIO()
        with redirect_stdout(printed):
            fits[watched] = (fit(fabric, watched), monitor, printed.getvalue())
    return {
        "printed": fits[True][2],
        "plain": fits[False][0],
        "watched": fits[True][0],
        "monitor": fits[True][1],
        "csv": out / "csv_True" / "run" / "version_0",
    }


def test_bf16_mixed_training_is_bitwise_unchanged(bf16_fits: dict) -> None:
    assert bf16_fits["monitor"].history  # it did evaluate
    assert same_weights(bf16_fits["plain"], bf16_fits["watched"])


def test_scalars_and_pictures_reach_fabrics_logger(bf16_fits: dict) -> None:
    monitor = bf16_fits["monitor"]
    log_dir = monitor.snapshot_dir.parent  # the snapshot folder is <log_dir>/dave
    assert log_dir.name == "version_0" and monitor.snapshot_dir.name == "dave"
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    energy = accumulator.Scalars("dave/energy_pg")
    assert [event.step for event in energy] == [0, 2, 4]  # at_start, then every epoch's end
    recorded = [h["metrics"]["energy_pg"] for h in monitor.history]
    assert [event.value for event in energy] == pytest.approx(recorded)
    assert {"dave/probe/0", "dave/probe_grid", "dave/progression/0"} <= set(
        accumulator.Tags()["images"]
    )


def test_a_csv_logger_holds_the_scalars_at_train_end_and_pngs_of_the_pictures(
    bf16_fits: dict,
) -> None:
    """Fabric never finalises its loggers, and a CSVLogger writes its file only on save: the
    monitor flushes them at train end. Pictures for a logger without images are PNG files."""
    with (bf16_fits["csv"] / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row.get("dave/energy_pg")]
    recorded = [h["metrics"]["energy_pg"] for h in bf16_fits["monitor"].history]
    assert [int(row["step"]) for row in rows] == [0, 2, 4]
    assert [float(row["dave/energy_pg"]) for row in rows] == pytest.approx(recorded)
    assert (bf16_fits["csv"] / "images" / "step_00000004" / "dave_probe_0.png").is_file()


def test_the_cost_of_an_evaluation_is_said_once(bf16_fits: dict) -> None:
    """A Fabric loop does not declare its length: the line gives the passes per evaluation and
    no share of the fit."""
    lines = [
        line for line in bf16_fits["printed"].splitlines() if line.startswith("DAVEMonitor 'dave'")
    ]
    assert len(lines) == 1
    assert "image-passes" in lines[0] and "of the fit" not in lines[0]


def test_snapshots_are_read_by_compare(bf16_fits: dict) -> None:
    comparison = compare_snapshots([bf16_fits["monitor"].snapshot_dir])
    assert [entry.evaluation.global_step for entry in comparison.entries] == [0, 2, 4]


def test_the_maps_under_bf16_mixed_are_those_of_the_float32_module(bf16_fits: dict) -> None:
    """The monitor evaluates the module inside Fabric's wrapper: not under its autocast."""
    first = load_snapshot(list_snapshots(bf16_fits["monitor"].snapshot_dir)[0])
    torch.manual_seed(0)  # the fits' initial weights
    maps, _ = reference(Counting())
    assert first["global_step"] == 0
    torch.testing.assert_close(first["maps"], maps, atol=1e-5, rtol=0)


def test_ddp_shards_the_probe_rank_0_publishes_and_training_is_unchanged(tmp_path: Path) -> None:
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    ranks = {r["rank"]: r for r in (json.loads(line.removeprefix("RESULT ")) for line in lines)}
    assert set(ranks) == {0, 1}
    torch.manual_seed(0)
    maps, counts = reference(Counting())
    for rank in ranks.values():
        assert rank["unchanged"]
        assert rank["steps"] == [0, 2, 4]
        # 7 images: shares of 4 and 3 (+1 padding), the grid's items split in two
        assert rank["counts"]["0"] <= 0.6 * counts["0"], (rank["counts"], counts)
    assert ranks[1]["energy"] == ranks[0]["energy"]  # every rank holds the same numbers
    snapshot_dir = tmp_path / "run" / "version_0" / "dave"
    first = load_snapshot(list_snapshots(snapshot_dir)[0])
    torch.testing.assert_close(first["maps"], maps, atol=1e-5, rtol=0)  # the whole probe
    accumulator = EventAccumulator(str(snapshot_dir.parent), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("dave/energy_pg")] == [0, 2, 4]
