"""Compare attribution maps across evaluations: DAVEMonitor snapshots or Lightning checkpoints.

Each evaluation (one snapshot, or one checkpoint evaluated on a probe) is one column of the
report: a PNG per probe image, a metrics table (Markdown, CSV, JSON), the drift matrices between
evaluations (CSV, JSON, heatmap) and, on request, a TensorBoard run. Only evaluations of the
same probe images are compared: drift between maps of different pictures means nothing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from dave_lightning import viz
from dave_lightning.errors import UsageError
from dave_lightning.evaluation import METRICS, ProbeEvaluator, drift_metrics
from dave_lightning.loading import import_class, load_lightning_module, load_probe
from dave_lightning.metrics import _stats
from dave_lightning.probe import Probe
from dave_lightning.snapshot import list_snapshots, load_snapshot

DRIFT_STATISTICS = ("spearman", "topk_iou")
DRIFT_TITLES = {"spearman": "Spearman", "topk_iou": "top-10 % IoU"}
MAX_ANNOTATED = 12  # drift heatmaps print their numbers up to this many evaluations


@dataclass
class ComparedEvaluation:
    """One column of a comparison: DAVE maps (N, 1, H, W) and metrics of one evaluation."""

    label: str
    source: str
    run: str
    epoch: int | None
    global_step: int | None
    maps: torch.Tensor
    targets: torch.Tensor
    predictions: torch.Tensor
    metrics: dict[str, float]


@dataclass
class Comparison:
    """Evaluations of one probe, their drift (statistic → (E, E) mean over the probe images),
    the shared settings, and the probe images in [0, 1] for overlays when they are known."""

    evaluations: list[ComparedEvaluation]
    drift: dict[str, torch.Tensor]
    settings: dict[str, Any]
    images01: torch.Tensor | None = None


# ------------------------------------------------------------------------------- snapshots


def find_snapshots(paths: Sequence[str | Path]) -> list[Path]:
    """Snapshot files from files, monitor log dirs (holding ``dave/``) or snapshot dirs."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = list_snapshots(path / "dave") or list_snapshots(path)
            if not found:
                raise UsageError(
                    f"{path}: no step_*.pt snapshots in it or in {path / 'dave'}; pass a "
                    "DAVEMonitor log dir (e.g. lightning_logs/version_0), its dave/ folder or "
                    "snapshot files"
                )
            files.extend(found)
        else:
            raise UsageError(
                f"{path}: no such file or directory; pass monitor run dirs or step_*.pt files"
            )
    return list(dict.fromkeys(files))


def compare_snapshots(
    paths: Sequence[str | Path],
    *,
    steps: Sequence[int] | None = None,
    progress: bool = False,
) -> Comparison:
    """Compare DAVEMonitor snapshots (all of them, or those at ``steps``) of the same probe."""
    files = find_snapshots(paths)
    bar = tqdm(files, desc="loading snapshots", unit="file", disable=None if progress else True)
    records = [(path, load_snapshot(path)) for path in bar]
    if steps is not None:
        records = _select_steps(records, steps)
    _check_same_probe(records)
    run_dirs = [_run_dir(path) for path, _ in records]
    names = _run_names(run_dirs)
    evaluations = [
        ComparedEvaluation(
            label=_label(names, run_dir, f"step {record['global_step']}"),
            source=str(path),
            run=names[run_dir],
            epoch=record["epoch"],
            global_step=record["global_step"],
            maps=record["maps"].float(),
            targets=record["targets"],
            predictions=record["predictions"],
            metrics=dict(record["metrics"]),
        )
        for (path, record), run_dir in zip(records, run_dirs, strict=True)
    ]
    last = records[-1][1]
    # the monitor stores the probe images in a run's first snapshot only
    with_images = next((record for _, record in records if "images" in record), last)
    return Comparison(
        evaluations=evaluations,
        drift=drift_matrix([e.maps for e in evaluations], progress=progress),
        settings=dict(last["settings"]),
        images01=_snapshot_images(with_images),
    )


def _select_steps(
    records: list[tuple[Path, dict[str, Any]]], steps: Sequence[int]
) -> list[tuple[Path, dict[str, Any]]]:
    """The records at the requested global steps; an unknown step lists the available ones."""
    available = sorted({record["global_step"] for _, record in records})
    missing = sorted(set(steps) - set(available))
    if missing:
        raise UsageError(f"no snapshot at steps {missing}; --steps can pick from {available}")
    return [(path, record) for path, record in records if record["global_step"] in set(steps)]


