"""Watch what a ViT looks at in a plain PyTorch training loop: no Trainer, no callbacks.

``ProbeMonitor`` is the monitor core that every front door drives; a plain loop drives it
itself: ``setup`` once with the model and a ``SummaryWriter``, then ``evaluate`` and
``publish`` whenever an evaluation is due, and ``close`` after training for the progression
pictures. The TensorBoard run gets the same tags as ``DAVEMonitor``'s. Offline, a small timm
ViT learns the synthetic shapes:

    python examples/plain_pytorch.py --epochs 2

Then: tensorboard --logdir runs/plain_pytorch
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from dave_lightning import ProbeMonitor
from dave_lightning.data import SyntheticShapes, render


def build_model(image_size: int) -> nn.Module:
    """A small timm ViT (patch 8) for the four shapes, trained from scratch."""
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=image_size, patch_size=8, embed_dim=96, depth=4,
        num_heads=3, mlp_ratio=2.0, num_classes=4,
    )  # fmt: skip


def probe_set(image_size: int, num_probe: int) -> tuple[torch.Tensor, ...]:
    """Held-out images with their object masks: (images, labels, masks)."""
    return render(SyntheticShapes(num_probe, split="probe", image_size=image_size))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-probe", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=8, help="DAVE samples per image")
    parser.add_argument("--out", default="runs/plain_pytorch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> ProbeMonitor:
    args = parse(argv)
    torch.manual_seed(0)  # the model's initial weights
    model = build_model(args.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    images, labels, _ = render(SyntheticShapes(args.train_size, image_size=args.image_size))
    loader = DataLoader(
        TensorDataset(images, labels),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )

    writer = SummaryWriter(args.out)
    monitor = ProbeMonitor(
        probe_set(args.image_size, args.num_probe),
        n_samples=args.n_samples,
        mean=SyntheticShapes.mean,
        std=SyntheticShapes.std,
    )
    monitor.setup(model, writer)  # checks the probe against the model; snapshots: <out>/dave
    monitor.publish(monitor.evaluate(model, step=0, epoch=0))  # the untrained baseline
    step, epoch = 0, 0
    for epoch in range(args.epochs):
        model.train()
        for batch_images, batch_labels in loader:
            loss = F.cross_entropy(model(batch_images), batch_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        evaluation = monitor.publish(monitor.evaluate(model, step=step, epoch=epoch))
        metrics = evaluation.metrics
        print(
            f"epoch {epoch}, step {step}: probe accuracy {metrics['probe_accuracy']:.2f}, "
            f"EnergyPG {metrics['energy_pg']:.2f}, map reliability "
            f"{metrics['map_reliability']:.2f}"
        )
    monitor.close(model, step=step, epoch=epoch)  # each probe image's maps across the run
    writer.close()
    print(f"snapshots in {monitor.snapshot_dir}; tensorboard --logdir {args.out}")
    return monitor


if __name__ == "__main__":
    main()
