"""Watch what a ViT looks at in a Lightning Fabric loop: FabricMonitor answers ``fabric.call``.

The monitor is one of Fabric's callbacks; the loop calls its hooks at train start, after each
optimizer step, at each epoch's end and at train end. It logs to Fabric's loggers, writes its
snapshots into the TensorBoard run and evaluates the module Fabric wraps, unwrapped, so that it
works under mixed precision (``--precision bf16-mixed``) and DDP (``--devices 2``; every process
evaluates its share of the probe, rank 0 logs). Offline, a small timm ViT learns the synthetic
shapes:

    python examples/fabric_loop.py --epochs 2 --precision bf16-mixed

Then: tensorboard --logdir runs/fabric_loop
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from dave_lightning.data import SyntheticShapes, render
from dave_lightning.integrations.fabric import FabricMonitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-probe", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=8, help="DAVE samples per image")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed")
    parser.add_argument("--devices", type=int, default=1, help="processes (DDP from 2 on)")
    parser.add_argument("--out", default="runs/fabric_loop")
    args = parser.parse_args()

    probe = render(SyntheticShapes(args.num_probe, split="probe", image_size=args.image_size))
    monitor = FabricMonitor(
        probe, n_samples=args.n_samples, mean=SyntheticShapes.mean, std=SyntheticShapes.std
    )
    fabric = Fabric(
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision=args.precision,
        loggers=TensorBoardLogger(args.out, name="vit"),
        callbacks=[monitor],
    )
    fabric.launch()
    fabric.seed_everything(0)

    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=args.image_size, patch_size=8, embed_dim=96, depth=4,
        num_heads=3, mlp_ratio=2.0, num_classes=4,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model, optimizer = fabric.setup(model, optimizer)
    images, labels, _ = render(SyntheticShapes(args.train_size, image_size=args.image_size))
    loader = fabric.setup_dataloaders(
        DataLoader(
            TensorDataset(images, labels),
            batch_size=32,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
    )

    fabric.call("on_train_start", fabric=fabric, model=model)  # setup; the step-0 baseline
    step, epoch = 0, 0
    for epoch in range(args.epochs):
        model.train()
        for batch_images, batch_labels in loader:
            loss = F.cross_entropy(model(batch_images), batch_labels)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            step += 1
            fabric.call("on_train_batch_end", fabric=fabric, model=model, step=step, epoch=epoch)
        fabric.call("on_train_epoch_end", fabric=fabric, model=model, step=step, epoch=epoch)
    fabric.call("on_train_end", fabric=fabric, model=model, step=step, epoch=epoch)

    if fabric.global_rank == 0:
        for record in monitor.history:
            metrics = record["metrics"]
            print(
                f"step {record['global_step']}: probe accuracy {metrics['probe_accuracy']:.2f}, "
                f"EnergyPG {metrics['energy_pg']:.2f}"
            )
        print(f"snapshots in {monitor.snapshot_dir}; tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
