"""Keep the checkpoint whose explanations are best, without keeping an under-trained model.

DAVEMonitor puts its metrics and their interval bounds in ``trainer.callback_metrics`` after
every evaluation, before validation and before Lightning's checkpoint and early-stopping
callbacks read them. ``ModelCheckpoint(monitor="dave/energy_pg")`` alone keeps the epoch whose
maps put the most attribution on the object, which can be an early, less accurate one. This
example also logs one score that needs both, ``score = val accuracy × the lower bound of
EnergyPG's interval`` (docs/reading.md, "Choosing a checkpoint by its explanations"), and keeps
the checkpoint with the best score beside the one with the best EnergyPG. Offline, on the
synthetic shapes:

    python examples/best_explanations_checkpoint.py --epochs 4
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from dave_lightning import DAVEMonitor
from dave_lightning.data import ShapesClassifier, ShapesDataModule

LOCALISATION = "dave/energy_pg/low"  # the lower bound of EnergyPG's interval


class ScoredClassifier(ShapesClassifier):
    """The demo's classifier, logging ``score`` = val accuracy × EnergyPG's lower bound.

    The monitor's evaluation of an epoch runs before its validation, so the bound is in
    ``trainer.callback_metrics`` when validation ends; with a torchmetrics accuracy, use its
    ``compute()`` where this uses ``self.accuracy("val")``.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.scores: list[dict[str, float]] = []

    def on_validation_epoch_end(self) -> None:
        low = self.trainer.callback_metrics.get(LOCALISATION)
        if self.trainer.sanity_checking or low is None:
            return  # no evaluation yet: nothing to score
        accuracy = self.accuracy("val")
        row = {"epoch": self.current_epoch, "val_acc": accuracy, "energy_pg_low": float(low)}
        row["score"] = accuracy * row["energy_pg_low"]
        self.scores.append(row)
        self.log("score", row["score"])


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
    model = ScoredClassifier(image_size=args.image_size)
    monitor = DAVEMonitor(
        "val", n_samples=args.n_samples, at_start=False, mean=data.mean, std=data.std
    )
    best_maps = ModelCheckpoint(monitor="dave/energy_pg", mode="max", filename="maps-{epoch}")
    best_score = ModelCheckpoint(monitor="score", mode="max", filename="score-{epoch}")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[monitor, best_maps, best_score],
        logger=TensorBoardLogger(args.out, name="shapes"),
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)

    print("epoch | val acc | EnergyPG [interval] | score")
    for row, record in zip(model.scores, monitor.history, strict=True):
        low, high = record["intervals"]["energy_pg"]
        energy = f"{record['metrics']['energy_pg']:.3f} [{low:.3f}, {high:.3f}]"
        print(f"{row['epoch']:>5} | {row['val_acc']:>7.3f} | {energy:>19} | {row['score']:.3f}")
    for name, best in (("EnergyPG", best_maps), ("score", best_score)):
        print(f"best {name}: kept {best.best_model_path} ({float(best.best_model_score):.3f})")


if __name__ == "__main__":
    main()
