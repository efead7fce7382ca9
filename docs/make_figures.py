"""Make the docs' figures from a demo run: the method progression and the demo report.

    dave-lightning demo --out runs/demo          # trains the model (about 3 min on 2 CPU cores)
    python docs/make_figures.py runs/demo/shapes/version_0

Writes docs/figures/progression.png (image | input×gradient | input×effective |
input×equivariant | DAVE for a few probe images) and copies the run's report.png to
docs/figures/demo_report.png.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from dave_lightning import DAVE, viz
from dave_lightning.attribution import COMPONENTS
from dave_lightning.data import ShapesClassifier, SyntheticShapes

FIGURES = Path(__file__).parent / "figures"
IMAGES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a demo log dir holding checkpoints/ and report.png")
    parser.add_argument("--n-samples", type=int, default=50)
    args = parser.parse_args()
    checkpoint = next((args.run / "checkpoints").glob("*.ckpt"))
    module = ShapesClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    size = module.hparams.image_size
    dataset = SyntheticShapes(IMAGES, split="probe", image_size=size)
    images = torch.stack([dataset[i][0] for i in range(IMAGES)])
    labels = torch.tensor([dataset[i][1] for i in range(IMAGES)])
    parts = DAVE(module, n_samples=args.n_samples).attribute(images, labels, return_components=True)
    images01 = viz.denormalize(images, dataset.mean, dataset.std)
    rows = [
        viz.make_panel(
            [images01[i]] + [viz.colorize(parts[name][i : i + 1])[0] for name in COMPONENTS]
        )
        for i in range(IMAGES)
    ]
    figure = torch.cat([torch.nn.functional.pad(row, (0, 0, 0, 2), value=1.0) for row in rows], 1)
    figure = torch.nn.functional.interpolate(figure[None], scale_factor=2, mode="nearest")[0]
    FIGURES.mkdir(exist_ok=True)
    viz.save_png(figure, FIGURES / "progression.png")
    shutil.copy(args.run / "report.png", FIGURES / "demo_report.png")
    print(f"wrote {FIGURES / 'progression.png'} and {FIGURES / 'demo_report.png'}")


if __name__ == "__main__":
    main()
