"""DAVEMonitor's cost: fit time with and without the monitor on the demo's synthetic setup.

Three fits of the demo model and data (same seed, same epochs): no monitor, the monitor at
its default settings (evaluating every epoch, plus once before training), and the monitor at
the demo's lighter settings. Overhead = (with − without) / without; the target at the default
schedule is ≤ 10 %. Then the cost of one default evaluation split by stage, to show what
drives the overhead. Wall time is noisy on a shared machine, so process CPU time is shown too.

    python benchmarks/bench_callback.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from dave_lightning import DAVEMonitor, viz
from dave_lightning.demo import DEFAULT, ShapesClassifier, ShapesDataModule
from dave_lightning.evaluation import METRICS, ProbeEvaluator
from dave_lightning.probe import Probe
from dave_lightning.reporting import ImageSink, log_evaluation
from dave_lightning.snapshot import save_snapshot

DEMO_MONITOR = {
    "num_probe": DEFAULT.num_probe,
    "n_samples": DEFAULT.n_samples,
    "deletion_steps": DEFAULT.deletion_steps,
}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def fit(epochs: int, monitor_settings: dict[str, int] | None, root: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``trainer.fit`` on the demo setup, with or without a monitor."""
    pl.seed_everything(0, verbose=False)
    data = ShapesDataModule(
        train_size=DEFAULT.train_size,
        val_size=DEFAULT.val_size,
        image_size=DEFAULT.image_size,
        batch_size=DEFAULT.batch_size,
    )
    model = ShapesClassifier(
        image_size=DEFAULT.image_size,
        embed_dim=DEFAULT.embed_dim,
        depth=DEFAULT.depth,
        num_heads=DEFAULT.num_heads,
        lr=DEFAULT.lr,
    )
    data.setup("fit")  # rendering the data is not part of either fit
    callbacks = []
    if monitor_settings is not None:
        probe = data.probe(monitor_settings.get("num_probe", 16))
        callbacks.append(DAVEMonitor(probe, mean=data.mean, std=data.std, **monitor_settings))
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
    return timed(lambda: trainer.fit(model, datamodule=data))


def stage_costs(root: Path) -> dict[str, tuple[float, float]]:
    """Seconds of one default evaluation split by stage (on an untrained demo model)."""
    torch.manual_seed(0)
    data = ShapesDataModule(image_size=DEFAULT.image_size)
    model = ShapesClassifier(
        image_size=DEFAULT.image_size,
        embed_dim=DEFAULT.embed_dim,
        depth=DEFAULT.depth,
        num_heads=DEFAULT.num_heads,
    ).eval()
    probe = Probe(*data.probe(16))
    engine = {"n_samples": 50, "noise_alpha": 0.5, "seed": 0}

    def evaluate(metrics: tuple[str, ...]) -> Callable[[], object]:
        evaluator = ProbeEvaluator(probe, engine=engine, metrics=metrics)
        return lambda: evaluator.evaluate(model)

    costs = {"maps (DAVE + input x gradient)": timed(evaluate(()))}
    for metric in METRICS:
        if metric != "drift":
            wall, cpu = timed(evaluate((metric,)))
            base_wall, base_cpu = costs["maps (DAVE + input x gradient)"]
            costs[f"+ {metric}"] = (wall - base_wall, cpu - base_cpu)
    evaluation = ProbeEvaluator(probe, engine=engine).evaluate(model)
    images01 = viz.denormalize(probe.images, data.mean, data.std)
    writer = SummaryWriter(str(root / "stages"))

    def publish() -> None:
        log_evaluation(ImageSink(writer, root), evaluation, images01, 0, 8)
        save_snapshot(root, evaluation, epoch=0, global_step=0, settings={}, labels=probe.labels)

    costs["images + snapshot"] = timed(publish)
    writer.close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {
            "no monitor": fit(args.epochs, None, root),
            "monitor, default settings": fit(args.epochs, {}, root),
            f"monitor, demo settings {DEMO_MONITOR}": fit(args.epochs, DEMO_MONITOR, root),
        }
        stages = stage_costs(root)
    base_wall, base_cpu = runs["no monitor"]
    print(
        f"demo setup: {DEFAULT.train_size} images of {DEFAULT.image_size} px, batch "
        f"{DEFAULT.batch_size}, {args.epochs} epochs, {args.epochs + 1} evaluations with a "
        f"monitor; {torch.get_num_threads()} threads"
    )
    print(f"{'run':<75} | {'wall s':>7} | {'CPU s':>7} | {'wall ratio':>10} | {'CPU ratio':>9}")
    for name, (wall, cpu) in runs.items():
        print(
            f"{name:<75} | {wall:>7.1f} | {cpu:>7.1f} | "
            f"{wall / base_wall - 1:>+10.1%} | {cpu / base_cpu - 1:>+9.1%}"
        )
    total = sum(wall for wall, _ in stages.values())
    print("\none evaluation at default settings (16 probe images, n_samples 50), by stage:")
    for name, (wall, cpu) in stages.items():
        print(f"  {name:<34} {wall:>6.1f} s wall ({wall / total:>4.0%}) {cpu:>6.1f} s CPU")


if __name__ == "__main__":
    main()
