"""``compare``'s intervals and paired significance tests, read back from the report files.

Comparisons of hand-made evaluations with planted per-image values, version-1 snapshots without
per-item values, and one real ``dave-lightning compare`` of a monitored fit.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from cli_fixtures import call_cli
from lightning_fixtures import TinyClassifier, loader, random_data

from dave_lightning import DAVEMonitor
from dave_lightning.compare import Comparison, compare_snapshots, drift_figure, write_report
from dave_lightning.compare.sources import Entry
from dave_lightning.core.uncertainty import mean_interval, paired_difference
from dave_lightning.evaluation import Evaluation
from dave_lightning.metrics import drift_matrix
from dave_lightning.snapshot import load_evaluation

V1 = Path(__file__).parent / "fixtures" / "snapshots_v1"
COLUMNS = [
    "metric",
    "evaluation_a",
    "evaluation_b",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "significant",
]
IMAGES = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine two threads that wait for each other
    make these small tensor operations many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def evaluation(values: dict[str, torch.Tensor], step: int) -> Evaluation:
    """An evaluation of 16 probe images with these per-item values (means as its metrics)."""
    maps = torch.rand(IMAGES, 1, 8, 8, generator=torch.Generator().manual_seed(step))
    return Evaluation(
        maps={"dave": maps},
        targets=torch.zeros(IMAGES, dtype=torch.long),
        predictions=torch.zeros(IMAGES, dtype=torch.long),
        metrics={name: float(v.nanmean()) for name, v in values.items()},
        values=values,
        epoch=step,
        global_step=step,
    )


def comparison(evaluations: list[Evaluation]) -> Comparison:
    entries = [
        Entry(f"step {e.global_step}", f"step_{e.global_step}.pt", "run", e) for e in evaluations
    ]
    return Comparison(
        entries=entries,
        drift=drift_matrix([e.maps["dave"] for e in evaluations]),
        settings={"engine": {"seed": 0}, "probe_size": IMAGES, "probe_sha256": "0" * 64},
    )


def base_values(seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-image energy_pg and gini, per-grid-cell grid_pg (8 cells), map_reliability."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "energy_pg": torch.rand(IMAGES, generator=generator) * 0.5,
        "gini": 0.4 + 0.2 * torch.rand(IMAGES, generator=generator),
        "grid_pg": torch.rand(8, generator=generator),
        "map_reliability": 0.8 + 0.1 * torch.rand(IMAGES, generator=generator),
    }


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "significance.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def metric_cells(out: Path) -> dict[str, list[str]]:
    """metrics.md's metric table: metric → its cells per evaluation."""
    text = (out / "metrics.md").read_text()
    table = text.split("## Metrics")[1].split("\n\n")[1]
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:]]
    return {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows}


def test_identical_evaluations_are_not_significant(tmp_path: Path) -> None:
    values = base_values()
    write_report(comparison([evaluation(values, 0), evaluation(dict(values), 1)]), tmp_path)
    rows = read_rows(tmp_path)
    assert [row["metric"] for row in rows] == ["energy_pg", "gini", "grid_pg", "map_reliability"]
    for row in rows:
        assert (row["evaluation_a"], row["evaluation_b"]) == ("#0", "#1")
        assert float(row["p_value"]) == 1.0
        assert row["significant"] == "False"
        assert float(row["difference"]) == float(row["ci_low"]) == float(row["ci_high"]) == 0.0
    assert not any("*" in cell for cells in metric_cells(tmp_path).values() for cell in cells)


def test_planted_shift_is_significant_and_starred(tmp_path: Path) -> None:
    """#2 raises every image's energy_pg by 0.1 and #3 repeats #2; nothing else changes.

    The star marks the change from the previous evaluation: #2, not #3 (which differs from #0
    only)."""
    values = base_values()
    shifted = {**values, "energy_pg": values["energy_pg"] + 0.1}
    evaluations = [
        evaluation(values, 0),
        evaluation(dict(values), 1),
        evaluation(shifted, 2),
        evaluation(dict(shifted), 3),
    ]
    write_report(comparison(evaluations), tmp_path)
    rows = read_rows(tmp_path)
    pairs = list(dict.fromkeys((row["evaluation_a"], row["evaluation_b"]) for row in rows))
    # #1's first evaluation is its previous one: one row per metric
    assert pairs == [("#0", "#1"), ("#0", "#2"), ("#1", "#2"), ("#0", "#3"), ("#2", "#3")]
    significant = {
        (r["metric"], r["evaluation_a"], r["evaluation_b"])
        for r in rows
        if r["significant"] == "True"
    }
    assert significant == {
        ("energy_pg", "#0", "#2"),
        ("energy_pg", "#1", "#2"),
        ("energy_pg", "#0", "#3"),
    }
    for row in rows:
        if (row["metric"], row["evaluation_b"]) == ("energy_pg", "#2"):
            # every difference is positive: 2 of the 2**16 sign patterns reach the sum
            assert float(row["p_value"]) == pytest.approx(2 / 2**16, rel=1e-5)
            assert float(row["difference"]) == pytest.approx(0.1, rel=1e-5)
            assert float(row["ci_low"]) <= 0.1 + 1e-6 and float(row["ci_high"]) >= 0.1 - 1e-6
    cells = metric_cells(tmp_path)
    starred = {
        (name, i) for name, row in cells.items() for i, cell in enumerate(row) if "*" in cell
    }
    assert starred == {("energy_pg", 2)}
    assert (
        "`*`: significantly different from the previous evaluation"
        in (tmp_path / "metrics.md").read_text()
    )


