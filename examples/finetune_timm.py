"""Fine-tune any timm ViT with DAVEMonitor watching a fixed probe set.

Offline, on the synthetic shapes (object masks included):
    python examples/finetune_timm.py --epochs 2
Online, a pretrained model on your own ImageFolder data (``DATA/train/<class>/*.jpg`` and
``DATA/val/<class>/*.jpg``), optionally with object masks ``MASKS/<class>/<stem>.png``
(non-zero = object) for the probe images, which turns on EnergyPG:
    python examples/finetune_timm.py --model deit_small_patch16_224 --pretrained \
        --data DATA --masks MASKS
Then: tensorboard --logdir runs/finetune
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from dave_lightning import DAVEMonitor
from dave_lightning.data import ShapesDataModule


class TimmClassifier(pl.LightningModule):
    """A timm model with a fresh head for ``num_classes``, trained with AdamW."""

    def __init__(
        self, model_name: str, num_classes: int, pretrained: bool, image_size: int, lr: float
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, img_size=image_size
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        logits = self(batch[0])
        self.log("val_acc", (logits.argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.05)


def image_folder_probe(
    val: datasets.ImageFolder,
    num_probe: int,
    size: int,
    mean: tuple,
    std: tuple,
    masks: Path | None,
) -> tuple[torch.Tensor, ...]:
    """``num_probe`` val images spread over the (class-sorted) folder, resized to size × size,
    with their masks when a mask folder is given."""
    resize = transforms.Resize((size, size))
    to_input = transforms.Compose([resize, transforms.ToTensor(), transforms.Normalize(mean, std)])
    picks = torch.linspace(0, len(val) - 1, min(num_probe, len(val))).round().long().tolist()
    images = torch.stack([to_input(Image.open(val.samples[i][0]).convert("RGB")) for i in picks])
    labels = torch.tensor([val.samples[i][1] for i in picks])
    if masks is None:
        return images, labels
    mask_resize = transforms.Resize((size, size), transforms.InterpolationMode.NEAREST)
    object_masks = []
    for i in picks:
        file = Path(val.samples[i][0])
        mask_file = masks / file.parent.name / f"{file.stem}.png"
        object_masks.append(
            transforms.functional.pil_to_tensor(mask_resize(Image.open(mask_file)))[0] > 0
        )
    return images, labels, torch.stack(object_masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="any timm ViT name")
    parser.add_argument("--pretrained", action="store_true", help="download weights (online)")
    parser.add_argument("--data", type=Path, help="ImageFolder root with train/ and val/")
    parser.add_argument("--masks", type=Path, help="probe object masks <class>/<stem>.png")
    parser.add_argument(
        "--image-size",
        type=int,
        help="input size (default: 64 synthetic, the model's own for --data)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--num-probe", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=16, help="DAVE samples per image")
    parser.add_argument("--out", default="runs/finetune")
    args = parser.parse_args()
    pl.seed_everything(0)

    if args.data is None:
        size = args.image_size or 64
        data = ShapesDataModule(
            image_size=size, train_size=args.train_size, batch_size=args.batch_size
        )
        probe, (mean, std), num_classes = data.probe(args.num_probe), (data.mean, data.std), 4
        train_loader, val_loader = None, None
    else:
        config = timm.data.resolve_data_config(
            {}, model=timm.create_model(args.model, pretrained=False)
        )
        size = args.image_size or config["input_size"][-1]
        config["input_size"] = (3, size, size)
        mean, std = config["mean"], config["std"]
        train = datasets.ImageFolder(
            args.data / "train", timm.data.create_transform(**config, is_training=True)
        )
        val = datasets.ImageFolder(args.data / "val", timm.data.create_transform(**config))
        probe = image_folder_probe(val, args.num_probe, size, mean, std, args.masks)
        num_classes = len(train.classes)
        train_loader = DataLoader(train, args.batch_size, shuffle=True, num_workers=2)
        val_loader = DataLoader(val, args.batch_size, num_workers=2)

    model = TimmClassifier(args.model, num_classes, args.pretrained, size, args.lr)
    monitor = DAVEMonitor(
        probe,
        num_probe=args.num_probe,
        n_samples=args.n_samples,
        every_n_epochs=1,
        mean=mean,
        std=std,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=TensorBoardLogger(args.out, name=args.model),
        callbacks=[monitor],
    )
    if args.data is None:
        trainer.fit(model, datamodule=data)
    else:
        trainer.fit(model, train_loader, val_loader)
    for record in monitor.history:
        metrics = record["metrics"]
        line = f"step {record['global_step']:>6}: probe accuracy {metrics['probe_accuracy']:.2f}"
        # EnergyPG needs masks; GridPG and stability are slow metrics (not at every evaluation)
        for key, title in (("energy_pg", "EnergyPG"), ("grid_pg", "GridPG")):
            if key in metrics:
                line += f", {title} {metrics[key]:.2f}"
        if "stability_spearman" in metrics:
            line += f", stability {metrics['stability_spearman']:.2f}"
        print(line + f", map reliability {metrics['map_reliability']:.2f}")
    print(f"tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
