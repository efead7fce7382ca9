"""Watch what a ViT looks at while the HuggingFace ``Trainer`` trains it, and find the checkpoint
whose explanations are best.

DAVETrainerCallback evaluates at the start, at every HF evaluation (here every epoch) and at
the end; its metrics join each evaluation's as ``eval_dave/<metric>``, so
``metric_for_best_model="dave/energy_pg"`` (the share of attribution on the object) picks the
best checkpoint (``trainer.state.best_model_checkpoint``, kept by the checkpoint rotation).
Scalars land in ``state.log_history``, scalars and heatmaps in a TensorBoard run beside the
Trainer's. Offline, a small ViT built from a config learns the synthetic shapes:

    python examples/hf_trainer.py --epochs 3

Then: tensorboard --logdir runs/hf_trainer/runs
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from dave_lightning.data import SyntheticShapes, render
from dave_lightning.integrations.transformers import DAVETrainerCallback


class HFShapes(Dataset):
    """SyntheticShapes items as the HF Trainer takes them: ``{"pixel_values", "labels"}``."""

    def __init__(self, length: int, split: str, size: int) -> None:
        self.shapes = SyntheticShapes(length, split=split, image_size=size)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label, _ = self.shapes[index]
        return {"pixel_values": image, "labels": torch.tensor(label)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-probe", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=8, help="DAVE samples per image")
    parser.add_argument("--out", default="runs/hf_trainer")
    args = parser.parse_args()
    torch.manual_seed(0)  # the model's initial weights

    config = ViTConfig(
        image_size=args.image_size, patch_size=8, hidden_size=96, num_hidden_layers=4,
        num_attention_heads=3, intermediate_size=192, num_labels=4,
    )  # fmt: skip
    model = ViTForImageClassification(config)
    # the probe carries object masks (HF batches cannot), which EnergyPG needs; without masks,
    # DAVETrainerCallback(eval_dataset) takes the first num_probe evaluation items
    probe = render(SyntheticShapes(args.num_probe, split="probe", image_size=args.image_size))
    callback = DAVETrainerCallback(
        probe, n_samples=args.n_samples, mean=SyntheticShapes.mean, std=SyntheticShapes.std
    )
    training = TrainingArguments(
        output_dir=args.out,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        metric_for_best_model="dave/energy_pg",  # looked up as eval_dave/energy_pg
        report_to=["tensorboard"],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=HFShapes(args.train_size, "train", args.image_size),
        eval_dataset=HFShapes(64, "val", args.image_size),
        callbacks=[callback],
    )
    trainer.train()
    for entry in trainer.state.log_history:
        if "dave/energy_pg" in entry:
            print(f"step {entry['step']}: EnergyPG {entry['dave/energy_pg']:.3f}")
    print(
        f"best EnergyPG {trainer.state.best_metric:.3f} at {trainer.state.best_model_checkpoint}; "
        f"snapshots in {callback.snapshot_dir}; tensorboard --logdir {args.out}/runs"
    )


if __name__ == "__main__":
    main()