def test_the_engine_seed_seeds_the_drawn_sign_patterns(tmp_path: Path) -> None:
    """30 grid cells: more than are counted exactly, so the engine seed picks the draws."""
    generator = torch.Generator().manual_seed(4)
    first, second = torch.rand(30, generator=generator), torch.rand(30, generator=generator)
    for seed in (0, 1):
        compared = comparison(
            [evaluation({"grid_pg": first}, 0), evaluation({"grid_pg": second}, 1)]
        )
        compared.settings["engine"]["seed"] = seed
        write_report(compared, tmp_path / str(seed))
        row = read_rows(tmp_path / str(seed))[0]
        expected = paired_difference(first, second, seed=seed).p_value
        assert float(row["p_value"]) == pytest.approx(expected, rel=1e-5)
    assert paired_difference(first, second, seed=0) != paired_difference(first, second, seed=1)


def test_holm_decides_across_the_metrics_of_a_pair(tmp_path: Path) -> None:
    """Differences of ±1 with 13 positive and 3 negative: |Σ| = 10; a pattern with k minus
    signs sums to 16 − 2k, which reaches 10 for k ≤ 3 or k ≥ 13, so p = 2 · (1 + 16 + 120 +
    560) / 2**16 = 1394 / 65536 = 0.0213 < 0.05. With two unchanged metrics (p = 1) beside it,
    Holm tests the smallest against 0.05 / 3 = 0.0167: not significant. Alone, it is."""
    values = base_values()
    moved = {**values, "gini": values["gini"] + torch.tensor([0.01] * 13 + [-0.01] * 3)}
    three = {k: values[k] for k in ("energy_pg", "gini", "grid_pg")}
    write_report(
        comparison([evaluation(three, 0), evaluation({k: moved[k] for k in three}, 1)]), tmp_path
    )
    row = next(r for r in read_rows(tmp_path) if r["metric"] == "gini")
    assert float(row["p_value"]) == pytest.approx(1394 / 65536, rel=1e-5)
    assert row["significant"] == "False"

    alone = tmp_path / "alone"
    gini = [evaluation({"gini": values["gini"]}, 0), evaluation({"gini": moved["gini"]}, 1)]
    write_report(comparison(gini), alone)
    assert [row["significant"] for row in read_rows(alone)] == ["True"]


def test_intervals_in_csv_json_and_markdown(tmp_path: Path) -> None:
    values = base_values()
    values["gini"][3] = math.nan  # an image without a value is left out
    write_report(comparison([evaluation(values, 0), evaluation(base_values(1), 1)]), tmp_path)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    record = json.loads((tmp_path / "metrics.json").read_text())
    cells = metric_cells(tmp_path)
    assert record["interval_confidence"] == 0.95
    for number, seed in enumerate((0, 1)):
        own = values if number == 0 else base_values(seed)
        for name in ("energy_pg", "gini", "grid_pg"):
            low, high = mean_interval(own[name])
            assert float(rows[number][f"{name}_low"]) == pytest.approx(low, rel=1e-5)
            assert float(rows[number][f"{name}_high"]) == pytest.approx(high, rel=1e-5)
            assert record["evaluations"][number]["intervals"][name] == pytest.approx([low, high])
            mean = float(own[name].nanmean())
            up, down = high - mean, mean - low
            if math.isclose(up, down, rel_tol=1e-4):
                assert cells[name][number] == f"{mean:.4f} ± {up:.4f}"
            else:  # cut at the observed range
                assert cells[name][number] == f"{mean:.4f} +{up:.4f}/−{down:.4f}"


