"""``dave-lightning compare`` on tiny monitor runs and Lightning checkpoints made in the test.

The main flows run as subprocesses; the many bad-input cases call ``main`` in-process (same
code path, without paying a Python start-up per case).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import (
    IMAGE_SIZE,
    Marker,
    assert_usage_error,
    call_cli,
    fit_checkpoints,
    run_cli,
    synthetic_probe,
    write_run,
)
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dave_lightning import viz
from dave_lightning.metrics import attribution_drift, drift_matrix
from dave_lightning.snapshot import load_snapshot

FAST = ("--n-samples", "2", "--num-probe", "4", "--compare-methods", "--quiet")
REPORT = {
    "maps_probe_0.png",
    "maps_probe_3.png",
    "metrics.md",
    "metrics.csv",
    "metrics.json",
    "drift_spearman.csv",
    "drift_topk_iou.csv",
    "drift.png",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "version_0", (0, 1, 2), synthetic_probe())
    write_run(root / "other_probe", (0,), synthetic_probe(seed=1))
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return fit_checkpoints(tmp_path_factory.getbasetemp() / "checkpoints")


def panel_size(columns: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(width, height) of a labelled panel of ``columns`` square tiles with a caption."""
    panel = viz.labelled_panel([torch.zeros(3, size, size)] * columns, [""] * columns, "caption")
    return panel.shape[2], panel.shape[1]


