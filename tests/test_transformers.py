"""HuggingFace transformers image classifiers: the engine, the monitor and the CLI on them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_fixtures import run_cli, write_images
from hf_models import NUM_LABELS, hf_model, zero_hf_offsets
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tiny_models import randomize
from torch.utils.data import DataLoader, Dataset

from dave_lightning import DAVE, DAVEMonitor, effective_mode, viz
from dave_lightning.models import ModelAdapter
from dave_lightning.snapshot import list_snapshots, load_snapshot


@pytest.mark.parametrize("name", ["vit", "deit_teacher", "beit", "swin", "dinov2"])
def test_dave_runs_directly_on_the_hf_model(name: str) -> None:
    model = hf_model(name)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = DAVE(model, n_samples=2).attribute(images, torch.tensor([1, 4]))
    assert maps.shape == (2, 1, 32, 32) and torch.isfinite(maps).all() and maps.max() == 1
    adapter = ModelAdapter(model)
    assert adapter.family.name == "transformers"
    assert adapter.patch_size == (4 if name == "swin" else 8)
    assert adapter.input_size == (32, 32) and adapter.input_channels == 3


def completeness_error(model: torch.nn.Module) -> float:
    """max |Σ x ⊙ effective gradient − logit| / max |logit| for target class 2."""
    adapter = ModelAdapter(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with adapter.attribution():
        inputs = images.clone().requires_grad_()
        with effective_mode():
            logits = adapter(inputs)[:, 2]
        (grad,) = torch.autograd.grad(logits.sum(), inputs)
    return float(((inputs * grad).sum((1, 2, 3)) - logits).abs().max() / logits.abs().max())


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_completeness_on_a_bias_free_hf_vit(attention: str) -> None:
    model = zero_hf_offsets(randomize(hf_model("vit", attention=attention)))
    assert completeness_error(model) < 1e-5
    assert completeness_error(randomize(hf_model("vit", attention=attention))) > 1e-2  # control


@pytest.mark.parametrize("attention", ["flex_attention", "flash_attention_2"])
def test_attention_that_bypasses_the_functionals_runs_as_sdpa_and_is_restored(
    attention: str,
) -> None:
    model = zero_hf_offsets(randomize(hf_model("vit")))
    model.config._attn_implementation_internal = attention  # as loaded on a GPU machine
    assert completeness_error(model) < 1e-5
    assert model.config._attn_implementation == attention


@pytest.mark.parametrize("activation", ["gelu_new", "quick_gelu"])
def test_activations_written_with_tanh_or_sigmoid_are_covered(activation: str) -> None:
    model = zero_hf_offsets(randomize(hf_model("vit", hidden_act=activation)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # covered: no warning
        assert completeness_error(model) < 1e-5
    outside = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # the hooks are gone afterwards and never touched the forward
        torch.testing.assert_close(ModelAdapter(model)(outside), model(pixel_values=outside).logits)


def test_an_uncovered_activation_is_named_in_a_warning() -> None:
    model = hf_model("vit", hidden_act="relu2")
    with pytest.warns(UserWarning, match=r"does not cover the activation\(s\) \['ReLUSquared"):
        DAVE(model, n_samples=1).attribute(torch.randn(1, 3, 32, 32), 0)


class HFModule(pl.LightningModule):
    """The usual HF setup: forward returns the HF output, batches are dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.model = hf_model("vit")

    def forward(self, pixel_values: torch.Tensor):
        return self.model(pixel_values=pixel_values)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["pixel_values"]).logits, batch["labels"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["pixel_values"]).logits, batch["labels"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class DictImages(Dataset):
    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, 32, 32, generator=generator)
        self.labels = torch.arange(count) % NUM_LABELS

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def test_monitor_on_an_hf_module_with_dict_batches_and_a_val_probe(tmp_path: Path) -> None:
    monitor = DAVEMonitor("val", num_probe=4, n_samples=2, metrics=("gini",), max_images=1)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        callbacks=[monitor],
        logger=TensorBoardLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(
        HFModule(),
        DataLoader(DictImages(16, 0), batch_size=8),
        DataLoader(DictImages(8, 1), batch_size=8),
    )
    assert torch.equal(monitor.probe.images, DictImages(8, 1).images[:4])
    assert [h["global_step"] for h in monitor.history] == [0, 2]
    assert 0 < monitor.history[-1]["metrics"]["gini"] < 1


