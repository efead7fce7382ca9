"""Snapshots written by version 0.1 (format version 1) still load and compare."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dave_lightning.compare import compare_snapshots, write_report
from dave_lightning.evaluation import Evaluation
from dave_lightning.snapshot import load_evaluation, load_snapshot

V1 = Path(__file__).parent / "fixtures" / "snapshots_v1"


def test_version_1_snapshots_load_as_evaluations() -> None:
    first, last = sorted(V1.glob("step_*.pt"))
    assert load_snapshot(first)["version"] == 1
    evaluation = load_evaluation(first)
    assert evaluation.maps["dave"].shape == (4, 1, 32, 32)
    assert set(evaluation.maps) == {"dave", "input_x_gradient"}
    assert evaluation.images is not None and evaluation.global_step == 0
    assert evaluation.reliability is None and evaluation.probabilities is None
    # version 1 named DAVE's curves without the method
    assert "dave/deletion_lerf_blur" in load_evaluation(last).curves
    record = Evaluation.from_record(load_snapshot(last)).to_record()
    assert record["version"] == 3 and torch.equal(record["maps"], load_snapshot(last)["maps"])


def test_compare_reads_version_1_snapshots(tmp_path: Path) -> None:
    comparison = compare_snapshots([V1])
    assert [e.evaluation.global_step for e in comparison.entries] == [0, 2]
    assert comparison.images01 is not None
    write_report(comparison, tmp_path)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["evaluations"][1]["metrics"]["drift_first_spearman"] is not None
    assert (tmp_path / "maps_probe_3.png").is_file()
