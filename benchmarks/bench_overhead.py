"""DAVEMonitor's overhead at a realistic scale: measured, and from the cost model.

(a) On this machine: a timm ``vit_small_patch16_224`` (random init) fine-tuned on 224 px
SyntheticShapes images, ``--images`` training images per epoch in batches of 32, probe 16, the
monitor at its defaults; fit time without and with the monitor, the runs interleaved
``--repeats`` times, their ratio, and the time inside the monitor's hooks.
(b) The cost model (the monitor's setup line, docs/callback.md "What it costs") against that
measurement: its share of the fit and the measured one.
(c) The cost model's share of a fit for ViT-S/16 and ViT-B/16 at 224 px, 2 k, 50 k and 1.28 M
training images per epoch, ``every_n_epochs=1`` over ``--table-epochs`` epochs, at the monitor's
defaults and at ``n_samples=16``.

    python benchmarks/bench_overhead.py [--epochs 1] [--images 512] [--repeats 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from _timing import TimedMonitor
from lightning.pytorch.loggers import TensorBoardLogger

from dave_lightning.data import ShapesDataModule
from dave_lightning.demo import quiet_lightning
from dave_lightning.monitor import ProbeMonitor
from dave_lightning.monitor.cost import CostEstimate, Training, equivalents

MODEL = "vit_small_patch16_224"
TABLE_MODELS = {"ViT-S/16": "vit_small_patch16_224", "ViT-B/16": "vit_base_patch16_224"}
TABLE_IMAGES = (2_000, 50_000, 1_281_167)
TABLE_BATCH = 256
NUM_CLASSES = 4
BATCH = 32
PROBE = 16


class ViTClassifier(pl.LightningModule):
    """A timm ViT (random init) fine-tuned with AdamW."""

    def __init__(self, name: str = MODEL) -> None:
        super().__init__()
        self.model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


def fit(
    data: ShapesDataModule, epochs: int, monitored: bool, root: Path
) -> tuple[float, TimedMonitor | None]:
    """Wall seconds of ``trainer.fit``, and the monitor (None without one)."""
    pl.seed_everything(0, verbose=False)
    model = ViTClassifier()
    monitor = TimedMonitor(data.probe(PROBE), mean=data.mean, std=data.std) if monitored else None
    with quiet_lightning(), contextlib.redirect_stdout(io.StringIO()):
        trainer = pl.Trainer(
            max_epochs=epochs,
            logger=TensorBoardLogger(root, name="bench"),
            callbacks=[monitor] if monitored else [],
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            log_every_n_steps=4,
        )
        start = time.perf_counter()
        trainer.fit(model, train_dataloaders=data.train_dataloader())
    return time.perf_counter() - start, monitor


def measured(args: argparse.Namespace) -> None:
    """(a) and (b): interleaved fits without and with the monitor, and the cost model's share."""
    data = ShapesDataModule(
        train_size=args.images, val_size=PROBE, image_size=224, batch_size=BATCH
    )
    data.setup("fit")  # rendering the images is not part of either fit
    times: dict[str, list[float]] = {"no monitor": [], "monitor (defaults)": []}
    monitors: list[TimedMonitor] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            order = [False, True] if round_ % 2 == 0 else [True, False]
            for monitored in order:
                seconds, monitor = fit(data, args.epochs, monitored, Path(tmp))
                times["monitor (defaults)" if monitored else "no monitor"].append(seconds)
                monitors += [monitor] if monitor is not None else []
    estimate = monitors[0].monitor.cost
    count, slow = estimate.evaluations
    print(
        f"(a) {MODEL} random init, {args.images} SyntheticShapes images of 224 px per epoch, "
        f"batch {BATCH}, {args.epochs} epoch(s), probe {PROBE}, monitor defaults ({count} "
        f"evaluations, {slow} with the slow metrics), {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved round(s) (medians)"
    )
    print(f"{'run':<22} | {'fit s':>8} | {'÷ no monitor':>12}")
    base = statistics.median(times["no monitor"])
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"{name:<22} | {seconds:>8.1f} | {seconds / base:>12.2f}")
    hooks = statistics.median(m.seconds for m in monitors)
    with_monitor = statistics.median(times["monitor (defaults)"])
    history = monitors[0].history
    print(
        f"time inside the monitor's hooks: {hooks:.1f} s per fit; its evaluations "
        + ", ".join(f"{h['seconds']:.1f} s" for h in history)
        + f" (computing; step {', '.join(str(h['global_step']) for h in history)})"
    )
    predicted = estimate.fit_share()
    by_hooks = hooks / (with_monitor - hooks)
    by_fits = with_monitor / base - 1
    print("\n(b) the cost model against the measurement: the monitor's share of the fit")
    print(f"  predicted (setup line, image-passes)           {predicted:>8.1%}")
    print(f"  measured: hooks ÷ the rest of the monitored fit {by_hooks:>8.1%}")
    print(f"  measured: fit with ÷ fit without − 1           {by_fits:>8.1%}")
    error = predicted / by_hooks - 1
    verdict = "within" if abs(error) <= 0.25 else "NOT within"
    print(f"  predicted ÷ measured (hooks) − 1: {error:+.1%}, {verdict} 25 %")
    print(f"  the setup line: {estimate.line('dave')}")


def estimates(
    name: str, probe: tuple[torch.Tensor, ...], n_samples: int, epochs: int
) -> list[CostEstimate]:
    """The cost model of a default monitor (with ``n_samples``) on ``name`` for each size."""
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).eval()
    monitor = ProbeMonitor(probe, n_samples=n_samples)
    monitor.setup(model, writes=False)
    results = []
    for images in TABLE_IMAGES:
        steps = math.ceil(images / TABLE_BATCH)
        training = Training(images, steps, max_epochs=epochs)
        with contextlib.redirect_stdout(io.StringIO()):
            results.append(monitor.announce_cost(training))
    return results


def table(args: argparse.Namespace) -> None:
    """(c): the cost model's share of a fit at realistic sizes."""
    data = ShapesDataModule(image_size=224)
    probe = data.probe(PROBE)
    print(
        f"\n(c) the cost model: the monitor's share of a fit of {args.table_epochs} epochs, "
        f"every_n_epochs=1, probe {PROBE} at 224 px (image-passes in forward+backward "
        "equivalents; training: one per image)"
    )
    header = (
        f"{'model':<9} | {'n_samples':>9} | {'passes/eval':>13} | {'images/epoch':>12} | "
        f"{'÷ epoch (fast, slow)':>20} | {'share of the fit':>16}"
    )
    print(header)
    for label, name in TABLE_MODELS.items():
        for n_samples in (8, 16):
            for images, estimate in zip(
                TABLE_IMAGES, estimates(name, probe, n_samples, args.table_epochs), strict=True
            ):
                fast, slow = equivalents(estimate.fast), equivalents(estimate.slow)
                epoch = f"{fast / images:.2%}, {slow / images:.2%}"
                print(
                    f"{label:<9} | {n_samples:>9} | {fast:>5.0f}, {slow:>5.0f} | "
                    f"{images:>12,} | {epoch:>20} | {estimate.fit_share():>16.3%}"
                )
    count, slow = estimate.evaluations
    print(f"({count} evaluations per fit, {slow} with the slow metrics)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--table-epochs", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch's CPU threads"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    measured(args)
    table(args)


if __name__ == "__main__":
    main()
