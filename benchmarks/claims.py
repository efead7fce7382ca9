"""DAVE against its own stages and the single-pass baselines, on the demo-trained model.

Methods (every map post-processed the same way, docs/method.md step 6):
  input × gradient        one clean pass, plain gradient
  input × effective       one clean pass, effective gradient (operator variation removed)
  input × equivariant     averaged over random transformations, no noise (noise_alpha = 0)
  noise only              averaged over the noise schedule, no transformations
  DAVE                    transformations and noise
Metrics are DAVEMonitor's (the same ProbeEvaluator): stability under a small shift and
rotation (Spearman, top-10 % IoU), EnergyPG on the object masks, GridPG on 2 × 2 mosaics,
patch-artifact score, and pixel-deletion AUC (blur baseline) least- and most-relevant-first
with the random-order control. The post-processing blurs away most of the patch grid, so the
patch-artifact score is also given for the raw maps (positive part of the channel sum, before
post-processing), where the methods differ.

    dave-lightning demo                   # trains the model (runs/demo/shapes/version_*/)
    python benchmarks/claims.py [--checkpoint CKPT] [--num-probe 32] [--n-samples 50]

The stability columns also carry a top-10 % IoU: a method can be the most stable by one
statistic and not by the other, so both are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dave_lightning import DAVE, DAVESettings, InputXEffective, InputXGradient
from dave_lightning.data import ShapesClassifier, ShapesDataModule
from dave_lightning.data.shapes import PATCH_SIZE
from dave_lightning.evaluation import EvaluationOptions, ProbeEvaluator
from dave_lightning.metrics import patch_artifact_score
from dave_lightning.models import ModelAdapter
from dave_lightning.probe import Probe

# name → (changes to the engine's settings, single-pass methods evaluated alongside)
VARIANTS: dict[str, dict[str, object]] = {
    "DAVE": {},
    "input x equivariant": {"noise_alpha": 0.0},
    "noise only": {"hflip_prob": 0.0, "rotation": 0.0, "translation": 0.0, "scale": (1.0, 1.0)},
}
SINGLE_PASS = {"input x gradient": "input_x_gradient", "input x effective": "input_x_effective"}
SINGLE_PASS_CLASSES = {"input x gradient": InputXGradient, "input x effective": InputXEffective}
ORDER = ("input x gradient", "input x effective", "input x equivariant", "noise only", "DAVE")
# metric → (column header, "+" when higher is better, "-" when lower is)
COLUMNS = {
    "stability_spearman": ("stab rho", "+"),
    "stability_topk_iou": ("stab IoU", "+"),
    "energy_pg": ("EnergyPG", "+"),
    "grid_pg": ("GridPG", "+"),
    "patch_artifact": ("patch art", "-"),
    "patch_artifact_raw": ("p.art raw", "-"),
    "deletion_lerf_blur": ("del LeRF", "+"),
    "deletion_morf_blur": ("del MoRF", "-"),
}


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint of a default demo run under ``root``."""
    found = sorted(
        root.glob("shapes/version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime
    )
    return found[-1] if found else None


def raw_patch_artifact(
    method: DAVE | InputXGradient, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """Mean patch-artifact score of a method's maps before post-processing (positive part)."""
    maps = method.attribute(images, labels).clamp(min=0)
    return float(patch_artifact_score(maps, PATCH_SIZE).nanmean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="default: newest under runs/demo")
    parser.add_argument("--num-probe", type=int, default=32)
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--noise-alpha", type=float, default=0.5)
    parser.add_argument("--deletion-steps", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoint = args.checkpoint or latest_checkpoint(Path("runs/demo"))
    if checkpoint is None or not checkpoint.is_file():
        print("No demo checkpoint found: run `dave-lightning demo` first or pass --checkpoint.")
        return 2

    model = ShapesClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = ShapesDataModule(image_size=model.hparams.image_size, seed=args.seed)
    images, labels, masks = data.probe(args.num_probe)
    probe = Probe(images, labels, masks)
    engine = {"n_samples": args.n_samples, "noise_alpha": args.noise_alpha, "seed": args.seed}
    adapter = ModelAdapter(model)
    print(
        f"{checkpoint}\n{args.num_probe} probe images ({model.hparams.image_size} px), "
        f"n_samples {args.n_samples}, noise_alpha {args.noise_alpha}, deletion steps "
        f"{args.deletion_steps}; arrows: + higher is better, - lower is better"
    )

    rows: dict[str, dict[str, float]] = {}
    for name, changes in VARIANTS.items():
        start = time.perf_counter()
        options = EvaluationOptions(
            metrics=("stability", "grid_pg", "energy_pg", "deletion", "patch_artifact"),
            compare_methods=tuple(SINGLE_PASS.values()) if name == "DAVE" else (),
            deletion_steps=args.deletion_steps,
        )
        evaluator = ProbeEvaluator(probe, DAVESettings(**{**engine, **changes}), options)
        metrics = evaluator.evaluate(adapter).metrics
        rows[name] = {key: metrics[key] for key in COLUMNS if key in metrics}
        rows[name]["patch_artifact_raw"] = raw_patch_artifact(
            DAVE(model, **{**engine, **changes}, postprocess=False), images, labels
        )
        for label, method in SINGLE_PASS.items():
            if name == "DAVE":
                rows[label] = {
                    key: metrics[f"{method}/{key}"]
                    for key in COLUMNS
                    if f"{method}/{key}" in metrics
                }
                rows[label]["patch_artifact_raw"] = raw_patch_artifact(
                    SINGLE_PASS_CLASSES[label](model, postprocess=False), images, labels
                )
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(f"probe accuracy {metrics['probe_accuracy']:.2f}")

    headers = [f"{header} {arrow}".strip() for header, arrow in COLUMNS.values()]
    print(f"{'method':<20} | " + " | ".join(f"{h:>12}" for h in headers))
    for name in ORDER:
        cells = " | ".join(f"{rows[name][key]:>12.3f}" for key in COLUMNS)
        print(f"{name:<20} | {cells}")
    control = metrics["deletion_random_blur"]
    print(f"deletion AUC in random order (the control, the same for every method): {control:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