def test_evaluations_without_per_item_values_say_why(tmp_path: Path) -> None:
    """Version-1 snapshots carry no per-item values: bare values, no tests, one line why."""
    write_report(compare_snapshots([V1]), tmp_path)
    assert read_rows(tmp_path) == []
    text = (tmp_path / "metrics.md").read_text()
    assert "No intervals and no tests for #0, #1: they carry no per-item values" in text
    assert all("±" not in cell for cells in metric_cells(tmp_path).values() for cell in cells)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert rows[0]["energy_pg_low"] == rows[0]["energy_pg_high"] == "nan"
    assert (
        json.loads((tmp_path / "metrics.json").read_text())["evaluations"][0]["intervals"][
            "energy_pg"
        ]
        is None
    )


def test_mixed_old_and_new_evaluations(tmp_path: Path) -> None:
    """Only the pairs with values on both sides are tested; the line names the old one."""
    old = dataclasses.replace(evaluation(base_values(), 0), values={})
    evaluations = [old, evaluation(base_values(1), 1), evaluation(base_values(2), 2)]
    write_report(comparison(evaluations), tmp_path)
    pairs = {(row["evaluation_a"], row["evaluation_b"]) for row in read_rows(tmp_path)}
    assert pairs == {("#1", "#2")}
    assert "No intervals and no tests for #0: they carry" in (tmp_path / "metrics.md").read_text()


def test_drift_is_shown_against_map_reliability(tmp_path: Path) -> None:
    evaluations = [evaluation(base_values(seed), seed) for seed in range(3)]
    evaluations[2].metrics.pop("map_reliability")
    write_report(comparison(evaluations), tmp_path)
    text = (tmp_path / "metrics.md").read_text()
    section = text.split("## Drift against the maps' sampling noise")[1]
    row = next(line for line in section.splitlines() if line.startswith("| map reliability"))
    cells = [cell.strip() for cell in row.strip("|").split(" | ")[1:]]
    for number in (0, 1):
        low, high = mean_interval(base_values(number)["map_reliability"])
        expected = evaluations[number].metrics["map_reliability"]
        assert cells[number] == f"{expected:.4f} ± {(high - low) / 2:.4f}"
    assert cells[2].startswith("nan")

    reliability = [0.9, -0.2, math.nan]
    figure = drift_figure(comparison(evaluations).drift, reliability)
    bars = next(a for a in figure.axes if a.get_title().startswith("Map reliability"))
    assert [patch.get_width() for patch in bars.patches] == pytest.approx([0.9, -0.2, 0.0])
    assert [text.get_text() for text in bars.texts] == ["0.90", "-0.20", "n/a"]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["#0", "#1", "#2"]
    with pytest.raises(ValueError, match=r"one value per evaluation \(3\), got 2"):
        drift_figure(comparison(evaluations).drift, reliability[:2])


def test_cli_compare_of_a_monitored_fit_writes_significance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real fit with DAVEMonitor, then ``dave-lightning compare`` on its snapshots."""
    pl.seed_everything(0, verbose=False)
    monitor = DAVEMonitor(
        random_data(8, seed=5),
        metrics=("energy_pg", "gini", "drift"),
        compare_methods=(),
        n_samples=2,
        log_images=False,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyClassifier(lr=0.05), loader(16))
    snapshots = sorted(monitor.snapshot_dir.glob("step_*.pt"))
    assert len(snapshots) >= 3
    code, stderr = call_cli(
        capsys, "compare", monitor.snapshot_dir, "--out", tmp_path / "report", "--quiet"
    )
    assert code == 0, stderr
    rows = read_rows(tmp_path / "report")
    count = len(snapshots)
    expected_pairs = [(0, i) for i in range(1, count)] + [(i - 1, i) for i in range(2, count)]
    found_pairs = {(int(r["evaluation_a"][1:]), int(r["evaluation_b"][1:])) for r in rows}
    assert found_pairs == set(expected_pairs)
    evaluations = [load_evaluation(path) for path in snapshots]
    for row in rows:
        a, b = (evaluations[int(row[key][1:])] for key in ("evaluation_a", "evaluation_b"))
        name = row["metric"]
        assert name in a.values and name in b.values
        both = torch.isfinite(a.values[name]) & torch.isfinite(b.values[name])
        difference = float((b.values[name] - a.values[name])[both].double().mean())
        assert float(row["difference"]) == pytest.approx(difference, rel=1e-4, abs=1e-7)
        assert 0.0 < float(row["p_value"]) <= 1.0
        assert row["significant"] in ("True", "False")
    assert {row["metric"] for row in rows} >= {"energy_pg", "gini", "probe_accuracy"}
