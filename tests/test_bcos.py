"""B-cos ViTs (the ``bcos`` package): explanation mode, [x, 1 − x] inputs, the monitor on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from bcos_models import add_inverse, bcos_vit
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from dave_lightning import DAVE, DAVEMonitor
from dave_lightning.models import ModelAdapter

IMAGES01 = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TARGET = torch.tensor([0, 2, 4])


def explanation_flags(model: torch.nn.Module) -> list[bool]:
    return [m.is_in_explanation_mode for m in model.modules() if hasattr(m, "set_explanation_mode")]


def test_the_adapter_reads_a_bcos_vit() -> None:
    adapter = ModelAdapter(torch.nn.Sequential(bcos_vit()))
    assert adapter.family.name == "bcos"
    assert (adapter.patch_size, adapter.input_channels) == (8, 6)
    assert adapter.input_encoding == "add_inverse"
    assert adapter.normalization() == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_input_x_effective_is_the_models_own_contribution_map() -> None:
    torch.manual_seed(0)
    model = bcos_vit().eval()
    inputs = add_inverse(IMAGES01)
    parts = DAVE(model, n_samples=2, postprocess=False).attribute(
        inputs, TARGET, return_components=True
    )
    for index, target in enumerate(TARGET.tolist()):
        own = model.explain(inputs[index : index + 1].clone(), idx=target)
        expected = own["contribution_map"].detach()[0]
        error = (parts["input_x_effective"][index, 0] - expected).abs().max()
        assert error / expected.abs().max() < 1e-3
    plain = DAVE(model, n_samples=2, postprocess=False).attribute(
        inputs, TARGET, return_components=True
    )["input_x_gradient"]
    assert not torch.allclose(plain, parts["input_x_effective"])  # the mode matters


def test_every_input_the_engine_builds_is_encoded() -> None:
    model = bcos_vit().eval()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    DAVE(model, n_samples=6, noise_alpha=0.5).attribute(add_inverse(IMAGES01), TARGET)
    inputs = torch.cat(seen)
    assert len(inputs) == 3 * 6
    error = (inputs[:, 3:] - (1 - inputs[:, :3])).abs().max()
    assert error < 1e-5  # borders of rotated, shifted samples included
    assert (inputs[:, :3] != IMAGES01.repeat(6, 1, 1, 1)).any()  # they were transformed


def test_explanation_mode_and_training_flags_are_restored_after_an_error() -> None:
    model = bcos_vit().train()
    before = explanation_flags(model)
    calls = 0

    def fail_second(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal calls
        calls += 1
        assert all(explanation_flags(model)) and not model.training  # inside: explaining
        if calls == 2:
            raise RuntimeError("mid-attribution")

    model.register_forward_hook(fail_second)
    with pytest.raises(RuntimeError, match="mid-attribution"):
        DAVE(model, n_samples=4, batch_size=4).attribute(add_inverse(IMAGES01), TARGET)
    assert calls == 2
    assert explanation_flags(model) == before and not any(before)
    assert all(m.training for m in model.modules())


def test_a_three_channel_picture_is_refused_with_the_encoding_named() -> None:
    with pytest.raises(ValueError, match=r"expects 6; pass 'add_inverse'-encoded inputs \(\[x, 1"):
        DAVE(bcos_vit(), n_samples=2).attribute(IMAGES01, 0)
    wrong = torch.cat([IMAGES01, IMAGES01], dim=1)  # six channels, but not [x, 1 − x]
    with pytest.raises(ValueError, match=r"not 'add_inverse'-encoded inputs \(\[x, 1 − x\]"):
        DAVE(bcos_vit(), n_samples=2).attribute(wrong, 0)


class BcosClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = bcos_vit()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_a_monitor_fit_on_a_bcos_vit_logs_maps_and_metrics(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    images = add_inverse(torch.rand(16, 3, 32, 32, generator=generator))
    labels = torch.arange(16) % 5
    masks = torch.zeros(16, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    module = BcosClassifier()
    seen: list[torch.Tensor] = []
    module.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    monitor = DAVEMonitor(
        (images[:6], labels[:6], masks[:6]), n_samples=2, deletion_steps=4, max_images=1
    )
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        callbacks=[monitor],
        logger=TensorBoardLogger(tmp_path, name="bcos"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=8))
    metrics = monitor.history[-1]["metrics"]
    for name in ("energy_pg", "grid_pg", "stability_spearman", "deletion_lerf_blur", "gini"):
        assert 0 <= metrics[name] <= 1, name
    inputs = torch.cat(seen)
    assert (inputs[:, 3:] - (1 - inputs[:, :3])).abs().max() < 1e-5  # metrics' passes too
    accumulator = EventAccumulator(trainer.log_dir, size_guidance={"images": 0})
    accumulator.Reload()
    assert "dave/probe/0" in accumulator.Tags()["images"]
    (first,) = [e for e in accumulator.Images("dave/probe/0") if e.step == 0]
    assert first.width > first.height  # image | DAVE | input × gradient, from the x channels


def set_explanation_mode(model: torch.nn.Module, active: bool) -> None:
    for module in model.modules():
        if hasattr(module, "set_explanation_mode"):
            module.set_explanation_mode(active)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny models run faster so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_explanation_mode_is_left_as_it_was_and_changes_no_map() -> None:
    torch.manual_seed(0)
    model = bcos_vit().eval()
    inputs = add_inverse(IMAGES01)
    dave = DAVE(model, n_samples=2, postprocess=False)
    reference = dave.attribute(inputs, TARGET, return_components=True)
    assert explanation_flags(model) == [False] * 15  # off before, off after
    set_explanation_mode(model, True)
    parts = dave.attribute(inputs, TARGET, return_components=True)
    assert explanation_flags(model) == [True] * 15  # on before, on after
    for name, maps in reference.items():  # each pass sets the mode it needs
        assert torch.equal(parts[name], maps), name


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("before", [True, False])
def test_explanation_mode_is_left_as_it_was_after_a_failing_attribution(before: bool) -> None:
    model = bcos_vit().eval()
    set_explanation_mode(model, before)
    calls = 0

    def fail_second(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("mid-attribution")

    model.register_forward_hook(fail_second)
    with pytest.raises(RuntimeError, match="mid-attribution"):
        DAVE(model, n_samples=4, batch_size=4).attribute(add_inverse(IMAGES01), TARGET)
    assert calls == 2 and explanation_flags(model) == [before] * 15
