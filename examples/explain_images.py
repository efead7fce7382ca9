"""Explain single images with the DAVE engine, no training loop and no notebook.

Shows the paper's progressive view per image: input × gradient, input × effective
transformation, input × equivariant average (no noise) and DAVE.

    python examples/explain_images.py                      # synthetic probe images, demo model
    python examples/explain_images.py --checkpoint runs/demo/shapes/version_0/checkpoints/*.ckpt
    python examples/explain_images.py cat.jpg --model deit_small_patch16_224 --pretrained

Without ``--checkpoint`` or ``--pretrained`` the model is randomly initialised: the maps then
show the method, not what a trained model looks at.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from dave_lightning import DAVE, viz
from dave_lightning.data import ShapesClassifier, SyntheticShapes

TITLES = ("input", "input × gradient", "input × effective", "input × equivariant", "DAVE")


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple, tuple, int]:
    """The model in eval mode, its normalisation (mean, std) and input size."""
    if args.checkpoint is not None:
        module = ShapesClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu")
        size = module.hparams.image_size
        return module.eval(), SyntheticShapes.mean, SyntheticShapes.std, size
    if args.model is None:
        module = ShapesClassifier()
        return module.eval(), SyntheticShapes.mean, SyntheticShapes.std, 64
    model = timm.create_model(args.model, pretrained=args.pretrained).eval()
    config = timm.data.resolve_data_config({}, model=model)
    return model, config["mean"], config["std"], config["input_size"][-1]


def load_images(files: list[Path], size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """Image files resized to size × size and normalised, or four synthetic probe images."""
    if not files:
        probe = SyntheticShapes(4, split="probe", image_size=size)
        return torch.stack([probe[i][0] for i in range(len(probe))])
    pixels = [
        torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize((size, size))))
        for f in files
    ]
    images = torch.stack(pixels).permute(0, 3, 1, 2).float() / 255
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="image files (default: synthetic)")
    parser.add_argument("--checkpoint", type=Path, help="a demo checkpoint (ShapesClassifier)")
    parser.add_argument("--model", help="a timm model name instead of the demo's architecture")
    parser.add_argument("--pretrained", action="store_true", help="download timm weights")
    parser.add_argument("--target", type=int, help="class to explain (default: the prediction)")
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--noise-alpha", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("runs/explain"))
    args = parser.parse_args()

    model, mean, std, size = load_model(args)
    images = load_images(args.images, size, mean, std)
    with torch.no_grad():
        probabilities = model(images).softmax(1)
    target = (
        probabilities.argmax(1)
        if args.target is None
        else torch.full_like(probabilities[:, 0], args.target, dtype=torch.long)
    )
    engine = DAVE(model, n_samples=args.n_samples, noise_alpha=args.noise_alpha, seed=0)
    maps = engine.attribute(images, target, return_components=True)

    args.out.mkdir(parents=True, exist_ok=True)
    images01 = viz.denormalize(images, mean, std)
    overlays = [viz.overlay(images01, m) for m in maps.values()]
    zoom = max(1, 256 // size)  # small images are enlarged (nearest neighbour) to be seen
    for i, label in enumerate(target.tolist()):
        panel = viz.make_panel([images01[i]] + [overlay[i] for overlay in overlays])
        path = args.out / f"explain_{i}.png"
        viz.save_png(F.interpolate(panel[None], scale_factor=zoom)[0], path)
        print(f"{path}: class {label} (p = {probabilities[i, label]:.2f})")
    print("columns: " + ", ".join(TITLES))


if __name__ == "__main__":
    main()
