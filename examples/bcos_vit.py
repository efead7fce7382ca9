"""A small B-cos ViT trained on the synthetic shapes while DAVEMonitor watches (offline).

B-cos models (the ``bcos`` package, ``pip install 'dave-lightning[bcos]'``) take the picture x in
[0, 1] with its inverse, ``[x, 1 − x]``, and have an explanation mode that makes input × gradient
their exact contribution map. DAVE enters that mode together with its effective mode, keeps the
encoding for every transformed and noised sample, and computes every metric on the picture.

    python examples/bcos_vit.py --epochs 4
    tensorboard --logdir runs/bcos
"""

from __future__ import annotations

import argparse
import math
import warnings
from functools import partial

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from bcos.models.vit import SimpleViT
from bcos.modules import BcosLinear, BcosSequential, LogitLayer, norms
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dave_lightning import DAVEMonitor
from dave_lightning.data import SyntheticShapes, render


def bcos_simple_vit(num_classes: int, image_size: int, patch_size: int) -> nn.Module:
    """A 4-block B-cos simple ViT, built like bcos's ``simple_vit_*`` entrypoints."""
    with warnings.catch_warnings():  # SimpleViT warns when built outside bcos's entrypoints
        warnings.filterwarnings("ignore", message="You are trying to use the entrypoints")
        vit = SimpleViT(
            image_size=image_size,
            patch_size=patch_size,
            num_classes=num_classes,
            dim=96,
            depth=4,
            heads=3,
            mlp_dim=192,
            channels=6,
            linear_layer=partial(BcosLinear, b=2, max_out=1),
            norm_layer=norms.NoBias(norms.DetachableLayerNorm),
            act_layer=nn.Identity,
        )
    return BcosSequential(vit, LogitLayer(logit_bias=math.log(1 / (num_classes - 1))))


def encoded_shapes(length: int, split: str, image_size: int) -> TensorDataset:
    """SyntheticShapes as B-cos inputs: [x, 1 − x] with x in [0, 1], labels and masks."""
    images, labels, masks = render(SyntheticShapes(length, split=split, image_size=image_size))
    pictures = images * 0.5 + 0.5  # SyntheticShapes normalises with mean = std = 0.5
    return TensorDataset(torch.cat([pictures, 1 - pictures], dim=1), labels, masks)


class BcosClassifier(pl.LightningModule):
    def __init__(self, num_classes: int = 4, image_size: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = bcos_simple_vit(num_classes, image_size, patch_size=8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=8, help="DAVE samples per image")
    parser.add_argument("--out", default="runs/bcos")
    args = parser.parse_args()
    pl.seed_everything(0)

    train = encoded_shapes(args.train_size, "train", args.image_size)
    probe = encoded_shapes(16, "probe", args.image_size).tensors
    # inputs in [0, 1]: the noise level is relative to them, so a smaller one than for
    # ImageNet-normalised timm inputs
    monitor = DAVEMonitor(probe, n_samples=args.n_samples, noise_alpha=0.2)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[monitor],
        logger=TensorBoardLogger(args.out, name="bcos_vit"),
        enable_progress_bar=False,
    )
    trainer.fit(
        BcosClassifier(image_size=args.image_size), DataLoader(train, batch_size=32, shuffle=True)
    )
    for record in monitor.history:
        metrics = record["metrics"]
        print(
            f"step {record['global_step']}: probe accuracy {metrics['probe_accuracy']:.2f}, "
            f"EnergyPG {metrics['energy_pg']:.2f}, map reliability {metrics['map_reliability']:.2f}"
        )
    print(f"tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
