"""A tiny LightningModule and data for real Trainer fits in tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from tiny_models import NUM_CLASSES, timm_vit
from torch.utils.data import DataLoader, TensorDataset


class TinyClassifier(pl.LightningModule):
    """A 2-block timm ViT on 32 × 32 images, trained with AdamW."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = timm_vit()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        loss = torch.nn.functional.cross_entropy(self(images), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        self.log("val_loss", torch.nn.functional.cross_entropy(self(images), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def random_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (n, 3, 32, 32), labels cycling over the classes, and a centre-square mask each."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    labels = torch.arange(n) % NUM_CLASSES
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    return images, labels, masks


def loader(n: int = 32, seed: int = 0, batch_size: int = 8) -> DataLoader:
    images, labels, _ = random_data(n, seed)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)
