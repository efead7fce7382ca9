"""A plain PyTorch loop drives ProbeMonitor itself (examples/plain_pytorch.py): its TensorBoard run
gets the same scalar and image tags as a DAVEMonitor fit with the same probe and options."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from dave_lightning import DAVEMonitor
from dave_lightning.data import SyntheticShapes, render

EXAMPLE = Path(__file__).parent.parent / "examples" / "plain_pytorch.py"
SIZE, NUM_PROBE, N_SAMPLES = 32, 4, 2


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plain_pytorch", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Classifier(pl.LightningModule):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=2e-3)


def tags(log_dir: Path) -> dict[str, set[str]]:
    """The run's DAVE scalar and image tags."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    found = accumulator.Tags()
    return {
        kind: {t for t in found[kind] if t.startswith("dave/")} for kind in ("scalars", "images")
    }


def test_the_plain_loop_logs_the_tags_of_the_callback(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    plain = example()
    args = ["--epochs", "1", "--train-size", "16", "--image-size", str(SIZE)]
    args += ["--num-probe", str(NUM_PROBE), "--n-samples", str(N_SAMPLES)]
    monitor = plain.main([*args, "--out", str(tmp_path / "plain")])
    assert [h["global_step"] for h in monitor.history] == [0, 1]

    images, labels, _ = render(SyntheticShapes(16, image_size=SIZE))
    callback = DAVEMonitor(
        plain.probe_set(SIZE, NUM_PROBE),
        n_samples=N_SAMPLES,
        mean=SyntheticShapes.mean,
        std=SyntheticShapes.std,
    )
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[callback],
        logger=TensorBoardLogger(tmp_path, name="lightning", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    torch.manual_seed(0)
    trainer.fit(Classifier(plain.build_model(SIZE)), DataLoader(TensorDataset(images, labels), 32))
    assert [h["global_step"] for h in callback.history] == [0, 1]

    expected = tags(tmp_path / "lightning" / "version_0")
    assert {"dave/energy_pg", "dave/drift_first_cosine", "dave/grid_pg"} <= expected["scalars"]
    assert {"dave/probe/0", "dave/probe_grid", "dave/progression/0"} <= expected["images"]
    # the time shares come with the schedule's evaluations (monitor.run), which this loop skips
    expected["scalars"] -= {"dave/time_share", "dave/time_share_cumulative"}
    assert tags(tmp_path / "plain") == expected