def tile(panel: torch.Tensor, column: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Tile ``column`` of a labelled panel (H, W, 3), shrunk back to ``size`` px, border cut."""
    zoom = -(-viz.MIN_TILE // size)
    top, left = viz.TEXT_ROW + 2, 2 + column * (zoom * size + 2)
    zoomed = panel[top : top + zoom * size, left : left + zoom * size]
    return zoomed[zoom // 2 :: zoom, zoom // 2 :: zoom][1:-1, 1:-1]


def read_matrix(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(path.open()))
    return rows[0][1:], np.array([[float(v) for v in row[1:]] for row in rows[1:]])


def check_drift(out: Path, count: int) -> dict[str, np.ndarray]:
    """Both drift matrices: E × E, symmetric, 1 on the diagonal, equal in CSV and JSON."""
    report = json.loads((out / "metrics.json").read_text())
    matrices = {}
    for name in ("spearman", "topk_iou"):
        labels, matrix = read_matrix(out / f"drift_{name}.csv")
        assert len(labels) == count and matrix.shape == (count, count)
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
        np.testing.assert_allclose(matrix, matrix.T)
        np.testing.assert_allclose(matrix, np.array(report["drift"][name]), rtol=1e-5)
        matrices[name] = matrix
    return matrices


def test_compare_run_dir(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli("compare", runs / "version_0", "--out", out, "--tensorboard", tmp_path / "tb")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name for p in out.iterdir()} >= REPORT

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["global_step"] for row in rows] == ["0", "1", "2"]
    for row in rows:
        snapshot = load_snapshot(row["source"])
        for name in ("gini", "energy_pg", "patch_artifact"):
            assert float(row[name]) == pytest.approx(snapshot["metrics"][name], rel=1e-5)
    drift = check_drift(out, 3)
    assert (drift["spearman"][~np.eye(3, dtype=bool)] < 0.99).all()  # different random models
    assert "| gini |" in (out / "metrics.md").read_text()
    # Snapshots carry no images: the panel is one colorized map per evaluation.
    assert Image.open(out / "maps_probe_0.png").size == panel_size(3)

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [event.step for event in events.Scalars("dave/gini")] == [0, 1, 2]
    assert "dave/probe/0" in events.Tags()["images"]


def test_compare_selected_steps_matches_metric(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs / "version_0"
    first = run / "dave" / "step_00000000.pt"
    code, stderr = call_cli(capsys, "compare", first, run, "--steps", "0", "2", "--out", tmp_path)
    assert code == 0, stderr
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["global_step"] for e in report["evaluations"]] == [0, 2]
    expected = attribution_drift(
        load_snapshot(first)["maps"], load_snapshot(run / "dave" / "step_00000002.pt")["maps"]
    )
    drift = check_drift(tmp_path, 2)
    assert drift["spearman"][0, 1] == pytest.approx(float(expected["spearman"].mean()), rel=1e-4)
    assert drift["topk_iou"][0, 1] == pytest.approx(float(expected["topk_iou"].mean()), rel=1e-4)


def test_snapshots_with_probe_images_get_overlays(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Snapshots may carry the probe images (optional keys): panels then start with the image.

    Like the monitor's, only the first snapshot carries them.
    """
    probe = synthetic_probe()
    for step in (0, 1):
        record = load_snapshot(runs / "version_0" / "dave" / f"step_{step:08d}.pt")
        if step == 0:
            record.update(images=probe.images.half(), mean=[0.5] * 3, std=[0.5] * 3)
        torch.save(record, tmp_path / f"step_{step:08d}.pt")
    code, stderr = call_cli(capsys, "compare", tmp_path, "--out", tmp_path / "report")
    assert code == 0, stderr
    panel = torch.from_numpy(np.asarray(Image.open(tmp_path / "report" / "maps_probe_2.png")))
    images01 = probe.images[2:3].half().float() * 0.5 + 0.5
    maps = [load_snapshot(tmp_path / f"step_{step:08d}.pt")["maps"][2:3] for step in (0, 1)]
    columns = [images01[0], *(viz.overlay(images01, m)[0] for m in maps)]
    for index, expected in enumerate(columns):
        expected = (expected * 255).round().permute(1, 2, 0)[1:-1, 1:-1]
        torch.testing.assert_close(tile(panel, index).float(), expected, atol=1, rtol=0)


def test_drift_matrix_matches_attribution_drift() -> None:
    """The batched matrix equals attribution_drift pair by pair (ties, constant and NaN maps)."""
    generator = torch.Generator().manual_seed(0)
    maps = [torch.rand(5, 1, 16, 16, generator=generator).round(decimals=1) for _ in range(3)]
    maps[1][2] = 0.3
    maps[2][4, 0, 0, 0] = torch.nan
    matrices = drift_matrix(maps)
    for name, matrix in matrices.items():
        expected = [[attribution_drift(a, b)[name].double().nanmean() for b in maps] for a in maps]
        torch.testing.assert_close(matrix, torch.tensor(expected), atol=1e-6, rtol=0)


def test_compare_checkpoints(checkpoints: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    metrics = ("--metrics", "energy_pg", "gini", "drift")
    args = ("--checkpoints", *checkpoints, "--module", "cli_fixtures:TinyLit", *metrics)
    result = run_cli("compare", *args, *FAST, "--out", out)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} >= REPORT
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["evaluation"] for row in rows] == ["epoch=0-step=1", "epoch=0-step=2"]
    assert [row["global_step"] for row in rows] == ["1", "2"]
    drift = check_drift(out, 2)
    assert drift["spearman"][0, 1] < 0.999  # two training steps apart: the maps moved
    assert float(rows[1]["drift_previous_spearman"]) == pytest.approx(drift["spearman"][0, 1])
    assert 0.0 <= float(rows[0]["energy_pg"]) <= 1.0
    # The probe images are known: the panel is the image, then an overlay per checkpoint.
    assert Image.open(out / "maps_probe_0.png").size == panel_size(3)


