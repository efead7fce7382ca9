"""The offline demo: a small timm ViT learns SyntheticShapes on the CPU while DAVEMonitor watches.

``dave-lightning demo`` (and ``make demo``) calls :func:`run_demo`. It writes TensorBoard logs,
DAVE snapshots, a checkpoint and a report PNG under ``<out>/<run>/version_<n>/`` and prints one
table row per evaluation plus a plain-words summary. ``--shortcut`` plants a class-coloured
corner marker in a share of the training and probe images (never in val) and tracks the
attribution share on it with the monitor's region alarm; ``--shortcut-rate 0`` is the control
(the corner is tracked, no marker is drawn). The model and data live in ``dave_lightning.data``
(the examples and benchmarks use them too).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dave_lightning import viz
from dave_lightning.callback import DAVEMonitor
from dave_lightning.core.validation import check_number
from dave_lightning.data import ShapesClassifier, ShapesDataModule
from dave_lightning.data.shapes import NUM_CLASSES
from dave_lightning.snapshot import list_snapshots, load_evaluation

SHORTCUT_RATE = 0.9  # share of train and probe images that carry the marker with --shortcut
REPORT_IMAGES = 6  # probe images shown in the report's progression


@dataclass(frozen=True)
class DemoSettings:
    """Sizes, schedule and monitor settings of a demo run."""

    epochs: int
    image_size: int
    train_size: int
    val_size: int
    batch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    lr: float
    num_probe: int
    monitor: dict[str, int] = field(default_factory=dict)  # DAVEMonitor settings besides defaults
    limit_train_batches: int | None = None


# The default run (timed in docs/benchmarks.md) and --fast, a smoke test of every stage:
# setting → (default, fast).
SIZES: dict[str, tuple[float, float]] = {
    "epochs": (6, 2),
    "image_size": (64, 32),
    "train_size": (8192, 64),
    "val_size": (512, 32),
    "batch_size": (32, 16),
    "embed_dim": (96, 32),
    "depth": (4, 2),
    "num_heads": (3, 2),
    "lr": (2e-3, 2e-3),
    "num_probe": (16, 4),
}
DEFAULT = DemoSettings(**{name: sizes[0] for name, sizes in SIZES.items()})
FAST = DemoSettings(
    **{name: sizes[1] for name, sizes in SIZES.items()},
    monitor={"n_samples": 2, "deletion_steps": 8},
    limit_train_batches=2,
)


# Table columns: key in the rows (monitor metrics plus train/val accuracy) → header.
COLUMNS = {
    "train_acc": "train acc",
    "val_acc": "val acc",
    "probe_accuracy": "probe acc",
    "energy_pg": "EnergyPG",
    "grid_pg": "GridPG",
    "stability_spearman": "stability",
    "patch_artifact": "patch art",
    "deletion_lerf_blur": "del LeRF",
    "deletion_morf_blur": "del MoRF",
    "deletion_random_blur": "del rand",
}
MARKER_COLUMN = {"region_marker": "marker"}
REGION = "marker"  # the tracked region's name: its share is logged as dave/region_marker
REGION_KEY, ALERT = f"region_{REGION}", f"alert/{REGION}"
LEGEND = """\
Columns: accuracies, then DAVE on the probe images: EnergyPG / GridPG = share of attribution on
the object / on its own cell of a 2x2 grid (higher is better); stability = Spearman correlation
of attr(T x) with T attr(x) for a small shift and rotation T; patch art = patch-grid artifact
score (lower is better); del = pixel-deletion AUC (blur), least relevant first (LeRF, higher is
better), most relevant first (MoRF, lower is better) and in random order (control). GridPG,
stability and deletion need extra model passes: they are computed at every third evaluation
and the last one (DAVEMonitor's slow_metrics_every) and show "-" in between."""
MARKER_LEGEND = """
marker = share of attribution on the top-left corner square where the marker is drawn, in every
probe image (with or without the marker); the region alarm compares it with the square's share
of the pixels."""


def table_columns(tracked: bool) -> dict[str, str]:
    """The table's columns: the marker share's too when the run tracks the corner region."""
    return {**COLUMNS, **(MARKER_COLUMN if tracked else {})}


def format_header(columns: dict[str, str]) -> str:
    return " | ".join(["epoch", *(f"{name:>9}" for name in columns.values())])


def format_row(row: dict[str, float], columns: dict[str, str]) -> str:
    cells = [f"{row['epoch']:>5}"]
    for key in columns:
        value = row.get(key, math.nan)
        cells.append(f"{value:>9.3f}" if math.isfinite(value) else f"{'-':>9}")
    return " | ".join(cells)


def format_table(rows: Sequence[dict[str, float]], columns: dict[str, str]) -> str:
    return "\n".join([format_header(columns), *(format_row(row, columns) for row in rows)])


class EvaluationTable(pl.Callback):
    """Collects one row per DAVEMonitor evaluation (with train/val accuracy) and prints it.

    A row holds the evaluation's step and epoch, its metrics (the region alarm's
    ``alert/<region>`` among them) and their interval bounds as ``<metric>/low`` and
    ``<metric>/high``. Must come after the monitor in ``callbacks`` so that its hooks see the
    new evaluation.
    """

    def __init__(self, monitor: DAVEMonitor, columns: dict[str, str], live: bool) -> None:
        self.monitor = monitor
        self.columns = columns
        self.live = live
        self.rows: list[dict[str, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.live:
            print(format_header(self.columns), flush=True)
        self._collect(epochs=0, accuracy={})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: ShapesClassifier) -> None:
        accuracy = {"train_acc": pl_module.accuracy("train"), "val_acc": pl_module.accuracy("val")}
        self._collect(epochs=trainer.current_epoch + 1, accuracy=accuracy)

    def _collect(self, epochs: int, accuracy: dict[str, float]) -> None:
        """Add a row if the monitor has evaluated since the last one."""
        history = self.monitor.history
        if not history or (self.rows and self.rows[-1]["step"] == history[-1]["global_step"]):
            return
        row = {"epoch": epochs, "step": history[-1]["global_step"], **accuracy}
        row.update(history[-1]["metrics"])
        for key, (low, high) in history[-1]["intervals"].items():
            row[f"{key}/low"], row[f"{key}/high"] = low, high
        self.rows.append(row)
        if self.live:
            print(format_row(row, self.columns), flush=True)


@dataclass(frozen=True)
class DemoRun:
    """A finished demo fit: its table rows (one per evaluation) and where it wrote.

    ``shortcut_rate`` is None for a run without the marker region; with it, ``pixel_share`` is
    the tracked region's share of the pixels and ``alert_ratio`` and ``confidence`` are the
    monitor's alarm settings.
    """

    rows: list[dict[str, float]]
    log_dir: Path
    snapshot_dir: Path
    images01: torch.Tensor
    shortcut_rate: float | None
    pixel_share: float
    alert_ratio: float
    confidence: float

    def alarm(self) -> dict[str, float] | None:
        """The row of the first evaluation that raised the region alarm, or None."""
        return next((row for row in self.rows if row.get(ALERT) == 1.0), None)


def summary(run: DemoRun) -> list[str]:
    """Plain-words reading of the evaluations: did the model learn, where do the maps point."""
    rows = run.rows
    first, last = rows[0], rows[-1]
    chance = 1 / NUM_CLASSES
    val = last["val_acc"]
    learned = "The model learned" if val >= 2 * chance else "The model stayed near chance"
    lines = [
        f"{learned}: val accuracy {val:.2f} after {last['epoch']} epochs (chance {chance:.2f})."
    ]
    energy_first, energy_last = first["energy_pg"], last["energy_pg"]
    if run.shortcut_rate is None:
        verb = "rose" if energy_last > energy_first else "did not rise"
        lines.append(
            f"EnergyPG (share of DAVE attribution on the object) {verb}: {energy_first:.2f} "
            f"untrained, {energy_last:.2f} at the last evaluation."
        )
        deleted = [row for row in rows if "deletion_lerf_blur" in row]
        if deleted:
            lerf, random = deleted[-1]["deletion_lerf_blur"], deleted[-1]["deletion_random_blur"]
            verb = "keeps" if lerf > random else "does not keep"
            lines.append(
                f"Deleting the least relevant pixels first {verb} the class probability higher "
                f"than a random order (deletion AUC {lerf:.2f} against {random:.2f} at epoch "
                f"{deleted[-1]['epoch']})."
            )
        return lines
    return lines + _shortcut_lines(run)


def _shortcut_lines(run: DemoRun) -> list[str]:
    """The shortcut run's reading: the region alarm's verdict, then the numbers behind it."""
    first, last = run.rows[0], run.rows[-1]
    peak = max(run.rows, key=lambda row: row["energy_pg"])
    level = f"{run.confidence:.0%}"
    limit = run.alert_ratio * run.pixel_share
    if run.shortcut_rate > 0:
        setup = (
            f"Shortcut: {run.shortcut_rate:.0%} of the training and probe images carry a "
            "class-coloured square in the top-left corner "
            f"({run.pixel_share:.1%} of the pixels); val images never do."
        )
    else:
        setup = (
            "Control: no image carries the marker; the monitor tracks the top-left corner "
            f"square where it would be ({run.pixel_share:.1%} of the pixels)."
        )
    alarm = run.alarm()
    if alarm is not None:
        verdict = (
            f"Region alarm raised at step {alarm['step']} (epoch {alarm['epoch']}): DAVE put "
            f"{_with_interval(alarm, REGION_KEY)} ({level} interval) of its attribution on the "
            f"corner square; the interval's lower bound exceeds {run.alert_ratio:g} x its "
            f"{run.pixel_share:.3f} share of the pixels ({limit:.3f})."
        )
    else:
        verdict = (
            f"Region alarm never raised: the lower bound of the corner square's attribution "
            f"share stayed at or below {run.alert_ratio:g} x its {run.pixel_share:.3f} share "
            f"of the pixels ({limit:.3f})"
        )
        bounded = [row for row in run.rows if f"{REGION_KEY}/low" in row]
        if bounded:
            top = max(bounded, key=lambda row: row[f"{REGION_KEY}/low"])
            verdict += (
                f"; its highest lower bound was {top[f'{REGION_KEY}/low']:.3f} (epoch "
                f"{top['epoch']})"
            )
        verdict += "."
    return [
        setup,
        verdict,
        f"At the last evaluation the corner square held {_with_interval(last, REGION_KEY)} of "
        f"the attribution. EnergyPG (on the object): {_with_interval(first, 'energy_pg')} "
        f"untrained, peak {_with_interval(peak, 'energy_pg')} (epoch {peak['epoch']}), last "
        f"{_with_interval(last, 'energy_pg')}.",
        f"Train accuracy {last['train_acc']:.2f} against val accuracy {last['val_acc']:.2f}: a "
        f"gap of {last['train_acc'] - last['val_acc']:+.2f} (val images never carry the "
        "marker).",
    ]


def _with_interval(row: dict[str, float], key: str) -> str:
    """``value [low, high]`` of a metric in a table row (the value alone without an interval:
    fewer than two probe images had a value)."""
    if f"{key}/low" not in row:
        return f"{row[key]:.2f}"
    return f"{row[key]:.2f} [{row[f'{key}/low']:.2f}, {row[f'{key}/high']:.2f}]"


# Report panels: title → (key in the table rows, legend label) pairs.
CURVES = {
    "accuracy": (("train_acc", "train"), ("val_acc", "val"), ("probe_accuracy", "probe")),
    "localisation (DAVE)": (
        ("energy_pg", "EnergyPG"),
        ("grid_pg", "GridPG"),
        ("region_marker", "marker share"),
    ),
    "EnergyPG": (("energy_pg", "DAVE"), ("input_x_gradient/energy_pg", "input x gradient")),
    "stability (Spearman)": (
        ("stability_spearman", "DAVE"),
        ("input_x_gradient/stability_spearman", "input x gradient"),
    ),
    "patch-artifact score": (
        ("patch_artifact", "DAVE"),
        ("input_x_gradient/patch_artifact", "input x gradient"),
    ),
    "deletion AUC (DAVE, blur)": (
        ("deletion_lerf_blur", "least relevant first"),
        ("deletion_morf_blur", "most relevant first"),
        ("deletion_random_blur", "random order"),
    ),
}


def write_demo_report(
    path: Path, rows: Sequence[dict[str, float]], snapshot_dir: Path, images01: torch.Tensor
) -> None:
    """One PNG: DAVE maps of a few probe images at every evaluation, then the metric curves."""
    epoch_of = {row["step"]: row["epoch"] for row in rows}
    records = [load_evaluation(p) for p in list_snapshots(snapshot_dir)]
    records = [r for r in records if r.global_step in epoch_of]
    shown = min(REPORT_IMAGES, images01.shape[0])
    overlays = [viz.overlay(images01[:shown], r.maps["dave"][:shown]) for r in records]
    panels = [viz.make_panel([images01[i]] + [o[i] for o in overlays]) for i in range(shown)]
    progression = torch.cat(panels, dim=1).permute(1, 2, 0).numpy()

    figure = Figure(figsize=(12, 1.3 * shown + 7), dpi=100, layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[1.3 * shown, 7])
    axes = top.subplots()
    axes.imshow(progression)
    width = images01.shape[-1] + 2
    axes.set_xticks([width * (i + 0.5) for i in range(len(records) + 1)])
    axes.set_xticklabels(["image"] + [f"epoch {epoch_of[r.global_step]}" for r in records])
    axes.set_yticks([])
    axes.set_title("DAVE maps of probe images across training (epoch 0: untrained)")
    for ax, (title, keys) in zip(bottom.subplots(2, 3).flat, CURVES.items(), strict=True):
        for key, label in keys:
            points = [(row["epoch"], row[key]) for row in rows if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set(title=title, xlabel="epochs trained")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.savefig(path)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's info lines and the warnings that do not concern a demo user."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (
                ".*does not have many workers.*",
                ".*isinstance\\(treespec, LeafSpec\\).*",
                ".*smaller than the logging interval.*",
            ):
                warnings.filterwarnings("ignore", message)
            yield
    finally:
        log.setLevel(level)


def fit_demo(
    settings: DemoSettings,
    *,
    seed: int,
    shortcut_rate: float | None,
    out: str,
    live: bool,
) -> DemoRun:
    """Train the demo model under DAVEMonitor and collect one table row per evaluation.

    With ``shortcut_rate`` (None: no marker, no region) that share of the training and probe
    images carries the corner marker, and the monitor tracks the marker's corner square in
    every probe image as the region ``marker`` (0: the control, no marker drawn). ``live``
    prints the legend and the table as the evaluations come.
    """
    if shortcut_rate is not None:
        check_number("shortcut_rate", shortcut_rate, 0.0, 1.0)
    pl.seed_everything(seed, verbose=False)
    data, model = _data_and_model(settings, seed, shortcut_rate)
    probe = data.probe(settings.num_probe)
    tracked = shortcut_rate is not None
    corner = data.corner_masks(settings.num_probe)
    monitor = DAVEMonitor(
        probe,
        num_probe=settings.num_probe,
        regions={REGION: corner} if tracked else None,
        mean=data.mean,
        std=data.std,
        seed=seed,
        **settings.monitor,
    )
    table = EvaluationTable(monitor, table_columns(tracked), live)
    logger = TensorBoardLogger(out, name=run_name(shortcut_rate), default_hp_metric=False)
    if live:
        print(LEGEND + (MARKER_LEGEND if tracked else ""))
        print(_training_line(settings, shortcut_rate), flush=True)
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator="cpu",  # the demo needs no GPU; the timings in the docs are CPU ones
            max_epochs=settings.epochs,
            limit_train_batches=settings.limit_train_batches,
            logger=logger,
            callbacks=[monitor, table],
            num_sanity_val_steps=0,
            log_every_n_steps=10,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, datamodule=data)
    return DemoRun(
        rows=table.rows,
        log_dir=Path(logger.log_dir),
        snapshot_dir=monitor.snapshot_dir,
        images01=viz.denormalize(probe[0], data.mean, data.std),
        shortcut_rate=shortcut_rate,
        pixel_share=float(corner.float().mean()),
        alert_ratio=monitor.settings.alert_ratio,
        confidence=monitor.settings.evaluation.confidence,
    )


def _data_and_model(
    settings: DemoSettings, seed: int, shortcut_rate: float | None
) -> tuple[ShapesDataModule, ShapesClassifier]:
    """The demo's synthetic shapes (with the marker at ``shortcut_rate``) and its ViT."""
    data = ShapesDataModule(
        train_size=settings.train_size,
        val_size=settings.val_size,
        image_size=settings.image_size,
        shortcut=shortcut_rate or 0.0,
        batch_size=settings.batch_size,
        seed=seed,
    )
    model = ShapesClassifier(
        image_size=settings.image_size,
        embed_dim=settings.embed_dim,
        depth=settings.depth,
        num_heads=settings.num_heads,
        lr=settings.lr,
    )
    return data, model


def _training_line(settings: DemoSettings, shortcut_rate: float | None) -> str:
    """What the demo trains and when the monitor evaluates, said before training."""
    return (
        f"Training a {settings.depth}-block ViT on {settings.train_size} synthetic "
        f"{settings.image_size} px shapes for {settings.epochs} epochs"
        + _marker_note(shortcut_rate)
        + f"; DAVEMonitor evaluates {settings.num_probe} probe images before training and "
        "after every epoch."
    )


def _marker_note(shortcut_rate: float | None) -> str:
    """How many training images carry the marker, for the opening line."""
    if shortcut_rate is None:
        return ""
    if shortcut_rate == 0:
        return " (the control: no marker; its corner square is tracked)"
    return f" ({shortcut_rate:.0%} with the corner marker)"


def run_name(shortcut_rate: float | None) -> str:
    """The TensorBoard run name: ``shapes``, ``shortcut`` or ``control`` (rate 0)."""
    if shortcut_rate is None:
        return "shapes"
    return "shortcut" if shortcut_rate > 0 else "control"


def run_demo(
    *,
    epochs: int | None = None,
    out: str = "runs/demo",
    seed: int = 0,
    fast: bool = False,
    shortcut: bool = False,
    shortcut_rate: float | None = None,
    quiet: bool = False,
) -> int:
    """Train, monitor and report; returns the exit code (0).

    ``shortcut`` plants the corner marker in ``SHORTCUT_RATE`` of the training and probe
    images; ``shortcut_rate`` sets that share and implies ``shortcut`` (0: the control).
    """
    start = time.perf_counter()
    settings = FAST if fast else DEFAULT
    if epochs is not None:
        settings = replace(settings, epochs=epochs)
    if shortcut and shortcut_rate is None:
        shortcut_rate = SHORTCUT_RATE
    run = fit_demo(settings, seed=seed, shortcut_rate=shortcut_rate, out=out, live=not quiet)
    report = run.log_dir / "report.png"
    if not run.rows:
        print("DAVEMonitor produced no evaluations; see the warnings above.")
        return 1
    write_demo_report(report, run.rows, run.snapshot_dir, run.images01)
    if quiet:
        tracked = shortcut_rate is not None
        print(LEGEND + (MARKER_LEGEND if tracked else ""))
        print(format_table(run.rows, table_columns(tracked)))
    print("\n" + "\n".join(summary(run)))
    print(f"\nReport: {report}\nLogs, snapshots and checkpoint: {run.log_dir}")
    print(f"Finished in {time.perf_counter() - start:.0f} s. View the logs with:")
    print(f"  tensorboard --logdir {out}")
    return 0
