"""How many probe images: the width of the monitor's intervals of EnergyPG and Gini vs probe size.

Needs a demo checkpoint (``dave-lightning demo``; ``make bench`` trains one). DAVE at the
monitor's defaults (n_samples 8, seed 0) explains 64 probe-split images once, and the per-image
EnergyPG and Gini values are split into disjoint probes of 8, 16, 32 and 64 images (8, 4, 2
and 1 of them). For each size: the lowest and highest probe mean (how far the choice of probe
images moves the metric), the mean full width of the 95 % Student-t interval (the monitor's
``<tag>/low`` to ``<tag>/high``) with the narrowest and widest, and the mean width relative to
the default probe of 16.

    python benchmarks/bench_probe_size.py --checkpoint runs/bench/shapes/version_0/checkpoints/X
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from dave_lightning.attribution.settings import MONITOR_ENGINE
from dave_lightning.core.uncertainty import mean_interval
from dave_lightning.data import ShapesClassifier, ShapesDataModule
from dave_lightning.evaluation import EvaluationOptions, ProbeEvaluator
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import IDENTITY
from dave_lightning.probe import Probe

SIZES = (8, 16, 32, 64)
METRICS = {"energy_pg": "EnergyPG", "gini": "Gini"}
CONFIDENCE = EvaluationOptions().confidence
DEFAULT_PROBE = 16


def widths(values: torch.Tensor, size: int) -> tuple[list[float], list[float]]:
    """Means and interval widths of the disjoint probes of ``size`` items in ``values``."""
    means, spans = [], []
    for chunk in values.split(size):
        low, high = mean_interval(chunk, CONFIDENCE)
        means.append(float(chunk.nanmean()))
        spans.append(high - low)
    return means, spans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a demo checkpoint")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        print(f"No checkpoint at {args.checkpoint}: run `dave-lightning demo` first.")
        return 2
    torch.set_num_threads(2)
    model = ShapesClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    data = ShapesDataModule(image_size=model.hparams.image_size)
    probe = Probe(*data.probe(max(SIZES)))
    options = EvaluationOptions(metrics=tuple(METRICS), compare_methods=())
    start = time.perf_counter()
    evaluator = ProbeEvaluator(probe, MONITOR_ENGINE, options, IDENTITY)
    evaluation = evaluator.evaluate(ModelAdapter(model))
    seconds = time.perf_counter() - start
    print(
        f"demo model ({args.checkpoint}), {max(SIZES)} probe images of "
        f"{model.hparams.image_size} px in disjoint probes, n_samples "
        f"{MONITOR_ENGINE.n_samples}, {CONFIDENCE:.0%} intervals, {torch.get_num_threads()} "
        f"threads; one evaluation of the {max(SIZES)} images took {seconds:.1f} s"
    )
    header = f"{'metric':<9} | {'probe':>5} | {'probes':>6} | {'probe means':>13} | "
    print(header + f"{'width (mean)':>12} | {'narrowest':>9} | {'widest':>7} | {'÷ 16':>6}")
    for key, name in METRICS.items():
        values = evaluation.values[key]
        reference = statistics.mean(widths(values, DEFAULT_PROBE)[1])
        for size in SIZES:
            means, spans = widths(values, size)
            width = statistics.mean(spans)
            spread = f"{min(means):.3f}–{max(means):.3f}"
            print(
                f"{name:<9} | {size:>5} | {len(spans):>6} | {spread:>13} | {width:>12.3f} | "
                f"{min(spans):>9.3f} | {max(spans):>7.3f} | {width / reference:>6.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
