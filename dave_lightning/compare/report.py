"""The comparison report: per-image panels, metric tables with intervals and significance
tests, drift matrices, the sanity check, a TensorBoard run.

Evaluations are numbered ``#0``, ``#1``, … in the order of ``metrics.md``'s table; the panels'
columns, ``significance.csv`` and the drift heatmap's ticks use those numbers.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from tqdm import tqdm

from dave_lightning import panels, viz
from dave_lightning.compare.significance import (
    ALPHA,
    PairTest,
    comparison_confidence,
    metric_intervals,
    significance_tests,
    unpaired,
    write_significance,
)
from dave_lightning.compare.sources import Comparison
from dave_lightning.core.errors import UsageError
from dave_lightning.metrics.sanity import SANITY_THRESHOLD, cascade_figure, sanity_fails
from dave_lightning.sinks import TensorBoardSink

DRIFT_TITLES = {"spearman": "Spearman", "topk_iou": "top-10 % IoU"}
MAX_ANNOTATED = 12  # drift heatmaps print their numbers up to this many evaluations


def write_report(
    comparison: Comparison,
    out: str | Path,
    *,
    tensorboard: str | Path | None = None,
    progress: bool = False,
) -> list[Path]:
    """Write the report files of a comparison into ``out`` (and a TensorBoard run on request)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"`out` {out} is a file; pass a directory for the report")
    out.mkdir(parents=True, exist_ok=True)
    written = write_map_panels(comparison, out, progress=progress)
    written += write_metrics(comparison, out)
    written += write_drift(comparison, out)
    if comparison.sanity is not None:
        written += write_sanity(comparison, out)
    if tensorboard is not None:
        write_tensorboard(comparison, Path(tensorboard), progress=progress)
    return written


def comparison_panels(comparison: Comparison) -> list[torch.Tensor]:
    """Per probe image: the image (when known), then its DAVE map at each evaluation ``#i``.

    Each column is titled with its evaluation number and prediction; a red frame marks the
    evaluations that predicted the image wrongly.
    """
    columns = [
        panels.heatmaps(comparison.images01, entry.evaluation.maps["dave"])
        for entry in comparison.entries
    ]
    result = []
    for index in range(comparison.entries[0].evaluation.maps["dave"].shape[0]):
        titles, frames = [], []
        for number, entry in enumerate(comparison.entries):
            caption, wrong = panels.prediction_caption(entry.evaluation, index)
            titles.append(f"#{number} {caption.split(' · ')[-1]}")
            frames.append(panels.WRONG if wrong else None)
        tiles = [column[index] for column in columns]
        labels = comparison.entries[-1].evaluation.labels
        caption = None if labels is None else f"label {int(labels[index])}"
        if comparison.images01 is not None:
            tiles.insert(0, comparison.images01[index])
            titles.insert(0, "image")
            frames.insert(0, None)
        result.append(viz.labelled_panel(tiles, titles, caption, frames))
    return result


def write_map_panels(comparison: Comparison, out: Path, *, progress: bool = False) -> list[Path]:
    """``maps_probe_<i>.png`` per probe image: the image (when known), then each evaluation."""
    paths = []
    bar = tqdm(
        comparison_panels(comparison), desc="writing PNGs", disable=None if progress else True
    )
    for index, panel in enumerate(bar):
        path = out / f"maps_probe_{index}.png"
        viz.save_png(panel, path)
        paths.append(path)
    return paths


def metric_names(comparison: Comparison) -> list[str]:
    """Every metric of any evaluation, in order of first appearance."""
    names = (name for e in comparison.entries for name in e.evaluation.metrics)
    return list(dict.fromkeys(names))


