"""Captum methods as compared methods: Captum's own numbers, the memory cap, seeding, names."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from hf_models import hf_model
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_fixtures import TinyClassifier, loader, random_data
from PIL import Image, ImageDraw, ImageFont
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_models import timm_vit

from dave_lightning import DAVEMonitor, viz
from dave_lightning.attribution import CaptumMethod, method_factory, postprocess
from dave_lightning.models import ModelAdapter
from dave_lightning.panels import method_title
from dave_lightning.snapshot import list_snapshots, load_evaluation

SEED = 3


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def inputs(count: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(count, 3, 32, 32, generator=generator), torch.arange(count) % 5


def captum_reference(
    name: str, model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, seed: int
) -> torch.Tensor:
    """Captum's own attributions, with the global RNG seeded as CaptumMethod documents."""
    methods = {
        "IntegratedGradients": lambda: IntegratedGradients(model),
        "Saliency": lambda: Saliency(model),
        "NoiseTunnel(Saliency)": lambda: NoiseTunnel(Saliency(model)),
    }
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return methods[name]().attribute(images, target=target)


@pytest.mark.parametrize("name", ["IntegratedGradients", "Saliency", "NoiseTunnel(Saliency)"])
def test_maps_equal_captums_own_output_after_documented_postprocessing(name: str) -> None:
    model = timm_vit().eval()
    images, target = inputs()
    factory = method_factory(f"captum:{name}")  # the default seed, 0
    maps = factory(ModelAdapter(model), None).attribute(images, target)
    assert maps.shape == (3, 1, 32, 32)
    reference = captum_reference(name, model, images, target, seed=0)
    torch.testing.assert_close(maps, postprocess(reference), atol=1e-5, rtol=0)
    raw = CaptumMethod(model, f"captum:{name}", postprocess=False, seed=SEED)
    reference = captum_reference(name, model, images, target, seed=SEED)
    torch.testing.assert_close(
        raw.attribute(images, target), reference.sum(1, keepdim=True), atol=1e-5, rtol=0
    )


def test_runs_through_the_adapter_and_takes_user_instances() -> None:
    """A HuggingFace model returns an output object: the adapter gives Captum its logits; a
    user's instance built on the adapter takes its own attribute arguments."""
    model = hf_model("vit")
    images, target = inputs(2)
    maps = method_factory("captum:Saliency")(ModelAdapter(model), None).attribute(images, target)
    reference = Saliency(lambda x: model(x).logits).attribute(images, target=target)
    torch.testing.assert_close(maps, postprocess(reference), atol=1e-5, rtol=0)

    adapter = ModelAdapter(model)
    occlusion = {"sliding_window_shapes": (3, 8, 8), "strides": 8}
    ours = CaptumMethod(adapter, Occlusion(adapter), attribute_kwargs=occlusion)
    expected = Occlusion(lambda x: model(x).logits).attribute(images, target=target, **occlusion)
    torch.testing.assert_close(ours.attribute(images, target), postprocess(expected))


@pytest.mark.parametrize(
    "name",
    [
        "IntegratedGradients",
        "Saliency",
        "NoiseTunnel(Saliency)",
        "NoiseTunnel(IntegratedGradients)",
    ],
)
def test_memory_cap_is_honoured(name: str) -> None:
    model = timm_vit().eval()
    passes: list[int] = []
    model.register_forward_hook(lambda module, args, output: passes.append(len(args[0])))
    images, target = inputs(5)
    capped = CaptumMethod(model, f"captum:{name}", batch_size=4).attribute(images, target)
    assert passes and max(passes) <= 4
    assert sum(passes) >= 5  # every image went through
    if not name.startswith("NoiseTunnel"):  # deterministic: the cap changes nothing else
        whole = CaptumMethod(model, f"captum:{name}").attribute(images, target)
        torch.testing.assert_close(capped, whole, atol=1e-5, rtol=0)


