"""The demo's model and data: a small timm ViT and SyntheticShapes in a LightningDataModule.

Used by ``dave-lightning demo``, the examples and the benchmarks. Batches are ``(images, labels,
masks)``, so ``DAVEMonitor(probe="val")`` finds object masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dave_lightning.data.synthetic import SyntheticShapes

NUM_CLASSES = 4
PATCH_SIZE = 8


def render(dataset: SyntheticShapes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All items of ``dataset`` as (images, labels, masks) tensors (rendering once is cheap)."""
    images, labels, masks = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels), torch.stack(masks)


class ShapesDataModule(pl.LightningDataModule):
    """SyntheticShapes rendered into memory: train and val splits, plus the probe split.

    Batches are ``(images, labels, masks)``, so ``DAVEMonitor(probe="val")`` finds object masks.
    ``shortcut`` is the share of train and probe images carrying the class-coloured marker.
    """

    def __init__(
        self,
        *,
        train_size: int = 8192,
        val_size: int = 512,
        image_size: int = 64,
        num_classes: int = NUM_CLASSES,
        shortcut: float = 0.0,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mean, self.std = SyntheticShapes.mean, SyntheticShapes.std
        self._splits: dict[str, TensorDataset] = {}

    def dataset(self, split: str, length: int) -> SyntheticShapes:
        """The SyntheticShapes split with this module's size, classes, shortcut and seed."""
        hp = self.hparams
        return SyntheticShapes(
            length,
            split=split,
            image_size=hp.image_size,
            num_classes=hp.num_classes,
            shortcut=hp.shortcut,
            seed=hp.seed,
        )

    def probe(self, num_probe: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first ``num_probe`` probe-split items as (images, labels, object masks)."""
        return render(self.dataset("probe", num_probe))

    def marker_masks(self, num_probe: int) -> torch.Tensor:
        """(num_probe, H, W) bool: where the shortcut marker sits in each probe image."""
        probe = self.dataset("probe", num_probe)
        return torch.stack([probe.marker_mask(i) for i in range(num_probe)])

    def corner_masks(self, num_probe: int) -> torch.Tensor:
        """(num_probe, H, W) bool: the marker's corner square in every probe image, whether the
        image carries the marker or not (the region a run without the marker tracks)."""
        region = self.dataset("probe", num_probe).marker_region
        return region.expand(num_probe, *region.shape).clone()

    def setup(self, stage: str) -> None:
        if not self._splits:
            sizes = {"train": self.hparams.train_size, "val": self.hparams.val_size}
            self._splits = {
                split: TensorDataset(*render(self.dataset(split, n))) for split, n in sizes.items()
            }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._splits["train"], batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._splits["val"], batch_size=256)


class ShapesClassifier(pl.LightningModule):
    """A small timm ViT (``vit_tiny_patch16_224`` resized) trained from scratch with AdamW.

    The learning rate warms up for ``warmup_fraction`` of training, then follows a cosine to
    zero. Accuracy of the current train and val epoch is kept for :meth:`accuracy`.
    """

    def __init__(
        self,
        *,
        num_classes: int = NUM_CLASSES,
        image_size: int = 64,
        patch_size: int = PATCH_SIZE,
        embed_dim: int = 96,
        depth: int = 4,
        num_heads: int = 3,
        mlp_ratio: float = 2.0,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=num_classes,
        )
        self._hits = {"train": 0, "val": 0}
        self._seen = {"train": 0, "val": 0}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def accuracy(self, stage: str) -> float:
        """Accuracy over the current (or last) epoch of ``stage`` ("train" or "val")."""
        return self._hits[stage] / max(self._seen[stage], 1)

    def _step(self, batch: Sequence[torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        hits = (logits.argmax(1) == labels).sum()
        self._hits[stage] += int(hits)
        self._seen[stage] += len(labels)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", hits / len(labels), on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_epoch_start(self) -> None:
        self._hits["train"] = self._seen["train"] = 0

    def on_validation_epoch_start(self) -> None:
        self._hits["val"] = self._seen["val"] = 0

    def configure_optimizers(self) -> dict[str, object]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(hp.warmup_fraction * total), 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (
                1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0))
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