def write_metrics(comparison: Comparison, out: Path) -> list[Path]:
    """``metrics.csv`` (a row per evaluation: each metric, then its interval's ``_low`` and
    ``_high``), ``metrics.md``, ``metrics.json`` and ``significance.csv``."""
    names = metric_names(comparison)
    intervals = metric_intervals(comparison, names)
    tests = significance_tests(comparison, names)
    csv_path, md_path, json_path = out / "metrics.csv", out / "metrics.md", out / "metrics.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = [f"{name}{suffix}" for name in names for suffix in ("", "_low", "_high")]
        writer.writerow(["evaluation", "source", "epoch", "global_step", *columns])
        for e, bounds in zip(comparison.entries, intervals, strict=True):
            values = []
            for name in names:
                low, high = bounds[name] or (math.nan, math.nan)
                values += [
                    _number(v) for v in (e.evaluation.metrics.get(name, math.nan), low, high)
                ]
            writer.writerow(
                [e.label, e.source, e.evaluation.epoch, e.evaluation.global_step, *values]
            )
    md_path.write_text(markdown_report(comparison, names, intervals, tests))
    record = {
        "evaluations": [
            {
                "number": number,
                "label": e.label,
                "source": e.source,
                "run": e.run,
                "epoch": e.evaluation.epoch,
                "global_step": e.evaluation.global_step,
                "metrics": {k: _json_number(v) for k, v in e.evaluation.metrics.items()},
                "intervals": {k: None if v is None else [v[0], v[1]] for k, v in bounds.items()},
                "targets": e.evaluation.targets.tolist(),
                "predictions": e.evaluation.predictions.tolist(),
            }
            for number, (e, bounds) in enumerate(zip(comparison.entries, intervals, strict=True))
        ],
        "interval_confidence": comparison_confidence(comparison),
        "drift": {
            name: [[_json_number(v) for v in row] for row in matrix.tolist()]
            for name, matrix in comparison.drift.items()
        },
        "settings": comparison.settings,
    }
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return [csv_path, md_path, json_path, write_significance(tests, out / "significance.csv")]


