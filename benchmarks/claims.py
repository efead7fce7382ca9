"""DAVE against its own stages and the compared methods, on the demo-trained model.

Methods (the gradient methods' maps post-processed the same way, docs/method.md step 6):
  input × gradient        one clean pass, plain gradient
  input × effective       one clean pass, effective gradient (operator variation removed)
  input × equivariant     averaged over random transformations, no noise (noise_alpha = 0)
  noise only              averaged over the noise schedule, no transformations
  DAVE                    transformations and noise
  Integrated Gradients    Captum's (captum:IntegratedGradients), 50 steps from a zero baseline
  Saliency                Captum's gradient magnitude (captum:Saliency)
  Saliency (NT)           Captum's noise tunnel around it, SmoothGrad (captum:NoiseTunnel(Saliency))
  attention rollout       attention_rollout: the class token's row of the rolled-out attention
  grad rollout            grad_rollout: gradient-weighted attention rollout
(docs/methods.md). Metrics are DAVEMonitor's (the same ProbeEvaluator): stability under a small
shift and rotation (Spearman, top-10 % IoU), EnergyPG on the object masks, GridPG on 2 × 2
mosaics, patch-artifact score, pixel-deletion AUC (blur baseline) least- and most-relevant
first, pixel-insertion AUC most- and least-relevant first, and the model-randomization sanity
check (Spearman of the maps with those of the model re-initialised down to its first block;
a method fails above 0.5). The post-processing blurs away most of the patch grid, so the
patch-artifact score is also given for the raw maps (positive part of the channel sum, before
post-processing; the rollouts' maps have no post-processing, so both columns are theirs).

    dave-lightning demo                   # trains the model (runs/demo/shapes/version_*/)
    python benchmarks/claims.py [--checkpoint CKPT] [--num-probe 32] [--n-samples 50]

The stability columns also carry a top-10 % IoU: a method can be the most stable by one
statistic and not by the other, so both are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dave_lightning import DAVE, DAVESettings, InputXEffective, InputXGradient
from dave_lightning.attribution import METHODS, CaptumMethod
from dave_lightning.attribution.methods import AttributionMethod
from dave_lightning.data import ShapesClassifier, ShapesDataModule
from dave_lightning.data.shapes import PATCH_SIZE
from dave_lightning.evaluation import EvaluationOptions, ProbeEvaluator
from dave_lightning.metrics import patch_artifact_score, sanity_fails
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import IDENTITY
from dave_lightning.probe import Probe

# name → changes to the engine's settings
VARIANTS: dict[str, dict[str, object]] = {
    "DAVE": {},
    "input x equivariant": {"noise_alpha": 0.0},
    "noise only": {"hflip_prob": 0.0, "rotation": 0.0, "translation": 0.0, "scale": (1.0, 1.0)},
}
# row label → compared-method name, evaluated beside DAVE
COMPARED = {
    "input x gradient": "input_x_gradient",
    "input x effective": "input_x_effective",
    "Integrated Gradients": "captum:IntegratedGradients",
    "Saliency": "captum:Saliency",
    "Saliency (NT)": "captum:NoiseTunnel(Saliency)",
    "attention rollout": "attention_rollout",
    "grad rollout": "grad_rollout",
}
# method name → the method without post-processing, for the raw patch-artifact score
RAW: dict[str, Callable[[torch.nn.Module], AttributionMethod]] = {
    "input_x_gradient": lambda model: InputXGradient(model, postprocess=False),
    "input_x_effective": lambda model: InputXEffective(model, postprocess=False),
    **{
        name: lambda model, name=name: CaptumMethod(model, name, postprocess=False)
        for name in COMPARED.values()
        if name.startswith("captum:")
    },
    **{
        name: lambda model, name=name: METHODS[name](ModelAdapter(model), None)
        for name in ("attention_rollout", "grad_rollout")
    },
}
ORDER = (
    "input x gradient",
    "input x effective",
    "input x equivariant",
    "noise only",
    "DAVE",
    "Integrated Gradients",
    "Saliency",
    "Saliency (NT)",
    "attention rollout",
    "grad rollout",
)
METRICS = ("stability", "grid_pg", "energy_pg", "deletion", "insertion", "patch_artifact", "sanity")
# value → (column header, "+" when higher is better, "-" when lower is)
COLUMNS = {
    "stability_spearman": ("stab rho", "+"),
    "stability_topk_iou": ("stab IoU", "+"),
    "energy_pg": ("EnergyPG", "+"),
    "grid_pg": ("GridPG", "+"),
    "patch_artifact": ("patch art", "-"),
    "patch_artifact_raw": ("p.art raw", "-"),
    "deletion_lerf_blur": ("del LeRF", "+"),
    "deletion_morf_blur": ("del MoRF", "-"),
    "insertion_morf_blur": ("ins MoRF", "+"),
    "insertion_lerf_blur": ("ins LeRF", "-"),
    "sanity": ("sanity rho", "-"),
}
WIDTH = 10


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint of a default demo run under ``root``."""
    found = sorted(
        root.glob("shapes/version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime
    )
    return found[-1] if found else None


def raw_patch_artifact(
    method: AttributionMethod, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """Mean patch-artifact score of a method's maps before post-processing (positive part)."""
    maps = method.attribute(images, labels).clamp(min=0)
    return float(patch_artifact_score(maps, PATCH_SIZE).nanmean())


def row(metrics: dict[str, float], method: str) -> dict[str, float]:
    """A table row of the evaluation's ``metrics`` for ``method`` (``dave`` or a compared one)."""
    prefix = "" if method == "dave" else f"{method}/"
    values = {key: metrics[prefix + key] for key in COLUMNS if prefix + key in metrics}
    values["sanity"] = metrics[f"sanity/{method}"]
    return values


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
        f"n_samples {args.n_samples}, noise_alpha {args.noise_alpha}, deletion and insertion "
        f"steps {args.deletion_steps}; arrows: + higher is better, - lower is better; sanity "
        "rho: Spearman with the maps of the model re-initialised down to its first block"
    )

    rows: dict[str, dict[str, float]] = {}
    for name, changes in VARIANTS.items():
        start = time.perf_counter()
        options = EvaluationOptions(
            metrics=METRICS,
            compare_methods=tuple(COMPARED.values()) if name == "DAVE" else (),
            deletion_steps=args.deletion_steps,
        )
        evaluator = ProbeEvaluator(probe, DAVESettings(**{**engine, **changes}), options, IDENTITY)
        metrics = evaluator.evaluate(adapter).metrics
        rows[name] = row(metrics, "dave")
        rows[name]["patch_artifact_raw"] = raw_patch_artifact(
            DAVE(model, **{**engine, **changes}, postprocess=False), images, labels
        )
        if name == "DAVE":
            dave_metrics = metrics
            for label, method in COMPARED.items():
                rows[label] = row(metrics, method)
                rows[label]["patch_artifact_raw"] = raw_patch_artifact(
                    RAW[method](model), images, labels
                )
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(f"probe accuracy {dave_metrics['probe_accuracy']:.2f}")

    headers = [f"{header} {arrow}" for header, arrow in COLUMNS.values()]
    print(f"{'method':<20} | " + " | ".join(f"{h:>{WIDTH}}" for h in [*headers, "sanity"]))
    for name in ORDER:
        cells = [f"{rows[name][key]:>{WIDTH}.3f}" for key in COLUMNS]
        verdict = "fail" if sanity_fails(rows[name]["sanity"]) else "pass"
        print(f"{name:<20} | " + " | ".join([*cells, f"{verdict:>{WIDTH}}"]))
    controls = {kind: dave_metrics[f"{kind}_random_blur"] for kind in ("deletion", "insertion")}
    print(
        "AUC in random order (the control, the same for every method): deletion "
        f"{controls['deletion']:.3f}, insertion {controls['insertion']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
