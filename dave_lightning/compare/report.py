"""The comparison report: per-image panels, metric tables, drift matrices, a TensorBoard run.

Evaluations are numbered ``#0``, ``#1``, … in the order of ``metrics.md``'s table; the panels'
columns and the drift heatmap's ticks use those numbers.
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
from matplotlib.figure import Figure
from tqdm import tqdm

from dave_lightning import panels, viz
from dave_lightning.compare.sources import Comparison
from dave_lightning.core.errors import UsageError
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
    """``metrics.csv`` (a row per evaluation), ``metrics.md`` and ``metrics.json``."""
    names = metric_names(comparison)
    csv_path, md_path, json_path = out / "metrics.csv", out / "metrics.md", out / "metrics.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["evaluation", "source", "epoch", "global_step", *names])
        for e in comparison.entries:
            values = [_number(e.evaluation.metrics.get(name, math.nan)) for name in names]
            writer.writerow(
                [e.label, e.source, e.evaluation.epoch, e.evaluation.global_step, *values]
            )
    md_path.write_text(markdown_report(comparison, names))
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
                "targets": e.evaluation.targets.tolist(),
                "predictions": e.evaluation.predictions.tolist(),
            }
            for number, e in enumerate(comparison.entries)
        ],
        "drift": {
            name: [[_json_number(v) for v in row] for row in matrix.tolist()]
            for name, matrix in comparison.drift.items()
        },
        "settings": comparison.settings,
    }
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return [csv_path, md_path, json_path]


def markdown_report(comparison: Comparison, names: Sequence[str]) -> str:
    """The evaluations, a metric-by-evaluation table and the drift matrices, in Markdown."""
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
        *_markdown_table("metric", numbers, names, _rows(comparison, names)),
    ]
    for name, matrix in comparison.drift.items():
        lines += ["", f"## Drift ({DRIFT_TITLES[name]}, mean over the probe)", ""]
        lines += _markdown_table("", numbers, numbers, matrix.tolist())
    return "\n".join(lines) + "\n"


def _rows(comparison: Comparison, names: Sequence[str]) -> list[list[float]]:
    return [[e.evaluation.metrics.get(n, math.nan) for e in comparison.entries] for n in names]


def _markdown_table(
    corner: str, columns: Sequence[str], rows: Sequence[str], values: Sequence[Sequence[float]]
) -> list[str]:
    lines = [
        "| " + " | ".join([corner, *columns]) + " |",
        "| " + " | ".join(["---"] * (len(columns) + 1)) + " |",
    ]
    for name, row in zip(rows, values, strict=True):
        lines.append("| " + " | ".join([name, *(f"{v:.4f}" for v in row)]) + " |")
    return lines


def write_drift(comparison: Comparison, out: Path) -> list[Path]:
    """``drift_<statistic>.csv`` matrices and the ``drift.png`` heatmaps."""
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
    drift_figure(comparison.drift).savefig(path, dpi=100)
    return [*paths, path]


def drift_figure(drift: Mapping[str, torch.Tensor]) -> Figure:
    """Side-by-side heatmaps of the drift matrices, ticks ``#i``, numbers printed when they fit."""
    count = next(iter(drift.values())).shape[0]
    ticks = [f"#{i}" for i in range(count)]
    side = max(3.5, 0.45 * count + 1.5)
    figure = Figure(figsize=(side * len(drift) + 1, side), layout="constrained")
    for axes, (name, matrix) in zip(
        figure.subplots(1, len(drift), squeeze=False)[0], drift.items(), strict=True
    ):
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
    return figure


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