def _check_same_probe(records: list[tuple[Path, dict[str, Any]]]) -> None:
    """Refuse snapshots of different probe images (or of an unknown probe)."""
    first_path, first = records[0]
    reference = first["settings"].get("probe_sha256")
    for path, record in records:
        digest = record["settings"].get("probe_sha256")
        if digest is None:
            raise UsageError(
                f"{path}: the snapshot's settings lack probe_sha256, so it cannot be checked "
                "that the evaluations share a probe; compare snapshots written by DAVEMonitor"
            )
        if digest != reference:
            raise UsageError(
                f"refusing to compare {first_path} and {path}: they were computed on different "
                f"probe images (probe_sha256 {reference[:12]}… vs {digest[:12]}…), so their maps "
                "show different pictures; compare runs that share the same probe"
            )


def _run_dir(path: Path) -> Path:
    """The run a snapshot belongs to: the log dir above ``dave/``, else its own directory."""
    parent = path.resolve().parent
    return parent.parent if parent.name == "dave" else parent


def _run_names(run_dirs: Sequence[Path]) -> dict[Path, str]:
    """Short distinct names for runs: directory names, or relative paths when those clash."""
    distinct = list(dict.fromkeys(run_dirs))
    names = [d.name for d in distinct]
    if len(set(names)) < len(names):
        names = [os.path.relpath(d) for d in distinct]
    return dict(zip(distinct, names, strict=True))


def _label(names: Mapping[Path, str], run_dir: Path, what: str) -> str:
    return what if len(names) == 1 else f"{names[run_dir]} {what}"


def _snapshot_images(record: Mapping[str, Any]) -> torch.Tensor | None:
    """Probe images in [0, 1] when the snapshot carries them (optional ``images`` key)."""
    images = record.get("images")
    if images is None:
        return None
    settings = record["settings"]
    mean = record.get("mean", settings.get("mean"))
    std = record.get("std", settings.get("std"))
    if mean is None or std is None:  # min-max scaled instead
        return viz.denormalize(images.float())
    return viz.denormalize(images.float(), mean, std)


# ----------------------------------------------------------------------------- checkpoints


