"""Keep the checkpoint whose explanations are best: ModelCheckpoint on a DAVE metric.

DAVEMonitor puts its metrics in ``trainer.callback_metrics`` after every evaluation, before
Lightning's checkpoint and early-stopping callbacks read them, so ``dave/energy_pg`` (the share
of attribution on the object) can pick the checkpoint, and ``EarlyStopping`` can stop a run
whose localisation collapses. Offline, on the synthetic shapes:

    python examples/best_explanations_checkpoint.py --epochs 4
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from dave_lightning import DAVEMonitor
from dave_lightning.data import ShapesClassifier, ShapesDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=8, help="DAVE samples per image")
    parser.add_argument("--out", default="runs/best_explanations")
    args = parser.parse_args()
    pl.seed_everything(0)

    data = ShapesDataModule(train_size=args.train_size, image_size=args.image_size)
    model = ShapesClassifier(image_size=args.image_size)
    monitor = DAVEMonitor(
        "val", n_samples=args.n_samples, at_start=False, mean=data.mean, std=data.std
    )
    best = ModelCheckpoint(monitor="dave/energy_pg", mode="max", save_top_k=1)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[monitor, best],
        logger=TensorBoardLogger(args.out, name="shapes"),
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)

    for record in monitor.history:
        print(f"step {record['global_step']}: EnergyPG {record['metrics']['energy_pg']:.3f}")
    kept = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
    print(
        f"kept {best.best_model_path} (epoch {kept['epoch']}, EnergyPG "
        f"{float(best.best_model_score):.3f}): the checkpoint with the best explanations"
    )


if __name__ == "__main__":
    main()