def markdown_report(
    comparison: Comparison,
    names: Sequence[str],
    intervals: Sequence[Mapping[str, tuple[float, float] | None]],
    tests: Sequence[PairTest],
) -> str:
    """The evaluations, a metric-by-evaluation table with intervals and significance marks,
    the drift matrices and the maps' reliability, in Markdown."""
    numbers = [f"#{i}" for i in range(len(comparison.entries))]
    settings = comparison.settings
    lines = [
        "# DAVE comparison",
        "",
        f"Probe: {settings.get('probe_size')} images, sha256 {settings.get('probe_sha256')}. "
        f"Engine: {settings.get('engine')}.",
        "Columns of `maps_probe_<i>.png`: "
        + ("the image, then " if comparison.images01 is not None else "")
        + "the evaluations #0, #1, … below.",
        "",
        "| # | evaluation | epoch | global step | source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for index, e in enumerate(comparison.entries):
        lines.append(
            f"| {index} | {e.label} | {e.evaluation.epoch} | {e.evaluation.global_step} "
            f"| `{e.source}` |"
        )
    lines += [
        "",
        "## Metrics",
        "",
        *_markdown_table(
            "metric", numbers, names, _metric_cells(comparison, names, intervals, tests)
        ),
        "",
        *_metric_legend(comparison, names),
    ]
    for name, matrix in comparison.drift.items():
        lines += ["", f"## Drift ({DRIFT_TITLES[name]}, mean over the probe)", ""]
        lines += _markdown_table(
            "", numbers, numbers, [[f"{v:.4f}" for v in row] for row in matrix.tolist()]
        )
    lines += ["", *_reliability_section(comparison, numbers, intervals)]
    lines += _sanity_section(comparison)
    return "\n".join(lines) + "\n"


def _metric_cells(
    comparison: Comparison,
    names: Sequence[str],
    intervals: Sequence[Mapping[str, tuple[float, float] | None]],
    tests: Sequence[PairTest],
) -> list[list[str]]:
    """``value ± half-width`` (``+up/−down`` where the interval was cut at the observed range),
    ``*`` where the change from the previous evaluation is significant."""
    starred = {(t.metric, t.b) for t in tests if t.significant and t.a == t.b - 1}
    return [
        [
            _with_interval(e.evaluation.metrics.get(name, math.nan), bounds[name])
            + ("*" if (name, index) in starred else "")
            for index, (e, bounds) in enumerate(zip(comparison.entries, intervals, strict=True))
        ]
        for name in names
    ]


def _with_interval(value: float, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return f"{value:.4f}"
    up, down = interval[1] - value, value - interval[0]
    if math.isclose(up, down, rel_tol=1e-4, abs_tol=1e-6):
        return f"{value:.4f} ± {(up + down) / 2:.4f}"
    return f"{value:.4f} +{up:.4f}/−{down:.4f}"


def _metric_legend(comparison: Comparison, names: Sequence[str]) -> list[str]:
    """What the ``±`` and ``*`` mean, and why some values have neither."""
    lines = [
        f"Each value is the probe mean ± the half-width of its "
        f"{comparison_confidence(comparison):.0%} Student-t "
        "interval over the probe images (grid cells for the grid metrics); `+up/−down` where the "
        "interval was cut at the observed range of the values; a bare value where fewer than "
        "two items had a value.",
        f"`*`: significantly different from the previous evaluation (paired sign-flip test over "
        f"the same items, Holm-corrected across the metrics of the pair at α = {ALPHA}); every "
        "test, also against #0, is in `significance.csv`.",
    ]
    without = [f"#{i}" for i, e in enumerate(comparison.entries) if not e.evaluation.values]
    if without:
        lines.append(
            f"No intervals and no tests for {', '.join(without)}: they carry no per-item values "
            "(snapshots written before dave-lightning kept them), only the probe means."
        )
    mismatched = unpaired(comparison, names)
    if mismatched:
        lines.append(
            "Not tested, the two evaluations hold different numbers of items (e.g. grids of "
            f"another `grid_k`): {', '.join(mismatched)}."
        )
    return lines


def _reliability_section(
    comparison: Comparison,
    numbers: Sequence[str],
    intervals: Sequence[Mapping[str, tuple[float, float] | None]],
) -> list[str]:
    """The maps' own noise level, to read the drift against: the mean map reliability."""
    cells = [
        _with_interval(
            e.evaluation.metrics.get("map_reliability", math.nan), bounds.get("map_reliability")
        )
        for e, bounds in zip(comparison.entries, intervals, strict=True)
    ]
    return [
        "## Drift against the maps' sampling noise",
        "",
        "`map_reliability` (the mean split-half Spearman–Brown reliability of each evaluation's "
        "DAVE maps) estimates the Spearman agreement of two runs of the same model with "
        "different seeds; `drift.png` shows it beside the heatmaps. A drift Spearman between "
        "two evaluations well below their reliability (by more than about 0.1) is a change of "
        "the explanation beyond sampling noise; `nan`: not recorded.",
        "",
        *_markdown_table("", numbers, ["map reliability"], [cells]),
    ]


def _sanity_section(comparison: Comparison) -> list[str]:
    """Which methods fail the sanity check: the cascade's table when it ran, and the
    ``sanity/<method>`` metrics of the evaluations that computed them; nothing when neither."""
    parts = [
        part for part in (_cascade_lines(comparison), _sanity_metric_lines(comparison)) if part
    ]
    if not parts:
        return []
    lines = ["", "## Sanity check (model randomization)", ""]
    for part in parts:
        lines += [*part, ""]
    return lines[:-1]


def _cascade_lines(comparison: Comparison) -> list[str]:
    """The cascade's verdicts: Spearman and IoU at full cascade per method, and who fails."""
    check = comparison.sanity
    if check is None:
        return []
    entry = comparison.entries[check.evaluation]
    rows = [f"`{method}`" for method in check.cascades]
    cells = []
    for cascade in check.cascades.values():
        _, spearman, iou = cascade.summary()[-1]  # full cascade
        cells.append([f"{spearman:.4f}", f"{iou:.4f}", "fail" if cascade.fails() else "pass"])
    failing = ", ".join(f"`{method}`" for method in check.failing())
    return [
        f"On #{check.evaluation} ({entry.label}), each method's maps after the model's head and "
        "blocks were re-initialised, from the output down to the first block, against its maps "
        "of the model (mean over the probe; every step in `sanity.csv`, drawn in `sanity.png`). "
        f"A method fails when its Spearman at full cascade is above {SANITY_THRESHOLD} (or "
        "undefined): its maps do not depend on the weights.",
        "",
        *_markdown_table("method", ["Spearman", "top-10 % IoU", "check"], rows, cells),
        "",
        f"Fails the check: {failing}." if failing else "Every method passes the check.",
    ]


def _sanity_metric_lines(comparison: Comparison) -> list[str]:
    """Per evaluation with ``sanity/<method>`` metrics, the methods whose value fails."""
    verdicts = []
    for number, entry in enumerate(comparison.entries):
        metrics = entry.evaluation.metrics
        known = [method for method in entry.evaluation.maps if f"sanity/{method}" in metrics]
        if not known:
            continue
        failing = [f"`{m}`" for m in known if sanity_fails(metrics[f"sanity/{m}"])]
        verdict = f"fails: {', '.join(failing)}" if failing else "every method passes"
        verdicts.append(f"- #{number}: {verdict}")
    if not verdicts:
        return []
    return [
        "From the `sanity/<method>` metrics (Spearman at full cascade; a method fails above "
        f"{SANITY_THRESHOLD} or where undefined):",
        "",
        *verdicts,
    ]


def write_sanity(comparison: Comparison, out: Path) -> list[Path]:
    """``sanity.csv`` (per method and cascade step: the mean Spearman and top-10 % IoU with the
    model's maps, and the method's verdict) and ``sanity.png`` (:func:`cascade_figure`)."""
    check = comparison.sanity
    label = comparison.entries[check.evaluation].label
    csv_path, png_path = out / "sanity.csv", out / "sanity.png"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "evaluation", "step", "spearman", "topk_iou", "check"])
        for method, cascade in check.cascades.items():
            verdict = "fail" if cascade.fails() else "pass"
            for step, spearman, iou in cascade.summary():
                writer.writerow([method, label, step, _number(spearman), _number(iou), verdict])
    summaries = {panels.method_title(m): c.summary() for m, c in check.cascades.items()}
    cascade_figure(summaries).savefig(png_path, dpi=100)
    return [csv_path, png_path]