def compare_checkpoints(
    checkpoints: Sequence[str | Path],
    module: str | type[nn.Module],
    *,
    probe: str | Path | Probe = "synthetic",
    masks: str | Path | None = None,
    num_probe: int = 16,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    engine: Mapping[str, Any] | None = None,
    metrics: Sequence[str] = METRICS,
    compare_methods: Sequence[str] = ("input_x_gradient",),
    target: str = "label",
    trust: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Comparison:
    """Evaluate each Lightning checkpoint of ``module`` on one probe with one seed, and compare.

    ``module`` is the LightningModule class or ``"pkg.mod:Class"``; ``probe`` is ``"synthetic"``,
    an ImageFolder-style directory (``masks``: PNG masks at the same relative paths) or a
    :class:`Probe` (normalised with ``mean``/``std``); ``engine`` holds DAVE's keyword arguments.
    Checkpoints that need full unpickling are refused unless ``trust``.
    """
    cls = import_class(module) if isinstance(module, str) else module
    paths = [Path(p) for p in checkpoints]
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such checkpoint file; check the path")
    run_dirs = [path.resolve().parent for path in paths]
    names = _run_names(run_dirs)
    evaluator: ProbeEvaluator | None = None
    images01 = None
    evaluations: list[ComparedEvaluation] = []
    bar = tqdm(paths, desc="evaluating checkpoints", disable=None if progress else True)
    for path, run_dir in zip(bar, run_dirs, strict=True):
        model, info = load_lightning_module(path, cls, trust=trust)
        model.to(device)
        if evaluator is None:
            probe_set, normal = _resolve_probe(
                probe, model, masks, num_probe, image_size, mean, std
            )
            images01 = viz.denormalize(probe_set.images, *normal)
            evaluator = ProbeEvaluator(
                probe_set,
                engine=dict(engine or {}),
                metrics=metrics,
                compare_methods=compare_methods,
                target=target,
            )
        result = evaluator.evaluate(model)
        maps = result.maps["dave"]
        if "drift" in metrics and evaluations:
            result.metrics.update(drift_metrics(maps, evaluations[-1].maps, "previous"))
            result.metrics.update(drift_metrics(maps, evaluations[0].maps, "first"))
        evaluations.append(
            ComparedEvaluation(
                label=_label(names, run_dir, path.stem),
                source=str(path),
                run=names[run_dir],
                epoch=info["epoch"],
                global_step=info["global_step"],
                maps=maps,
                targets=result.targets,
                predictions=result.predictions,
                metrics=dict(result.metrics),
            )
        )
    return Comparison(
        evaluations=evaluations,
        drift=drift_matrix([e.maps for e in evaluations], progress=progress),
        settings=evaluator.settings(),
        images01=images01,
    )


def _resolve_probe(
    probe: str | Path | Probe,
    model: nn.Module,
    masks: str | Path | None,
    num_probe: int,
    image_size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[Probe, tuple[Sequence[float] | None, Sequence[float] | None]]:
    """A given :class:`Probe` with its normalisation, or one loaded for ``model``."""
    if isinstance(probe, Probe):
        return probe, (mean, std)
    return load_probe(
        probe,
        model,
        num_probe=num_probe,
        image_size=image_size,
        mean=mean,
        std=std,
        masks=masks,
    )


# ----------------------------------------------------------------------------------- drift


def drift_matrix(
    maps: Sequence[torch.Tensor], *, top_fraction: float = 0.1, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Drift between every pair of evaluations' maps, averaged over the probe images.

    Returns statistic → (E, E) float64, symmetric; the diagonal is each evaluation with itself
    (1, or NaN where maps are constant or not finite). The numbers are those of
    :func:`attribution_drift` on each pair, but ranks and top-k masks are computed once per
    evaluation, so E evaluations cost E rankings instead of E².
    """
    ranks, tops, defined = [], [], []
    bar = tqdm(maps, desc="ranking maps", disable=None if progress else True)
    for evaluation_maps in bar:
        values = evaluation_maps.flatten(1).double()
        finite = torch.isfinite(values).all(1)
        values = torch.where(finite[:, None], values, 0.0)
        centred = _stats.average_ranks(values)
        centred = centred - centred.mean(1, keepdim=True)
        ranks.append((centred / centred.norm(dim=1, keepdim=True).clamp(min=1e-12)).float())
        tops.append(_stats.top_mask(values, fraction=top_fraction))
        defined.append(finite & (values.amax(1) > values.amin(1)))
    per_image = {name: [] for name in DRIFT_STATISTICS}
    for image in range(maps[0].shape[0]):
        z = torch.stack([r[image] for r in ranks]).double()
        top = torch.stack([t[image] for t in tops]).double()
        inter = top @ top.T
        counts = top.sum(1)
        per_image["spearman"].append((z @ z.T).clamp(-1.0, 1.0))
        per_image["topk_iou"].append(inter / (counts[:, None] + counts[None, :] - inter))
    valid = torch.stack(defined, 1)  # (N, E)
    pairs = valid[:, :, None] & valid[:, None, :]
    return {
        name: torch.where(pairs, torch.stack(values), torch.nan).nanmean(0)
        for name, values in per_image.items()
    }


# ---------------------------------------------------------------------------------- report


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
        raise UsageError(f"--out {out} is a file; pass a directory for the report")
    out.mkdir(parents=True, exist_ok=True)
    written = write_map_panels(comparison, out, progress=progress)
    written += write_metrics(comparison, out)
    written += write_drift(comparison, out)
    if tensorboard is not None:
        write_tensorboard(comparison, Path(tensorboard), progress=progress)
    return written


def probe_panels(comparison: Comparison) -> list[torch.Tensor]:
    """Per probe image, a (3, H, W') row: the image (when known), then its map per evaluation."""
    columns = []
    for evaluation in comparison.evaluations:
        if comparison.images01 is None:
            columns.append(viz.colorize(evaluation.maps))
        else:
            columns.append(viz.overlay(comparison.images01, evaluation.maps))
    panels = []
    for index in range(comparison.evaluations[0].maps.shape[0]):
        row = [column[index] for column in columns]
        if comparison.images01 is not None:
            row.insert(0, comparison.images01[index])
        panels.append(viz.make_panel(row))
    return panels


def write_map_panels(comparison: Comparison, out: Path, *, progress: bool = False) -> list[Path]:
    """``maps_probe_<i>.png`` per probe image: the image (when known), then each evaluation."""
    paths = []
    panels = probe_panels(comparison)
    bar = tqdm(panels, desc="writing PNGs", disable=None if progress else True)
    for index, panel in enumerate(bar):
        path = out / f"maps_probe_{index}.png"
        viz.save_png(panel, path)
        paths.append(path)
    return paths


def metric_names(comparison: Comparison) -> list[str]:
    """Every metric of any evaluation, in order of first appearance."""
    names = (name for e in comparison.evaluations for name in e.metrics)
    return list(dict.fromkeys(names))


def write_metrics(comparison: Comparison, out: Path) -> list[Path]:
    """``metrics.csv`` (a row per evaluation), ``metrics.md`` and ``metrics.json``."""
    names = metric_names(comparison)
    csv_path, md_path, json_path = out / "metrics.csv", out / "metrics.md", out / "metrics.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["evaluation", "source", "epoch", "global_step", *names])
        for e in comparison.evaluations:
            values = [_number(e.metrics.get(name, math.nan)) for name in names]
            writer.writerow([e.label, e.source, e.epoch, e.global_step, *values])
    md_path.write_text(markdown_report(comparison, names))
    record = {
        "evaluations": [
            {
                "label": e.label,
                "source": e.source,
                "run": e.run,
                "epoch": e.epoch,
                "global_step": e.global_step,
                "metrics": {k: _json_number(v) for k, v in e.metrics.items()},
                "targets": e.targets.tolist(),
                "predictions": e.predictions.tolist(),
            }
            for e in comparison.evaluations
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
    labels = [e.label for e in comparison.evaluations]
    settings = comparison.settings
    lines = [
        "# DAVE comparison",
        "",
        f"Probe: {settings.get('probe_size')} images, sha256 {settings.get('probe_sha256')}. "
        f"Engine: {settings.get('engine')}.",
        "Columns of `maps_probe_<i>.png`: "
        + ("the image, then " if comparison.images01 is not None else "")
        + "the evaluations in this order.",
        "",
        "| # | evaluation | epoch | global step | source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for index, e in enumerate(comparison.evaluations):
        lines.append(f"| {index} | {e.label} | {e.epoch} | {e.global_step} | `{e.source}` |")
    lines += [
        "",
        "## Metrics",
        "",
        *_markdown_table("metric", labels, names, _metric_rows(comparison, names)),
    ]
    for name, matrix in comparison.drift.items():
        lines += ["", f"## Drift ({DRIFT_TITLES[name]}, mean over the probe)", ""]
        lines += _markdown_table("", labels, labels, matrix.tolist())
    return "\n".join(lines) + "\n"


def _metric_rows(comparison: Comparison, names: Sequence[str]) -> list[list[float]]:
    return [[e.metrics.get(name, math.nan) for e in comparison.evaluations] for name in names]


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
    labels = [e.label for e in comparison.evaluations]
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
    drift_figure(comparison.drift, labels).savefig(path, dpi=100)
    return [*paths, path]


def drift_figure(drift: Mapping[str, torch.Tensor], labels: Sequence[str]) -> Figure:
    """Side-by-side heatmaps of the drift matrices, numbers printed when they fit."""
    count = len(labels)
    side = max(3.5, 0.45 * count + 1.5)
    figure = Figure(figsize=(side * len(drift) + 1, side), layout="constrained")
    for axes, (name, matrix) in zip(
        figure.subplots(1, len(drift), squeeze=False)[0], drift.items(), strict=True
    ):
        low = -1.0 if name == "spearman" else 0.0
        image = axes.imshow(matrix.numpy(), vmin=low, vmax=1.0, cmap="viridis")
        axes.set_title(f"Drift: {DRIFT_TITLES[name]}")
        axes.set_xticks(range(count), labels, rotation=90)
        axes.set_yticks(range(count), labels)
        figure.colorbar(image, ax=axes, shrink=0.8)
        if count > MAX_ANNOTATED:
            continue
        for row, values in enumerate(matrix.tolist()):
            for column, value in enumerate(values):
                colour = "black" if value > (low + 1.0) / 2 else "white"
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", color=colour)
    return figure


def write_tensorboard(comparison: Comparison, directory: Path, *, progress: bool = False) -> None:
    """Scalars ``dave/<metric>`` and images ``dave/probe/<i>`` at each evaluation's step.

    One TensorBoard run per source run (a sub-directory each when there are several), so that
    evaluations of different trainings do not share a step axis.
    """
    from torch.utils.tensorboard import SummaryWriter  # slow import, only when asked for

    runs = list(dict.fromkeys(e.run for e in comparison.evaluations))
    bar = tqdm(runs, desc="TensorBoard", disable=None if progress else True)
    for run in bar:
        run_dir = directory if len(runs) == 1 else directory / re.sub(r"[^\w.=-]+", "_", run)
        writer = SummaryWriter(run_dir)
        for index, e in enumerate(comparison.evaluations):
            if e.run != run:
                continue
            step = index if e.global_step is None else e.global_step
            for name, value in e.metrics.items():
                writer.add_scalar(f"dave/{name}", value, global_step=step)
            single = Comparison([e], comparison.drift, comparison.settings, comparison.images01)
            for image_index, panel in enumerate(probe_panels(single)):
                writer.add_image(f"dave/probe/{image_index}", panel, global_step=step)
        writer.close()


def _number(value: float) -> str:
    return f"{value:.6g}"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value