def test_seeded_and_global_rngs_untouched() -> None:
    model = timm_vit().eval()
    images, target = inputs(2)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first = CaptumMethod(model, "captum:NoiseTunnel(Saliency)", seed=7).attribute(images, target)
    again = CaptumMethod(model, "captum:NoiseTunnel(Saliency)", seed=7).attribute(images, target)
    other = CaptumMethod(model, "captum:NoiseTunnel(Saliency)", seed=8).attribute(images, target)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("captum:NotAMethod", "IntegratedGradients"),
        ("captum:NoiseTunnel(NotAMethod)", "Saliency"),
        ("captum:Saliency(IntegratedGradients)", "NoiseTunnel(<Class>)"),
        ("captum:LayerGradCam", "GuidedBackprop"),  # needs a layer: not usable by name
        ("saliency", "captum:<Class>"),
    ],
)
def test_unknown_names_list_the_valid_ones(name: str, shown: str) -> None:
    with pytest.raises(ValueError, match="unknown") as error:
        method_factory(name)
    assert shown in str(error.value)


def test_missing_captum_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"pip install 'dave-lightning\[captum\]'"):
        method_factory("captum:Saliency")


def test_bad_arguments() -> None:
    model = timm_vit()
    with pytest.raises(ValueError, match="batch_size"):
        CaptumMethod(model, "Saliency", attribute_kwargs={"internal_batch_size": 2})
    with pytest.raises(TypeError, match="attribute"):
        CaptumMethod(model, object())


def test_a_captum_method_compared_in_a_monitor_fit(tmp_path: Path) -> None:
    """Its maps in the snapshot are Captum's own of the final weights, post-processed; its
    metrics are logged; the probe panels have its column."""
    images, labels, masks = random_data(4, seed=5)
    monitor = DAVEMonitor(
        (images, labels, masks),
        compare_methods=("captum:Saliency",),
        metrics=("energy_pg", "gini", "deletion", "insertion"),
        n_samples=2,
        deletion_steps=4,
        max_images=1,
    )
    pl.seed_everything(0, verbose=False)
    module = TinyClassifier()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[monitor],
        logger=TensorBoardLogger(tmp_path, name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, loader(16))
    assert [entry["global_step"] for entry in monitor.history] == [0, 2]
    last = load_evaluation(list_snapshots(Path(trainer.log_dir) / "dave")[-1])
    expected = Saliency(module.model.eval()).attribute(images, target=labels)
    torch.testing.assert_close(
        last.maps["captum:Saliency"], postprocess(expected), atol=1e-5, rtol=0
    )

    events = EventAccumulator(trainer.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    for key in ("energy_pg", "gini", "deletion_morf_blur", "insertion_morf_blur"):
        logged = events.Scalars(f"dave/captum:Saliency/{key}")
        assert [event.value for event in logged] == pytest.approx(
            [entry["metrics"][f"captum:Saliency/{key}"] for entry in monitor.history]
        ), key
    three = viz.labelled_panel([torch.zeros(3, 32, 32)] * 3, [""] * 3, "caption")
    size = (three.shape[2], three.shape[1])  # the image, DAVE's map and Saliency's
    panels = events.Images("dave/probe/0")
    assert [(panel.step, panel.width, panel.height) for panel in panels] == [(0, *size), (2, *size)]


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("captum:Saliency", "Saliency"),
        ("captum:IntegratedGradients", "Integrated Gradients"),
        ("captum:NoiseTunnel(Saliency)", "Saliency (NT)"),
        ("captum:InputXGradient", "Input X Gradient"),  # not "input x gradient", the built-in's
    ],
)
def test_panel_titles_of_captum_methods_fit_their_column(name: str, title: str) -> None:
    assert method_title(name) == title
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = draw.textlength(title, font=ImageFont.load_default(size=viz.TEXT_SIZE))
    assert width <= viz.MIN_TILE  # the narrowest column: tiles are enlarged to 128 px
