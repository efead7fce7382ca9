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


# --------------------------------------------------------------------------------------------
# Helpers for tests/test_callback_promises.py (the ones above stay as they are).


def dropout_vit(drop: float = 0.2) -> torch.nn.Module:
    """The tiny timm ViT of ``tiny_models.timm_vit`` with every kind of dropout timm offers."""
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        num_classes=NUM_CLASSES,
        drop_rate=drop,
        pos_drop_rate=drop,
        proj_drop_rate=drop,
        attn_drop_rate=drop,
        drop_path_rate=drop,
    )


class CarryGradClassifier(pl.LightningModule):
    """Dropout ViT trained with manual optimisation whose gradients carry over between steps.

    ``.grad`` is zeroed only after every third optimizer step, so between most batches it holds
    gradients that the next step adds to and uses: anything that writes ``.grad`` outside
    training changes the trained weights, and a callback sees non-None ``.grad`` fields.
    """

    def __init__(self, lr: float = 1e-2, drop: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = dropout_vit(drop)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        optimizer = self.optimizers()
        loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.manual_backward(loss)
        optimizer.step()
        if self.global_step % 3 == 0:
            optimizer.zero_grad()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def shuffled_loader(n: int = 16, seed: int = 0, batch_size: int = 4) -> DataLoader:
    """A shuffling loader without its own generator: its order comes from the global RNG."""
    images, labels, _ = random_data(n, seed)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)


def distinct_mask_data(
    n: int = 6, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`random_data`, but each image gets its own mask (a different 12 × 12 square
    per image, never empty), so that pairing maps with the wrong image's mask shows."""
    images, labels, _ = random_data(n, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    for index in range(n):
        row, col = (int(v) for v in torch.randint(0, 21, (2,), generator=generator))
        masks[index, row : row + 12, col : col + 12] = True
    return images, labels, masks
