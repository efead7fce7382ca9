"""The demo (--fast), end to end on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dave_lightning.demo import run_demo


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.parametrize("shortcut", [False, True])
def test_fast_demo_logs_maps_metrics_report_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shortcut: bool
) -> None:
    assert run_demo(out=str(tmp_path), seed=0, fast=True, shortcut=shortcut, quiet=True) == 0
    log_dir = tmp_path / ("shortcut" if shortcut else "shapes") / "version_0"
    accumulator = events(log_dir)
    steps = [event.step for event in accumulator.Scalars("dave/energy_pg")]
    assert steps == [0, 2, 4]  # before training and after each of the 2 epochs of 2 batches
    assert [event.step for event in accumulator.Images("dave/probe/0")] == steps
    assert "dave/progression/0" in accumulator.Tags()["images"]
    assert (log_dir / "report.png").stat().st_size > 10_000
    assert list((log_dir / "checkpoints").glob("*.ckpt"))
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("epoch |"))
    for column in ("val acc", "EnergyPG", "GridPG", "stability", "patch art", "del LeRF"):
        assert column in header
    assert [line.split("|")[0].strip() for line in lines if line.startswith("    ")] == [
        "0",
        "1",
        "2",
    ]
    assert f"tensorboard --logdir {tmp_path}" in printed
    if shortcut:
        assert [event.step for event in accumulator.Scalars("dave/region_marker")] == steps
        assert "marker" in printed
