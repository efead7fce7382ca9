"""Speed of ``dave-lightning compare`` on a monitor run of 20 evaluations × 16 probe images.

Writes 20 snapshots of smooth random 224 × 224 maps (with compared-method maps, deletion curves
and a full metric set, like DAVEMonitor's), then times each stage of the comparison in-process
and the whole command as a subprocess (Python start-up included).

    python benchmarks/bench_compare.py [--evaluations 20] [--probe 16] [--size 224] [--tensorboard]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dave_lightning.compare import (
    compare_snapshots,
    write_drift,
    write_map_panels,
    write_metrics,
    write_tensorboard,
)
from dave_lightning.evaluation import Evaluation
from dave_lightning.snapshot import save_snapshot

METRIC_NAMES = (
    "probe_accuracy",
    "energy_pg",
    "grid_pg",
    "gini",
    "patch_artifact",
    "stability_pearson",
    "stability_spearman",
    "stability_topk_iou",
    "deletion_lerf_blur",
    "deletion_morf_blur",
    "deletion_random_blur",
)


def smooth_maps(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 1, size, size) maps in [0, 1]: upsampled noise, like blurred attributions."""
    coarse = torch.rand(count, 1, size // 16, size // 16, generator=generator)
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return maps / maps.flatten(1).amax(1).view(-1, 1, 1, 1)


def write_run(directory: Path, evaluations: int, probe: int, size: int) -> None:
    """``evaluations`` snapshots of one probe, maps drifting away from the first."""
    generator = torch.Generator().manual_seed(0)
    base = smooth_maps(probe, size, generator)
    settings = {
        "engine": {"n_samples": 50, "seed": 0},
        "probe_size": probe,
        "probe_sha256": "0" * 64,
    }
    labels = torch.arange(probe) % 4
    fractions = torch.linspace(0, 0.9, 128)
    for index in range(evaluations):
        weight = index / max(evaluations - 1, 1)
        maps = (1 - weight) * base + weight * smooth_maps(probe, size, generator)
        values = torch.rand(len(METRIC_NAMES) * 2, generator=generator).tolist()
        metrics = dict(zip(METRIC_NAMES, values, strict=False))
        metrics.update(
            {
                f"input_x_gradient/{n}": v
                for n, v in zip(METRIC_NAMES, values[len(METRIC_NAMES) :], strict=True)
            }
        )
        evaluation = Evaluation(
            maps={"dave": maps, "input_x_gradient": smooth_maps(probe, size, generator)},
            targets=labels,
            predictions=labels,
            metrics=metrics,
            curves={"dave/deletion_lerf_blur": (fractions, 1 - fractions)},
            labels=labels,
            probabilities=torch.rand(probe, generator=generator),
            reliability=torch.rand(probe, generator=generator),
            epoch=index,
            global_step=100 * index,
            settings=settings,
        )
        save_snapshot(directory / "dave", evaluation)


def timed(label: str, fn: object) -> object:
    start = time.perf_counter()
    result = fn()
    print(f"  {label:<28} {time.perf_counter() - start:6.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=20)
    parser.add_argument("--probe", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--tensorboard", action="store_true", help="also time the TensorBoard run")
    args = parser.parse_args()
    print(
        f"compare: {args.evaluations} evaluations × {args.probe} probe images of "
        f"{args.size} × {args.size}, {torch.get_num_threads()} torch threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run, out = Path(tmp) / "run", Path(tmp) / "report"
        write_run(run, args.evaluations, args.probe, args.size)
        out.mkdir()
        start = time.perf_counter()
        comparison = timed("load + drift matrix", lambda: compare_snapshots([run]))
        timed("maps_probe_*.png", lambda: write_map_panels(comparison, out))
        timed("metrics .md/.csv/.json", lambda: write_metrics(comparison, out))
        timed("drift .csv + heatmap", lambda: write_drift(comparison, out))
        if args.tensorboard:
            timed("TensorBoard run", lambda: write_tensorboard(comparison, Path(tmp) / "tb"))
        print(f"  {'in-process total':<28} {time.perf_counter() - start:6.2f} s")
        command = [sys.executable, "-m", "dave_lightning.cli", "compare", str(run), "--quiet"]
        command += ["--out", str(Path(tmp) / "cli")]
        if args.tensorboard:
            command += ["--tensorboard", str(Path(tmp) / "cli_tb")]
        timed("CLI subprocess, end to end", lambda: subprocess.run(command, check=True))


if __name__ == "__main__":
    main()