@pytest.fixture(scope="module")
def hf_directories(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two save_pretrained directories of tiny ViTs (4 labels), with an image processor."""
    from transformers import ViTImageProcessor

    root = tmp_path_factory.mktemp("hf")
    directories = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = hf_model("vit", num_labels=4)
        directory = root / f"vit_{seed}"
        model.save_pretrained(directory)
        ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
        directories.append(directory)
    return directories


def test_compare_two_hf_model_directories(hf_directories: list[Path], tmp_path: Path) -> None:
    result = run_cli(
        "compare",
        "--checkpoints",
        *hf_directories,
        "--n-samples",
        "2",
        "--num-probe",
        "4",
        "--metrics",
        "energy_pg",
        "gini",
        "drift",
        "--quiet",
        "--out",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["source"] for e in report["evaluations"]] == [str(d) for d in hf_directories]
    assert "drift_first_spearman" in report["evaluations"][1]["metrics"]
    assert (tmp_path / "maps_probe_3.png").is_file()


def test_explain_an_hf_model_directory(hf_directories: list[Path], tmp_path: Path) -> None:
    images = write_images(tmp_path / "images")
    result = run_cli(
        "explain", "--checkpoint", hf_directories[0], *images, "--n-samples", "2",
        "--quiet", "--out", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = torch.load(tmp_path / "out" / "maps.pt", weights_only=True)
    assert record["maps"].shape == (2, 1, 32, 32)
    assert record["settings"]["mean"] == [0.5, 0.5, 0.5]  # from preprocessor_config.json
    assert (tmp_path / "out" / "000_shape_0.png").is_file()


# Per-channel values where mean and std differ, so that swapping them shows.
PROCESSOR_MEAN, PROCESSOR_STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)


def test_an_image_processors_mean_and_std_normalise_the_monitors_pictures(
    tmp_path: Path,
) -> None:
    """The probe panel's first tile is the picture the probe was normalised from."""
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(image_mean=list(PROCESSOR_MEAN), image_std=list(PROCESSOR_STD))
    pictures = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    mean = torch.tensor(PROCESSOR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PROCESSOR_STD).view(1, 3, 1, 1)
    probe = ((pictures - mean) / std, torch.tensor([0, 1]))
    monitor = DAVEMonitor(
        probe,
        image_processor=processor,
        n_samples=2,
        metrics=("gini",),
        max_images=1,
        every_n_epochs=0,
        at_end=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pl.seed_everything(0, verbose=False)
        pl.Trainer(
            max_epochs=1,
            limit_train_batches=1,
            callbacks=[monitor],
            logger=False,
            default_root_dir=tmp_path,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        ).fit(HFModule(), DataLoader(DictImages(8, 0), batch_size=8))
    finally:
        torch.set_num_threads(threads)
    (path,) = list_snapshots(monitor.snapshot_dir)
    settings = load_snapshot(path)["settings"]
    assert settings["mean"] == pytest.approx(PROCESSOR_MEAN)
    assert settings["std"] == pytest.approx(PROCESSOR_STD)
    panel = np.array(
        Image.open(monitor.snapshot_dir / "png" / "step_00000000" / "dave_probe_0.png")
    )
    # the panel: a 20-pixel title row, then 2-pixel white padding and the tiles, each 32-pixel
    # picture enlarged 4× (nearest) to 128 pixels; the inner part leaves out any red frame
    tile = torch.from_numpy(panel).permute(2, 0, 1)[:, 22:150, 2:130]
    picture = pictures[0].repeat_interleave(4, -2).repeat_interleave(4, -1)
    assert torch.equal(tile[:, 3:-3, 3:-3], viz.to_uint8(picture)[:, 3:-3, 3:-3])


def test_the_hf_family_reads_mean_and_std_from_the_saved_image_processor(
    tmp_path: Path,
) -> None:
    from transformers import ViTForImageClassification, ViTImageProcessor

    hf_model("vit").save_pretrained(tmp_path)
    ViTImageProcessor(
        image_mean=list(PROCESSOR_MEAN), image_std=list(PROCESSOR_STD)
    ).save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path)
    mean, std = ModelAdapter(model).normalization()
    assert mean == pytest.approx(PROCESSOR_MEAN) and std == pytest.approx(PROCESSOR_STD)
    assert ModelAdapter(hf_model("vit")).normalization() != (mean, std)  # none saved: the default
