"""A Lightning Fabric training loop that calls the monitor's hooks, for tests/test_fabric.py (in
the test process and in the DDP processes it launches)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric import Fabric
from lightning_fixtures import dropout_vit, loader
from torch import nn

PROBE_SIZE = 7
OPTIONS = {"n_samples": 2, "deletion_steps": 4, "max_images": 1, "slow_metrics_every": 1}


class Counting(nn.Module):
    """The tiny timm ViT with dropout (training draws from the global RNG and depends on the
    mode); counts the images its forward sees in eval mode (the monitor's passes) per step."""

    def __init__(self) -> None:
        super().__init__()
        self.model = dropout_vit()
        self.step = 0
        self.counts: dict[str, int] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training:
            key = str(self.step)
            self.counts[key] = self.counts.get(key, 0) + len(images)
        return self.model(images)


def fit(fabric: Fabric, watched: bool, epochs: int = 2, items: int = 16) -> Counting:
    """``epochs`` epochs of AdamW on ``items`` images in batches of 8 (per process), from the
    weights of ``torch.manual_seed(0)``; ``watched`` calls the monitor's hooks."""

    def call(hook: str, **kwargs: Any) -> None:
        if watched:
            fabric.call(hook, fabric=fabric, model=model, **kwargs)

    torch.manual_seed(0)
    module = Counting()
    model, optimizer = fabric.setup(module, torch.optim.AdamW(module.parameters(), lr=0.05))
    data = fabric.setup_dataloaders(loader(items, batch_size=8))
    call("on_train_start")
    step, epoch = 0, 0
    for epoch in range(epochs):
        for images, labels in data:
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            step += 1
            module.step = step
            call("on_train_batch_end", step=step, epoch=epoch)
        call("on_train_epoch_end", step=step, epoch=epoch)
    call("on_train_end", step=step, epoch=epoch)
    return module


def same_weights(first: nn.Module, second: nn.Module) -> bool:
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)
