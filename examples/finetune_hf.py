"""Fine-tune a HuggingFace transformers ViT with DAVEMonitor watching, the usual HF way.

The LightningModule's ``forward`` returns the HF output and batches are dicts
``{"pixel_values", "labels"}``; the monitor reads the logits from the output, takes its probe
from the validation dicts and no ``forward_fn`` is needed. Offline, a small ViT built from a
config learns the synthetic shapes:

    python examples/finetune_hf.py --epochs 2

Online, a pretrained checkpoint and its image processor (normalisation and size):

    python examples/finetune_hf.py --model google/vit-base-patch16-224 --pretrained
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from dave_lightning import DAVEMonitor
from dave_lightning.data import SyntheticShapes


class HFShapes(Dataset):
    """SyntheticShapes items as HF dicts, normalised with ``mean``/``std``."""

    def __init__(self, length: int, split: str, size: int, mean: list, std: list) -> None:
        self.shapes = SyntheticShapes(length, split=split, image_size=size)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label, _ = self.shapes[index]
        pixels = image * 0.5 + 0.5  # SyntheticShapes' own normalisation undone
        return {"pixel_values": (pixels - self.mean) / self.std, "labels": torch.tensor(label)}


class HFClassifier(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        super().__init__()
        self.model = model
        self.lr = lr

    def forward(self, pixel_values: torch.Tensor):
        return self.model(pixel_values=pixel_values)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["pixel_values"]).logits, batch["labels"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["pixel_values"]).logits
        self.log("val_acc", (logits.argmax(1) == batch["labels"]).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, object, int]:
    """The model, its image processor and its input size."""
    if args.pretrained:
        processor = AutoImageProcessor.from_pretrained(args.model)
        model = AutoModelForImageClassification.from_pretrained(
            args.model, num_labels=4, ignore_mismatched_sizes=True
        )
        return model, processor, model.config.image_size
    config = ViTConfig(
        image_size=args.image_size, patch_size=8, hidden_size=96, num_hidden_layers=4,
        num_attention_heads=3, intermediate_size=192, num_labels=4,
    )  # fmt: skip
    processor = ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ViTForImageClassification(config), processor, args.image_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="google/vit-base-patch16-224", help="with --pretrained")
    parser.add_argument("--pretrained", action="store_true", help="download the model (online)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=64, help="offline model's input size")
    parser.add_argument("--n-samples", type=int, default=8, help="DAVE samples per image")
    parser.add_argument("--out", default="runs/finetune_hf")
    args = parser.parse_args()
    pl.seed_everything(0)

    model, processor, size = build(args)
    mean, std = list(processor.image_mean), list(processor.image_std)
    train = HFShapes(args.train_size, "train", size, mean, std)
    val = HFShapes(64, "val", size, mean, std)
    # the processor's normalisation shows the probe images as they are
    monitor = DAVEMonitor("val", n_samples=args.n_samples, image_processor=processor)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[monitor],
        logger=TensorBoardLogger(args.out, name="hf_vit"),
        enable_progress_bar=False,
    )
    trainer.fit(
        HFClassifier(model, lr=5e-4 if args.pretrained else 2e-3),
        DataLoader(train, batch_size=32, shuffle=True),
        DataLoader(val, batch_size=64),
    )
    for record in monitor.history:
        metrics = record["metrics"]
        print(
            f"step {record['global_step']}: probe accuracy {metrics['probe_accuracy']:.2f}, "
            f"map reliability {metrics['map_reliability']:.2f}"
        )
    print(f"tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
