"""DAVEMonitor's cost: fit time with and without the monitor on the demo's synthetic setup.

Fits of the demo model and data (same seed and epochs): without the monitor and with it at its
default settings (every epoch, plus once before training), as the demo runs it. Overhead =
(with − without) / without; the target at the default schedule is ≤ 10 %. The two run
interleaved, ``--repeats`` times; the fastest (the least disturbed on a shared machine) and the
median of each are compared, and the time spent inside the monitor's own hooks is added up as
a direct measure that machine noise does not blur. Then the cost of one evaluation at the
default settings split by stage, to show what drives the overhead.

    python benchmarks/bench_callback.py [--epochs 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from _timing import TimedMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from dave_lightning import DAVEMonitor, panels, viz
from dave_lightning.data import ShapesClassifier, ShapesDataModule
from dave_lightning.demo import DEFAULT, quiet_lightning
from dave_lightning.evaluation import EvaluationOptions, ProbeEvaluator
from dave_lightning.metrics.registry import METRICS, metric_names
from dave_lightning.models import ModelAdapter
from dave_lightning.sinks import TensorBoardSink
from dave_lightning.snapshot import save_snapshot

RUNS = {"no monitor": False, "monitor (defaults)": True}


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def demo_model() -> ShapesClassifier:
    return ShapesClassifier(
        image_size=DEFAULT.image_size,
        embed_dim=DEFAULT.embed_dim,
        depth=DEFAULT.depth,
        num_heads=DEFAULT.num_heads,
        lr=DEFAULT.lr,
    )


def fit(epochs: int, monitored: bool, root: Path) -> tuple[float, float]:
    """Wall seconds of ``trainer.fit`` on the demo setup and of the monitor's hooks in it."""
    pl.seed_everything(0, verbose=False)
    data = ShapesDataModule(
        train_size=DEFAULT.train_size,
        val_size=DEFAULT.val_size,
        image_size=DEFAULT.image_size,
        batch_size=DEFAULT.batch_size,
    )
    data.setup("fit")  # rendering the data is not part of either fit
    model = demo_model()
    probe = data.probe(DEFAULT.num_probe)
    callbacks = [TimedMonitor(probe, mean=data.mean, std=data.std)] if monitored else []
    with quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=epochs,
            logger=TensorBoardLogger(root, name="bench"),
            callbacks=callbacks,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            log_every_n_steps=10,
        )
        seconds = timed(lambda: trainer.fit(model, datamodule=data))
    return seconds, sum(callback.seconds for callback in callbacks)


def stage_costs(root: Path) -> tuple[DAVEMonitor, dict[str, float]]:
    """A default monitor and the seconds of one evaluation at its settings, split by stage."""
    torch.manual_seed(0)
    data = ShapesDataModule(image_size=DEFAULT.image_size)
    model = ModelAdapter(demo_model().eval())
    monitor = DAVEMonitor(data.probe(DEFAULT.num_probe))
    fast = tuple(m for m in metric_names() if not METRICS[m].slow)
    slow = tuple(m for m in metric_names() if METRICS[m].slow)

    def evaluator(metrics: tuple[str, ...]) -> ProbeEvaluator:
        options = EvaluationOptions(
            metrics=metrics,
            compare_methods=monitor.options.compare_methods,
            grid_k=monitor.options.grid_k,
            deletion_steps=monitor.options.deletion_steps,
        )
        return ProbeEvaluator(monitor.probe, monitor.engine, options)

    light = timed(lambda: evaluator(fast).evaluate(model))
    costs = {f"maps + {', '.join(fast)}": light}
    for metric in slow:
        costs[f"+ {metric}"] = timed(lambda m=metric: evaluator((*fast, m)).evaluate(model)) - light
    evaluation = evaluator(metric_names()).evaluate(model)
    evaluation.global_step = 0
    images01 = viz.denormalize(monitor.probe.images, data.mean, data.std)
    writer = SummaryWriter(str(root / "stages"))

    def publish() -> None:
        panels.log_evaluation([TensorBoardSink(writer)], "dave", evaluation, images01, 0, 8)
        save_snapshot(root / "stages", evaluation)

    costs["images + snapshot"] = timed(publish)
    writer.close()
    return monitor, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT.epochs)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in RUNS}
    in_hooks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for _ in range(args.repeats):
            for name, monitored in RUNS.items():
                seconds, monitor_seconds = fit(args.epochs, monitored, root)
                times[name].append(seconds)
                in_hooks += [monitor_seconds] if monitored else []
        defaults, stages = stage_costs(root)
    evaluations = args.epochs + 1
    slow = len({*range(0, evaluations, defaults.schedule.slow_metrics_every), evaluations - 1})
    print(
        f"demo setup: {DEFAULT.train_size} images of {DEFAULT.image_size} px, batch "
        f"{DEFAULT.batch_size}, {args.epochs} epochs ({evaluations} evaluations with the "
        f"monitor, {slow} with the slow metrics), {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats"
    )
    print(
        f"{'run':<20} | {'min s':>7} | {'median s':>8} | {'overhead (min)':>14} | "
        f"{'overhead (median)':>17}"
    )
    base, base_median = min(times["no monitor"]), statistics.median(times["no monitor"])
    for name, values in times.items():
        print(
            f"{name:<20} | {min(values):>7.1f} | {statistics.median(values):>8.1f} | "
            f"{min(values) / base - 1:>+14.1%} | "
            f"{statistics.median(values) / base_median - 1:>+17.1%}"
        )
    hooks = statistics.median(in_hooks)
    print(
        f"time inside the monitor's hooks: {hooks:.1f} s per fit (median) = "
        f"{hooks / base_median:.1%} of the unmonitored fit (median)"
    )
    epoch = base / args.epochs
    total = sum(stages.values())
    print(
        f"\none evaluation at the defaults ({len(defaults.probe)} probe images, n_samples "
        f"{defaults.engine.n_samples}, {defaults.options.deletion_steps} deletion steps, compared "
        f"with {', '.join(defaults.options.compare_methods)}) with the slow metrics: "
        f"{total:.1f} s, {total / epoch:.0%} of one training epoch ({epoch:.1f} s)"
    )
    for name, seconds in stages.items():
        print(f"  {name:<48} {seconds:>6.2f} s ({seconds / total:>4.0%})")


if __name__ == "__main__":
    main()
