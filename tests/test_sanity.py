"""The model-randomization sanity check: maps must change, the user's model must not."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hf_models import hf_model
from matplotlib.figure import Figure
from tiny_models import NUM_CLASSES, timm_vit, torchvision_vit
from torch import nn

from dave_lightning.attribution import DAVE, METHODS
from dave_lightning.data import SyntheticShapes
from dave_lightning.metrics import cascade_figure, model_randomization, sanity_fails
from dave_lightning.metrics.registry import METRICS, MetricInputs
from dave_lightning.metrics.sanity import reinitialise
from dave_lightning.models import ModelAdapter


@pytest.fixture(autouse=True, scope="module")
def _threads() -> None:
    torch.set_num_threads(1)


def shapes(count: int, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = SyntheticShapes(count, split=split, image_size=32, seed=seed)
    items = [dataset[i] for i in range(count)]
    return torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """The tiny timm ViT after 15 AdamW steps on synthetic shapes: its maps have structure
    that its weights put there, which is what randomizing the weights should destroy."""
    torch.manual_seed(0)
    model = timm_vit()
    images, labels = shapes(32, "train", seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(images), labels % NUM_CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def probe() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = shapes(8, "probe", seed=0)
    return images, labels % NUM_CLASSES


def dave(adapter: ModelAdapter) -> DAVE:
    return DAVE(adapter, n_samples=8, seed=0)


class Constant:
    """A "method" that ignores the model and the image: a constant map."""

    def attribute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(images), 1, 32, 32)


class Brightness:
    """A "method" that explains the input only: the image's channel sum."""

    def attribute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return images.sum(1, keepdim=True)


def test_dave_maps_change_under_randomization(trained: nn.Module) -> None:
    cascade = model_randomization(ModelAdapter(trained), dave, *probe())
    assert cascade.labels == ("head", "block 2", "block 1")
    assert cascade.spearman.shape == cascade.topk_iou.shape == (3, 8)
    summary = cascade.summary()
    assert summary[-1][1] < 0.5 and summary[-1][1] < summary[0][1]  # Spearman at full cascade
    assert summary[-1][2] < 0.5  # top-10 % IoU
    assert not cascade.fails()


@pytest.mark.parametrize("method", [Constant, Brightness])
def test_methods_blind_to_the_weights_fail(trained: nn.Module, method: type) -> None:
    cascade = model_randomization(ModelAdapter(trained), lambda adapter: method(), *probe())
    assert torch.equal(cascade.spearman, torch.ones(3, 8))  # identical maps count as 1
    assert cascade.fails()


def test_fail_threshold() -> None:
    assert sanity_fails(0.6) and sanity_fails(float("nan"))
    assert not sanity_fails(0.5) and not sanity_fails(0.1)
    assert not sanity_fails(0.6, threshold=0.7)


def test_users_model_and_rngs_are_untouched(trained: nn.Module) -> None:
    model = trained
    model.train()
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    flags = [(p.requires_grad, m.training) for m in model.modules() for p in m.parameters(False)]
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    adapter = ModelAdapter(model)
    images, targets = probe()
    with adapter.attribution():  # as the evaluator calls it: frozen, eval mode
        first = model_randomization(adapter, dave, images, targets, seed=1)
    again = model_randomization(adapter, dave, images, targets, seed=1)
    other = model_randomization(adapter, dave, images, targets, seed=2)
    assert [
        (p.requires_grad, m.training) for m in model.modules() for p in m.parameters(False)
    ] == (flags)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    torch.testing.assert_close(first.spearman, again.spearman)
    assert not torch.allclose(first.spearman, other.spearman)
    model.blocks[0].attn.qkv.weight.requires_grad_(True)
    model.eval()


