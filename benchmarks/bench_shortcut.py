"""The shortcut demo's story over seeds: does the region alarm fire with the marker, and only then?

Runs the demo's shortcut fit (``SHORTCUT_RATE`` of the training and probe images carry the
class-coloured corner marker) on 5 seeds and the control (``--shortcut-rate 0``: the same
images without the marker, the same corner square tracked) on 3, in the demo's own
configuration by default (``--epochs`` and ``--train-size`` shorten it). Prints per run: the
step (epoch) of the first evaluation that raised the region alarm, or "never"; the corner
square's attribution share at the end with its interval; EnergyPG untrained, at its peak and at
the end, with intervals; the train − val accuracy gap at the end (val never carries the
marker); how much the trained model reads the marker, measured without DAVE: its accuracy on
512 probe-split images drawn with the marker minus on the same images without it; and the ratio
the alarm compares with ``alert_ratio``, the lower bound of the corner share over the square's
share of the pixels, untrained and at its highest over the run (the alarm fires where it
exceeds ``alert_ratio``).

    python benchmarks/bench_shortcut.py [--epochs 6] [--train-size 8192] [--first-seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch

from dave_lightning.data import ShapesClassifier, SyntheticShapes, render
from dave_lightning.demo import DEFAULT, REGION_KEY, SHORTCUT_RATE, DemoRun, fit_demo

SHORTCUT_RUNS, CONTROL_RUNS = 5, 3
RELIANCE_IMAGES = 512


def marker_reliance(run: DemoRun, seed: int) -> float:
    """Accuracy of the run's trained model on probe-split images with the marker minus on the
    same images without it (the renderings differ only in the marker's pixels)."""
    checkpoint = next((run.log_dir / "checkpoints").glob("*.ckpt"))
    model = ShapesClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    size = model.hparams.image_size
    accuracy = []
    for rate in (1.0, 0.0):
        dataset = SyntheticShapes(
            RELIANCE_IMAGES, split="probe", image_size=size, shortcut=rate, seed=seed
        )
        images, labels, _ = render(dataset)
        with torch.no_grad():
            predictions = torch.cat([model(chunk).argmax(1) for chunk in images.split(128)])
        accuracy.append(float((predictions == labels).float().mean()))
    return accuracy[0] - accuracy[1]


def interval(row: dict[str, float], key: str) -> str:
    """``value [low, high]`` of a metric in a demo table row."""
    return f"{row[key]:.3f} [{row[f'{key}/low']:.3f}, {row[f'{key}/high']:.3f}]"


def describe(kind: str, seed: int, run: DemoRun, seconds: float) -> str:
    """One table line: the alarm, the corner share, EnergyPG first/peak/last, the gap."""
    first, last = run.rows[0], run.rows[-1]
    peak = max(run.rows, key=lambda row: row["energy_pg"])
    ratios = [row[f"{REGION_KEY}/low"] / run.pixel_share for row in run.rows]
    alarm = run.alarm()
    fired = "never" if alarm is None else f"{alarm['step']:.0f} ({alarm['epoch']:.0f})"
    cells = [
        f"{kind:<8} {seed:>4}",
        f"{fired:>12}",
        f"{interval(last, REGION_KEY):>21}",
        f"{interval(first, 'energy_pg'):>21}",
        f"{interval(peak, 'energy_pg'):>21} ({peak['epoch']:.0f})",
        f"{interval(last, 'energy_pg'):>21}",
        f"{last['train_acc'] - last['val_acc']:>+8.3f}",
        f"{marker_reliance(run, seed):>+7.3f}",
        f"{ratios[0]:>5.2f} {max(ratios):>5.2f}",
        f"{seconds:>5.0f}",
    ]
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT.epochs)
    parser.add_argument(
        "--train-size", type=int, default=DEFAULT.train_size, help="synthetic training images"
    )
    parser.add_argument("--first-seed", type=int, default=0, help="seeds from this one on")
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = replace(DEFAULT, epochs=args.epochs, train_size=args.train_size)
    first = args.first_seed
    runs = [("shortcut", seed, SHORTCUT_RATE) for seed in range(first, first + SHORTCUT_RUNS)]
    runs += [("control", seed, 0.0) for seed in range(first, first + CONTROL_RUNS)]
    print(
        f"demo model and probe ({settings.num_probe} images of {settings.image_size} px), "
        f"{settings.train_size} training images, {settings.epochs} epochs, shortcut rate "
        f"{SHORTCUT_RATE} (control: 0), {torch.get_num_threads()} threads"
    )
    header = [
        f"{'run':<8} {'seed':>4}",
        f"{'alarm step':>12}",
        f"{'corner share, last':>21}",
        f"{'EnergyPG untrained':>21}",
        f"{'EnergyPG peak (epoch)':>29}",
        f"{'EnergyPG last':>21}",
        f"{'gap':>8}",
        f"{'reads':>7}",
        f"{'ratio 0, max':>11}",
        f"{'s':>5}",
    ]
    print(" | ".join(header))
    raised = {"shortcut": 0, "control": 0}
    with tempfile.TemporaryDirectory() as out:
        for kind, seed, rate in runs:
            start = time.perf_counter()
            run = fit_demo(settings, seed=seed, shortcut_rate=rate, out=out, live=False)
            print(describe(kind, seed, run, time.perf_counter() - start), flush=True)
            raised[kind] += run.alarm() is not None
    print(
        f"alarm raised in {raised['shortcut']} of {SHORTCUT_RUNS} shortcut runs and "
        f"{raised['control']} of {CONTROL_RUNS} control runs"
    )
    print(
        f"alarm: the lower bound of the corner share's {run.confidence:.0%} interval "
        f"({settings.num_probe} probe images) exceeds {run.alert_ratio:g} x the square's "
        f"{run.pixel_share:.3f} share of the pixels; gap: train - val accuracy at the end; "
        "step (epoch): the evaluation's global step and epochs trained; ratio: lower bound / "
        "pixel share, untrained and highest; reads: accuracy with the marker - without, "
        f"{RELIANCE_IMAGES} probe-split images; s: seconds per run"
    )


if __name__ == "__main__":
    main()