def test_compare_checkpoints_with_captum_and_rollouts_shows_insertion_beside_deletion(
    checkpoints: list[Path], tmp_path: Path
) -> None:
    """Every compared method by name, its metrics in the report and TensorBoard, and the curve
    figure with a panel per curve metric."""
    methods = ("captum:Saliency", "attention_rollout", "grad_rollout")
    args = ("--checkpoints", *checkpoints, "--module", "cli_fixtures:TinyLit")
    options = ("--metrics", "gini", "deletion", "insertion", "--deletion-steps", "4")
    result = run_cli(
        "compare",
        *args,
        *options,
        *FAST,
        "--compare-methods",
        *methods,
        "--out",
        tmp_path / "report",
        "--tensorboard",
        tmp_path / "tb",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    markdown = (tmp_path / "report" / "metrics.md").read_text()
    curve_keys = ("deletion_lerf_blur", "deletion_morf_blur", "insertion_morf_blur")
    keys = [
        f"{prefix}{key}"
        for prefix in ("", *(f"{method}/" for method in methods))
        for key in ("gini", *curve_keys, "insertion_lerf_blur")
    ]
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for key in keys:
        values = [e["metrics"][key] for e in report["evaluations"]]
        assert all(np.isfinite(values)), key
        assert f"| {key} |" in markdown, key
        logged = [event.value for event in events.Scalars(f"dave/{key}")]
        assert logged == pytest.approx(values), key
    assert report["settings"]["compare_methods"] == list(methods)
    figures = events.Images("dave/deletion_curves")
    assert [(f.step, f.width, f.height) for f in figures] == [(1, 900, 320), (2, 900, 320)]


def test_same_checkpoint_twice_is_reproducible(
    checkpoints: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--checkpoints", checkpoints[0], checkpoints[0], "--module", "cli_fixtures:TinyLit")
    code, stderr = call_cli(capsys, "compare", *args, *FAST, "--metrics", "gini", "--out", tmp_path)
    assert code == 0, stderr
    np.testing.assert_allclose(check_drift(tmp_path, 2)["spearman"], 1.0, atol=1e-5)


def test_untrusted_checkpoint_needs_the_flag(
    checkpoints: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = torch.load(checkpoints[0], weights_only=True)
    checkpoint["extra"] = Marker()
    path = tmp_path / "custom.ckpt"
    torch.save(checkpoint, path)
    args = ("compare", "--checkpoints", path, "--module", "cli_fixtures:TinyLit", *FAST)
    code, stderr = call_cli(capsys, *args, "--metrics", "gini", "--out", tmp_path / "a")
    assert_usage_error(code, stderr, "cli_fixtures.Marker", "--trust-checkpoint")
    code, stderr = call_cli(
        capsys, *args, "--metrics", "gini", "--out", tmp_path / "b", "--trust-checkpoint"
    )
    assert code == 0, stderr


def test_probe_folder_with_masks(
    checkpoints: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = synthetic_probe(4)
    for index in range(4):
        relative = Path(f"class_{int(probe.labels[index])}") / f"image_{index}.png"
        pixels = (probe.images[index] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255
        for root, array in (
            ("images", pixels.round().byte().numpy()),
            ("masks", probe.masks[index].byte().numpy() * 255),
        ):
            (tmp_path / root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp_path / root / relative)
    args = ("--probe", tmp_path / "images", "--masks", tmp_path / "masks", *FAST)
    code, stderr = call_cli(
        capsys,
        "compare",
        "--checkpoints",
        checkpoints[1],
        "--module",
        "cli_fixtures:TinyLit",
        *args,
        "--metrics",
        "energy_pg",
        "--out",
        tmp_path / "report",
    )
    assert code == 0, stderr
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert 0.0 <= report["evaluations"][0]["metrics"]["energy_pg"] <= 1.0
    assert report["settings"]["probe_size"] == 4
    # the same folder without its masks: energy_pg asked for cannot be computed
    code, stderr = call_cli(
        capsys,
        "compare",
        "--checkpoints",
        checkpoints[1],
        "--module",
        "cli_fixtures:TinyLit",
        "--probe",
        tmp_path / "images",
        *FAST,
        "--metrics",
        "energy_pg",
        "--out",
        tmp_path / "report_maskless",
    )
    assert code == 2 and "Traceback" not in stderr
    assert "metric 'energy_pg' needs masks" in stderr and "--metrics" in stderr


def test_different_probes_are_refused(runs: Path, tmp_path: Path) -> None:
    result = run_cli("compare", runs / "version_0", runs / "other_probe", "--out", tmp_path)
    assert_usage_error(result.returncode, result.stderr, "different probe images")


@pytest.fixture(scope="module")
def bad(runs: Path, checkpoints: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Paths for the bad-input cases."""
    root = tmp_path_factory.mktemp("bad")
    snapshot = runs / "version_0" / "dave" / "step_00000000.pt"
    (root / "junk.pt").write_bytes(b"not a snapshot at all" * 10)
    (root / "truncated.pt").write_bytes(snapshot.read_bytes()[:2000])
    torch.save({"weights": torch.zeros(2)}, root / "foreign.pt")
    (root / "unreadable" / "cat").mkdir(parents=True)
    (root / "unreadable" / "cat" / "broken.png").write_bytes(b"not a png")
    (root / "empty").mkdir()
    return {
        "root": root,
        "run": runs / "version_0",
        "snapshot": snapshot,
        "ckpt": checkpoints[0],
    }


BAD_INPUTS = [
    ("compare {root}/missing", "no such file or directory"),
    ("compare {root}/empty", "no step_*.pt snapshots"),
    ("compare {root}/junk.pt", "not a readable snapshot"),
    ("compare {root}/truncated.pt", "not a readable snapshot"),
    ("compare {root}/foreign.pt", "not a dave-lightning snapshot"),
    ("compare {run} --steps 7", "no snapshot at steps [7]"),
    ("compare", "nothing to compare"),
    ("compare {run} --metrics gini", "--metrics: for --checkpoints only"),
    ("compare {run} --checkpoints {ckpt} --module cli_fixtures:TinyLit", "not both"),
    ("compare --checkpoints {ckpt}", "needs --module"),
    ("compare --checkpoints {ckpt} --module no_such_package.models:Lit", "cannot import"),
    ("compare --checkpoints {ckpt} --module cli_fixtures", "not of the form pkg.mod:Class"),
    ("compare --checkpoints {ckpt} --module cli_fixtures:Missing", "has no 'Missing'"),
    ("compare --checkpoints {ckpt} --module cli_fixtures:OtherLit", "does not match OtherLit"),
    ("compare --checkpoints {root}/missing.ckpt --module cli_fixtures:TinyLit", "no such"),
    ("compare --checkpoints {root}/junk.pt --module cli_fixtures:TinyLit", "not a readable"),
    (
        "compare --checkpoints {snapshot} --module cli_fixtures:TinyLit",
        "not a Lightning checkpoint",
    ),
    (
        "compare --checkpoints {ckpt} --module cli_fixtures:TinyLit --probe {root}/unreadable",
        "cannot read image",
    ),
    ("compare --checkpoints {ckpt} --module cli_fixtures:TinyLit --probe {root}/x", "no such"),
    (
        "compare --checkpoints {ckpt} --module cli_fixtures:TinyLit --compare-methods nope",
        "unknown --compare-methods 'nope'; choose from ['input_x_gradient',",
    ),
    (
        "compare --checkpoints {ckpt} --module cli_fixtures:TinyLit --compare-methods captum:Nope",
        "unknown Captum method 'captum:Nope'; use captum:<Class>",
    ),
    (
        "compare --checkpoints {ckpt} --module cli_fixtures:TinyLit --metrics nope",
        "unknown --metrics ['nope']; choose from ['energy_pg',",
    ),
]


@pytest.mark.parametrize(("command", "message"), BAD_INPUTS)
def test_bad_input(
    bad: dict, command: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = command.format(**bad).split()
    code, stderr = call_cli(capsys, *args, "--quiet", "--out", bad["root"] / "out")
    assert_usage_error(code, stderr, message)


def test_library_errors_name_parameters_and_the_cli_names_flags(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dave_lightning.compare import compare_snapshots
    from dave_lightning.core.errors import UsageError

    with pytest.raises(UsageError, match=r"`steps` can pick from \[0, 1, 2\]") as caught:
        compare_snapshots([runs / "version_0"], steps=[7])
    assert "--" not in str(caught.value)
    code, stderr = call_cli(capsys, "compare", runs / "version_0", "--steps", "7", "--quiet")
    assert_usage_error(code, stderr, "--steps can pick from [0, 1, 2]")