def _markdown_table(
    corner: str, columns: Sequence[str], rows: Sequence[str], cells: Sequence[Sequence[str]]
) -> list[str]:
    lines = [
        "| " + " | ".join([corner, *columns]) + " |",
        "| " + " | ".join(["---"] * (len(columns) + 1)) + " |",
    ]
    for name, row in zip(rows, cells, strict=True):
        lines.append("| " + " | ".join([name, *row]) + " |")
    return lines


def write_drift(comparison: Comparison, out: Path) -> list[Path]:
    """``drift_<statistic>.csv`` matrices and ``drift.png``: the heatmaps beside the maps'
    reliability."""
    labels = [e.label for e in comparison.entries]
    paths = []
    for name, matrix in comparison.drift.items():
        path = out / f"drift_{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["evaluation", *labels])
            for label, row in zip(labels, matrix.tolist(), strict=True):
                writer.writerow([label, *(_number(v) for v in row)])
        paths.append(path)
    path = out / "drift.png"
    reliability = [
        e.evaluation.metrics.get("map_reliability", math.nan) for e in comparison.entries
    ]
    drift_figure(comparison.drift, reliability).savefig(path, dpi=100)
    return [*paths, path]


def drift_figure(
    drift: Mapping[str, torch.Tensor], reliability: Sequence[float] | None = None
) -> Figure:
    """Side-by-side heatmaps of the drift matrices, ticks ``#i``, numbers printed when they fit;
    then, given each evaluation's mean map ``reliability`` (NaN: unknown), a bar per evaluation:
    the drift a reseeded run of the same model would show, the noise to read the drift against.
    """
    count = next(iter(drift.values())).shape[0]
    if reliability is not None and len(reliability) != count:
        raise ValueError(
            f"reliability must hold one value per evaluation ({count}), got {len(reliability)}"
        )
    ticks = [f"#{i}" for i in range(count)]
    side = max(3.5, 0.45 * count + 1.5)
    columns = len(drift) + (reliability is not None)
    ratios = [1.0] * len(drift) + [0.6] * (reliability is not None)
    figure = Figure(figsize=(side * sum(ratios) + 1, side), layout="constrained")
    panels_row = figure.subplots(1, columns, squeeze=False, width_ratios=ratios)[0]
    for axes, (name, matrix) in zip(panels_row, drift.items(), strict=False):
        low = -1.0 if name == "spearman" else 0.0
        image = axes.imshow(matrix.numpy(), vmin=low, vmax=1.0, cmap="viridis")
        axes.set_title(f"Drift: {DRIFT_TITLES[name]}")
        axes.set_xticks(range(count), ticks)
        axes.set_yticks(range(count), ticks)
        axes.set(xlabel="evaluation", ylabel="evaluation")
        figure.colorbar(image, ax=axes, shrink=0.8)
        if count > MAX_ANNOTATED:
            continue
        for row, values in enumerate(matrix.tolist()):
            for column, value in enumerate(values):
                colour = "black" if value > (low + 1.0) / 2 else "white"
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", color=colour)
    if reliability is not None:
        _reliability_bars(panels_row[-1], reliability, ticks)
    return figure


