"""Tiny monitor runs, Lightning checkpoints and images for the CLI tests.

The LightningModules here are importable by ``dave-lightning`` subprocesses (``tests`` goes on
their PYTHONPATH) as ``cli_fixtures:TinyLit``, ``cli_fixtures:OtherLit`` and
``cli_fixtures:NeverBuilt``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import timm
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from dave_lightning.attribution import DAVESettings
from dave_lightning.cli import main
from dave_lightning.data import SyntheticShapes
from dave_lightning.evaluation import EvaluationOptions, ProbeEvaluator
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import IDENTITY
from dave_lightning.probe import Probe
from dave_lightning.snapshot import save_snapshot

NUM_CLASSES = 4
IMAGE_SIZE = 32
TESTS = Path(__file__).parent
ROOT = TESTS.parent
FAST_ENGINE = DAVESettings(n_samples=2, seed=0)
FAST_OPTIONS = EvaluationOptions(
    metrics=("energy_pg", "gini", "patch_artifact"), compare_methods=()
)


def tiny_vit(embed_dim: int = 32) -> torch.nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=IMAGE_SIZE,
        patch_size=8,
        depth=2,
        embed_dim=embed_dim,
        num_heads=2,
        num_classes=NUM_CLASSES,
    )


class TinyLit(pl.LightningModule):
    """A 2-block timm ViT classifier on 32 × 32 images."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = tiny_vit()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class OtherLit(TinyLit):
    """Same interface, other widths: TinyLit's checkpoints do not fit it."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__(lr)
        self.model = tiny_vit(embed_dim=16)


class NeverBuilt(TinyLit):
    """Fails when built: a command given it must refuse bad input before loading any model."""

    def __init__(self, lr: float = 0.05) -> None:
        raise RuntimeError("NeverBuilt was built")


class Marker:
    """A plain Python object: a checkpoint holding one needs full unpickling."""


def synthetic_probe(count: int = 4, seed: int = 0) -> Probe:
    dataset = SyntheticShapes(count, split="probe", image_size=IMAGE_SIZE, seed=seed)
    images, labels, masks = zip(*(dataset[i] for i in range(count)), strict=True)
    return Probe(torch.stack(images), torch.tensor(labels), torch.stack(masks))


def write_run(log_dir: Path, steps: tuple[int, ...], probe: Probe) -> Path:
    """Snapshots as DAVEMonitor writes them, of a randomly re-initialised ViT per step."""
    evaluator = ProbeEvaluator(probe, FAST_ENGINE, FAST_OPTIONS, IDENTITY)
    (log_dir / "dave").mkdir(parents=True, exist_ok=True)
    for step in steps:
        torch.manual_seed(step)
        evaluation = evaluator.evaluate(
            ModelAdapter(tiny_vit()),
            epoch=step,
            global_step=step,
            settings={**evaluator.settings(), "mean": [0.5] * 3, "std": [0.5] * 3},
        )
        save_snapshot(log_dir / "dave", evaluation)
    return log_dir


def fit_checkpoints(directory: Path) -> list[Path]:
    """Two real Lightning checkpoints of one short fit, after training steps 1 and 2."""
    if not (directory / "epoch=0-step=2.ckpt").is_file():
        pl.seed_everything(0, verbose=False)
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(
            torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            torch.arange(16) % NUM_CLASSES,
        )
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                ModelCheckpoint(directory, every_n_train_steps=1, save_top_k=-1, save_last=False)
            ],
        )
        trainer.fit(TinyLit(), DataLoader(data, batch_size=8))
    return [directory / "epoch=0-step=1.ckpt", directory / "epoch=0-step=2.ckpt"]


def write_images(directory: Path, count: int = 2) -> list[Path]:
    """PNG files of synthetic shapes."""
    directory.mkdir(parents=True, exist_ok=True)
    dataset = SyntheticShapes(count, split="val", image_size=48)
    paths = []
    for index in range(count):
        pixels = dataset[index][0] * 0.5 + 0.5
        array = (pixels.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        paths.append(directory / f"shape_{index}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


def write_hf_model(
    directory: Path, mean: tuple[float, ...], std: tuple[float, ...], *, seed: int = 0
) -> Path:
    """A tiny random-init HuggingFace ViT (``save_pretrained``) with an image processor that
    normalises with ``mean``/``std``."""
    from hf_models import hf_model
    from transformers import ViTImageProcessor

    torch.manual_seed(seed)
    hf_model("vit").save_pretrained(directory)
    ViTImageProcessor(image_mean=list(mean), image_std=list(std)).save_pretrained(directory)
    return directory


def run_cli(
    *args: object, cwd: Path | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dave_lightning.cli ARGS`` in a subprocess that can import this module, with
    ``input`` on its stdin."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
        "OMP_NUM_THREADS": "1",  # tiny models; no OpenMP contention with the test process
    }
    return subprocess.run(
        [sys.executable, "-m", "dave_lightning.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        input=input,
        timeout=300,
    )


def call_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """``main`` in-process: (exit code, stderr)."""
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit_:  # argparse errors exit like the real command
        code = exit_.code
    return code, capsys.readouterr().err


def assert_usage_error(code: int, stderr: str, *fragments: str) -> None:
    """Exit code 2, one ``dave-lightning: error:`` line naming the problem, no traceback."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("dave-lightning: error:")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