def test_half_precision_copy_runs_on_its_own_weights(trained: nn.Module) -> None:
    """Inside attribution() a bf16 model runs through float32 copies of its weights; the
    randomized copy must not keep using them."""
    model = timm_vit().to(torch.bfloat16)
    model.load_state_dict(trained.state_dict())
    adapter = ModelAdapter(model)
    make = lambda adapter: METHODS["input_x_gradient"](adapter, None)  # noqa: E731
    with adapter.attribution():
        cascade = model_randomization(adapter, make, *probe())
    assert cascade.summary()[-1][1] < 0.5
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize(
    ("build", "depth"),
    [(lambda: hf_model("vit"), 2), (torchvision_vit, 2), (lambda: hf_model("dinov2"), 2)],
    ids=["hf_vit", "torchvision", "hf_dinov2"],
)
def test_families_name_blocks_and_head(build, depth: int) -> None:
    adapter = ModelAdapter(build())
    make = lambda adapter: METHODS["input_x_gradient"](adapter, None)  # noqa: E731
    images, targets = probe()
    cascade = model_randomization(adapter, make, images[:2], targets[:2])
    assert cascade.labels == ("head", *(f"block {i}" for i in range(depth, 0, -1)))
    assert cascade.summary()[-1][1] < 0.5


def test_reinitialise_redraws_every_parameter() -> None:
    """MultiheadAttention's packed projection and layer scales have no reset_parameters."""
    blocks = [torchvision_vit().encoder.layers[0], hf_model("dinov2").dinov2.encoder.layer[0]]
    for block in blocks:
        before = {name: value.clone() for name, value in block.named_parameters()}
        with torch.random.fork_rng():
            torch.manual_seed(0)
            reinitialise(block)
        for name, value in block.named_parameters():
            unchanged = torch.equal(value, before[name])
            assert not unchanged or value.std() == 0 or "norm" in name or "ln" in name, name


def test_unknown_model_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.Linear(64, NUM_CLASSES))
    make = lambda adapter: METHODS["input_x_gradient"](adapter, None)  # noqa: E731
    with pytest.raises(ValueError, match=r"blocks\(\) and head\(\)"):
        model_randomization(ModelAdapter(model), make, *probe())


def test_metric_spec_reports_the_full_cascade_of_every_method(trained: nn.Module) -> None:
    adapter = ModelAdapter(trained)
    images, targets = probe()

    def gradient(model: ModelAdapter) -> object:
        return METHODS["input_x_gradient"](model, None)

    builders = {"dave": dave, "input_x_gradient": gradient}
    maps = {name: build(adapter).attribute(images, targets) for name, build in builders.items()}
    inputs = MetricInputs(
        method="dave",
        maps=maps["dave"],
        images=images,
        targets=targets,
        model=adapter,
        attribute=dave(adapter).attribute,
        grid_attribute=dave(adapter).attribute,
        grid_k=2,
        deletion_steps=4,
        deletion_baseline="blur",
        batch_size=64,
        adapter=adapter,
        method_builders=builders,
        method_maps=maps,
    )
    spec = METRICS["sanity"]
    assert spec.slow and spec.opt_in and spec.dave_only
    values = spec.compute(inputs).values
    for name, build in builders.items():
        cascade = model_randomization(adapter, build, images, targets, maps=maps[name])
        torch.testing.assert_close(values[f"sanity/{name}"], cascade.spearman[-1])
        torch.testing.assert_close(values[f"sanity/{name}/topk_iou"], cascade.topk_iou[-1])


def test_cascade_figure() -> None:
    summaries = {
        "dave": [("head", 0.8, 0.6), ("block 2", 0.4, 0.3), ("block 1", 0.1, 0.1)],
        "constant": [("head", 1.0, 1.0), ("block 2", 1.0, 1.0), ("block 1", 1.0, 1.0)],
    }
    figure = cascade_figure(summaries)
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    spearman_ax, iou_ax = figure.axes
    assert [list(line.get_ydata()) for line in iou_ax.lines] == [[0.6, 0.3, 0.1], [1.0] * 3]
    assert [tick.get_text() for tick in spearman_ax.get_xticklabels()] == [
        "head",
        "block 2",
        "block 1",
    ]