def _reliability_bars(axes: Axes, reliability: Sequence[float], ticks: Sequence[str]) -> None:
    """One horizontal bar per evaluation, rows aligned with the heatmaps' rows."""
    known = [value if math.isfinite(value) else 0.0 for value in reliability]
    axes.barh(range(len(ticks)), known, color="tab:gray")
    axes.set_yticks(range(len(ticks)), ticks)
    axes.set_ylim(len(ticks) - 0.5, -0.5)
    axes.set_xlim(min(0.0, *known), 1.15)  # room for the numbers
    axes.set(title="Map reliability\n(reseeded agreement)", xlabel="Spearman")
    if len(ticks) > MAX_ANNOTATED:
        return
    for index, (value, length) in enumerate(zip(reliability, known, strict=True)):
        text = f"{value:.2f}" if math.isfinite(value) else "n/a"
        axes.text(max(length, 0.0) + 0.02, index, text, va="center")


def write_tensorboard(comparison: Comparison, directory: Path, *, progress: bool = False) -> None:
    """Scalars ``dave/<metric>`` and panels ``dave/probe/<i>`` at each evaluation's step.

    One TensorBoard run per source run (a sub-directory each when there are several), so that
    evaluations of different trainings do not share a step axis. The scalars and pictures go
    through Lightning's ``TensorBoardLogger`` and the monitor's own sink and panels.
    """
    runs = list(dict.fromkeys(e.run for e in comparison.entries))
    bar = tqdm(runs, desc="TensorBoard", disable=None if progress else True)
    for run in bar:
        run_dir = directory if len(runs) == 1 else directory / re.sub(r"[^\w.=-]+", "_", run)
        logger = TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False)
        sinks = [TensorBoardSink(logger.experiment)]
        for index, entry in enumerate(comparison.entries):
            if entry.run != run:
                continue
            evaluation = entry.evaluation
            step = index if evaluation.global_step is None else evaluation.global_step
            logger.log_metrics({f"dave/{k}": v for k, v in evaluation.metrics.items()}, step=step)
            count = len(evaluation.targets)
            pictures = panels.evaluation_pictures(
                "dave", evaluation, comparison.images01, step, count
            )
            pictures.send(sinks, step)
        logger.finalize("success")


def _number(value: float) -> str:
    return f"{value:.6g}"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value
