"""The demo (--fast), end to end on the CPU; its shortcut control and the alarm's verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dave_lightning.cli import main
from dave_lightning.data import ShapesDataModule, SyntheticShapes
from dave_lightning.demo import DemoRun, summary


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.parametrize(
    ("flags", "run"),
    [((), "shapes"), (("--shortcut",), "shortcut"), (("--shortcut-rate", "0"), "control")],
)
def test_fast_demo_logs_maps_metrics_report_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], run: str
) -> None:
    assert main(["demo", "--fast", "--quiet", "--seed", "0", "--out", str(tmp_path), *flags]) == 0
    log_dir = tmp_path / run / "version_0"
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
    if run == "shapes":
        assert "marker" not in header and "dave/region_marker" not in accumulator.Tags()["scalars"]
        return
    # the corner square (12 x 12 of 64 x 64 pixels at any size) is tracked in both runs
    assert [event.step for event in accumulator.Scalars("dave/region_marker")] == steps
    alarm = [event.value for event in accumulator.Scalars("dave/alert/marker")]
    lows = [event.value for event in accumulator.Scalars("dave/region_marker/low")]
    assert alarm == [float(low > 2 * 144 / 4096) for low in lows]
    setup = {
        "shortcut": "Shortcut: 90% of the training and probe images carry a class-coloured square",
        "control": "Control: no image carries the marker; the monitor tracks the top-left corner",
    }
    assert setup[run] in printed and "(3.5% of the pixels)" in printed
    if 1.0 in alarm:
        step = steps[alarm.index(1.0)]
        assert f"Region alarm raised at step {step} " in printed
    else:
        assert "Region alarm never raised" in printed


def test_control_region_is_the_marker_square_in_every_probe_image() -> None:
    control = ShapesDataModule(image_size=64, shortcut=0.0).corner_masks(6)
    marked = SyntheticShapes(6, split="probe", image_size=64, shortcut=1.0)
    assert control.shape == (6, 64, 64)
    for index in range(6):
        assert torch.equal(control[index], marked.marker_mask(index))


def demo_run(alerts: list[float], rate: float = 0.9) -> DemoRun:
    """A finished shortcut run with hand-made rows: an alarm per evaluation, known numbers."""
    rows = []
    for epoch, alert in enumerate(alerts):
        share, energy = 0.1 + 0.1 * epoch, 0.2 + 0.05 * epoch
        rows.append(
            {
                "epoch": epoch,
                "step": 64 * epoch,
                "train_acc": 0.9,
                "val_acc": 0.6,
                "energy_pg": energy,
                "energy_pg/low": energy - 0.1,
                "energy_pg/high": energy + 0.1,
                "region_marker": share,
                "region_marker/low": share - 0.05,
                "region_marker/high": share + 0.05,
                "alert/marker": alert,
            }
        )
    return DemoRun(
        rows=rows,
        log_dir=Path("."),
        snapshot_dir=Path("."),
        images01=torch.zeros(1, 3, 8, 8),
        shortcut_rate=rate,
        pixel_share=0.035,
        alert_ratio=2.0,
        confidence=0.95,
    )


def test_the_verdict_is_the_first_evaluation_that_raised_the_alarm() -> None:
    lines = summary(demo_run([0.0, 0.0, 1.0, 1.0]))
    assert lines[2] == (
        "Region alarm raised at step 128 (epoch 2): DAVE put 0.30 [0.25, 0.35] (95% interval) "
        "of its attribution on the corner square; the interval's lower bound exceeds 2 x its "
        "0.035 share of the pixels (0.070)."
    )
    assert lines[3] == (
        "At the last evaluation the corner square held 0.40 [0.35, 0.45] of the attribution. "
        "EnergyPG (on the object): 0.20 [0.10, 0.30] untrained, peak 0.35 [0.25, 0.45] "
        "(epoch 3), last 0.35 [0.25, 0.45]."
    )
    assert lines[4].startswith("Train accuracy 0.90 against val accuracy 0.60: a gap of +0.30")


def test_a_run_whose_alarm_never_fired_says_so_with_its_highest_lower_bound() -> None:
    lines = summary(demo_run([0.0, 0.0, 0.0], rate=0.0))
    assert lines[1].startswith("Control: no image carries the marker")
    assert lines[2] == (
        "Region alarm never raised: the lower bound of the corner square's attribution share "
        "stayed at or below 2 x its 0.035 share of the pixels (0.070); its highest lower bound "
        "was 0.250 (epoch 2)."
    )
