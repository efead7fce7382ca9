"""DAVE engine: pipeline properties, reproducibility, hygiene, any ViT, bad input."""

import pytest
import timm
import torch
from reference_aggregation import robust_mean
from tiny_models import MODEL_ZOO, NUM_CLASSES, timm_vit
from torch import nn

from dave_lightning import DAVE, InputXEffective, InputXGradient
from dave_lightning.attribution.aggregation import (
    RESERVOIR_SAMPLES,
    SampleAccumulator,
    sample_order,
)
from dave_lightning.attribution.postprocess import bilateral_filter, postprocess
from dave_lightning.models import ModelAdapter


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return timm_vit(img_size=(32, 48)).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(1))


TARGET = torch.tensor([0, 3, 1])


def test_maps_have_image_shape_and_unit_range(model, images) -> None:
    maps = DAVE(model, n_samples=4).attribute(images, TARGET)
    assert maps.shape == (3, 1, 32, 48) and maps.dtype == torch.float32
    assert maps.min() >= 0 and torch.allclose(maps.flatten(1).amax(1), torch.ones(3))


def test_components_form_the_progression(model, images) -> None:
    components = DAVE(model, n_samples=4).attribute(images, TARGET, return_components=True)
    assert list(components) == [
        "input_x_gradient",
        "input_x_effective",
        "input_x_equivariant",
        "dave",
    ]
    for maps in components.values():
        assert maps.shape == (3, 1, 32, 48)
    torch.testing.assert_close(
        components["dave"], DAVE(model, n_samples=4).attribute(images, TARGET)
    )
    torch.testing.assert_close(
        components["input_x_gradient"], InputXGradient(model)(images, TARGET)
    )
    torch.testing.assert_close(
        components["input_x_effective"], InputXEffective(model)(images, TARGET)
    )
    assert not torch.allclose(components["input_x_equivariant"], components["dave"])


def test_equivariant_component_equals_dave_without_noise(model, images) -> None:
    components = DAVE(model, n_samples=3, noise_alpha=0.0).attribute(
        images, TARGET, return_components=True
    )
    torch.testing.assert_close(components["input_x_equivariant"], components["dave"])


def test_gradient_is_taken_in_the_original_frame(model, images) -> None:
    """A flip-only sample is input × effective gradient at the flipped image, flipped back."""
    engine = DAVE(
        model,
        n_samples=1,
        hflip_prob=1.0,
        rotation=0.0,
        translation=0.0,
        scale=(1.0, 1.0),
        postprocess=False,
    )
    flipped = images.flip(-1)
    expected = InputXEffective(model, postprocess=False)(flipped, TARGET).flip(-1)
    torch.testing.assert_close(engine.attribute(images, TARGET), expected, rtol=1e-4, atol=1e-6)


def test_single_clean_sample_without_transform_is_input_x_effective(model, images) -> None:
    engine = DAVE(
        model, n_samples=1, hflip_prob=0.0, rotation=0.0, translation=0.0, scale=(1.0, 1.0)
    )
    expected = InputXEffective(model)(images, TARGET)
    torch.testing.assert_close(engine.attribute(images, TARGET), expected, rtol=1e-4, atol=1e-6)


def test_same_seed_same_maps_whatever_the_batch_size(model, images) -> None:
    first = DAVE(model, n_samples=6, seed=3, batch_size=4).attribute(images, TARGET)
    again = DAVE(model, n_samples=6, seed=3, batch_size=18).attribute(images, TARGET)
    other = DAVE(model, n_samples=6, seed=4, batch_size=4).attribute(images, TARGET)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_global_rng_is_untouched(model, images) -> None:
    state = torch.get_rng_state()
    DAVE(model, n_samples=4).attribute(images, TARGET, return_components=True)
    assert torch.equal(state, torch.get_rng_state())


def test_parameter_grads_and_flags_are_untouched(model, images) -> None:
    model.train()
    model.blocks[0].eval()
    model.head.weight.requires_grad_(False)
    marker = torch.full_like(model.patch_embed.proj.weight, 7.0)
    model.patch_embed.proj.weight.grad = marker.clone()
    training = {name: m.training for name, m in model.named_modules()}
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    DAVE(model, n_samples=2).attribute(images, TARGET)
    assert torch.equal(model.patch_embed.proj.weight.grad, marker)
    assert all(p.grad is None for n, p in model.named_parameters() if "patch_embed.proj.w" not in n)
    assert {name: m.training for name, m in model.named_modules()} == training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == requires
    model.patch_embed.proj.weight.grad = None
    model.head.weight.requires_grad_(True)
    model.eval()


def test_flags_are_restored_when_the_computation_fails(model, images) -> None:
    model.train()
    with pytest.raises(ValueError, match="out of range"):
        DAVE(model, n_samples=2).attribute(images, NUM_CLASSES)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


def test_runs_in_float32_under_autocast_no_grad_and_inference_mode(model, images) -> None:
    expected = DAVE(model, n_samples=2).attribute(images, TARGET)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = DAVE(model, n_samples=2).attribute(images, TARGET)
    with torch.no_grad():
        under_no_grad = DAVE(model, n_samples=2).attribute(images, TARGET)
    with torch.inference_mode():
        inference_images = images.clone()
        under_inference = DAVE(model, n_samples=2).attribute(inference_images, TARGET)
    for maps in (under_autocast, under_no_grad, under_inference):
        assert maps.dtype == torch.float32
        torch.testing.assert_close(maps, expected)


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_every_vit_family(name: str) -> None:
    model = MODEL_ZOO[name]().eval()
    images = torch.randn(2, 3, 32, 32)
    maps = DAVE(model, n_samples=2).attribute(images, torch.tensor([1, 4]))
    assert maps.shape == (2, 1, 32, 32) and torch.isfinite(maps).all()
    assert maps.amax() == 1.0


@pytest.mark.parametrize(
    ("name", "expected"), [("timm_vit", 8), ("swin", 4), ("torchvision_vit", 8), ("hybrid", 32)]
)
def test_patch_size_is_the_stride_of_the_token_grid(name: str, expected: int) -> None:
    if name == "hybrid":  # ResNet stem (first conv stride 2), then 8 px patches of its features
        model = timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, num_classes=3)
        tokens = model.forward_features(torch.randn(1, 3, 64, 64)).shape[1] - 1  # minus class
        assert 64 / tokens**0.5 == expected
    else:
        model = MODEL_ZOO[name]()
    assert ModelAdapter(nn.Sequential(model)).patch_size == expected  # found inside a wrapper


def test_noise_alpha_from_the_reference_table() -> None:
    small = timm.create_model("vit_small_patch16_224", img_size=32, depth=1, num_classes=3)
    assert DAVE(small, noise_alpha=None).noise_alpha == 0.1
    deit3 = timm.create_model("deit3_base_patch16_224", img_size=32, depth=1, num_classes=3)
    assert DAVE(deit3, noise_alpha=None).noise_alpha == 0.9
    with pytest.raises(ValueError, match="pass noise_alpha"):
        DAVE(timm_vit(), noise_alpha=None)


def test_robust_mean_known_answer() -> None:
    samples = torch.tensor([[1.0], [2.0], [3.0], [100.0]])
    # lower median 2, MAD = lower median of (1, 0, 1, 98) = 1 → keep |x − 2| ≤ 3.7065
    assert robust_mean(samples).item() == 2.0
    assert robust_mean(torch.full((5, 2), 4.0)).tolist() == [4.0, 4.0]


def _accumulate(samples: torch.Tensor, order: torch.Tensor, block: int) -> SampleAccumulator:
    accumulator = SampleAccumulator()
    for ids in order.split(block):
        accumulator.add(samples[ids], ids % 2)
    return accumulator


def test_streaming_robust_mean_is_exact_within_the_reservoir() -> None:
    samples = torch.randn(40, 3, 4, 4)
    accumulator = _accumulate(samples, sample_order(40), 7)
    torch.testing.assert_close(accumulator.means()[0], robust_mean(samples))


def test_each_half_is_the_robust_mean_of_its_own_samples() -> None:
    samples = torch.randn(40, 5)
    samples[::7] += 30.0
    all_, even, odd = _accumulate(samples, torch.arange(40), 6).means()
    torch.testing.assert_close(even, robust_mean(samples[0::2]))
    torch.testing.assert_close(odd, robust_mean(samples[1::2]))
    torch.testing.assert_close(all_, robust_mean(samples))


def test_streaming_robust_mean_beyond_the_reservoir_uses_a_spread_subset() -> None:
    n = 3 * RESERVOIR_SAMPLES
    samples = torch.randn(n, 5)
    samples[::10] += 50.0  # outliers
    order = sample_order(n)
    assert sorted(order.tolist()) == list(range(n))
    accumulator = _accumulate(samples, order, 13)
    reservoir = samples[order[:RESERVOIR_SAMPLES]]
    median = reservoir.median(0).values
    mad = (reservoir - median).abs().median(0).values
    keep = (samples - median).abs() <= 2.5 * 1.4826 * mad
    expected = (samples * keep).sum(0) / keep.sum(0)
    torch.testing.assert_close(accumulator.means()[0], expected)
    assert expected.abs().max() < 1.0  # the outliers were dropped


def test_aggregation_holds_at_most_a_reservoir_of_samples() -> None:
    accumulator = _accumulate(torch.randn(500, 2), torch.arange(500), 50)
    assert accumulator.reservoir_size == RESERVOIR_SAMPLES and accumulator._reservoir == []


def test_postprocess_keeps_the_positive_part_and_normalises() -> None:
    contributions = torch.zeros(2, 3, 16, 16)
    contributions[0, :, 4, 4] = 1.0
    contributions[1] = -1.0
    maps = postprocess(contributions)
    assert maps.shape == (2, 1, 16, 16)
    assert maps[0].max() == 1.0 and maps[0, 0, 4, 4] == 1.0
    assert torch.equal(maps[1], torch.zeros(1, 16, 16))


def test_bilateral_filter_keeps_constants_and_edges() -> None:
    constant = torch.full((1, 1, 8, 8), 0.4)
    torch.testing.assert_close(bilateral_filter(constant), constant)
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    torch.testing.assert_close(bilateral_filter(step), step)  # range σ 0.05 ≪ the step


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, "n_samples must be >= 1"),
        ({"n_samples": 2.5}, TypeError, "n_samples must be an int"),
        ({"noise_alpha": 1.5}, ValueError, "noise_alpha"),
        ({"hflip_prob": -0.1}, ValueError, "hflip_prob"),
        ({"rotation": -1.0}, ValueError, "rotation"),
        ({"translation": 2.0}, ValueError, "translation"),
        ({"scale": (1.1, 0.9)}, ValueError, "scale"),
        ({"aggregation": "median"}, ValueError, "aggregation"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_settings_are_refused(model, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        DAVE(model, **kwargs)


@pytest.mark.parametrize(
    ("images", "target", "error", "match"),
    [
        (torch.randn(3, 32, 48), 0, ValueError, "must be 4-D"),
        (torch.randn(2, 1, 32, 48), 0, ValueError, "model expects 3"),
        (torch.randn(2, 3, 32, 48), torch.tensor([0, 1, 2]), ValueError, "one class index"),
        (torch.randn(2, 3, 32, 48), NUM_CLASSES, ValueError, "out of range"),
        (torch.randn(2, 3, 32, 48), torch.tensor([0.0, 1.0]), TypeError, "integer class"),
        (torch.randn(2, 3, 32, 48), True, TypeError, "int or an integer tensor"),
        (torch.randn(2, 3, 32, 48), -1, ValueError, "negative"),
        (torch.randint(0, 9, (2, 3, 32, 48)), 0, TypeError, "floating-point"),
    ],
)
def test_bad_input_is_refused(model, images, target, error, match) -> None:
    with pytest.raises(error, match=match):
        DAVE(model, n_samples=2).attribute(images, target)


def test_non_finite_logits_are_reported(model, images) -> None:
    broken = timm_vit(img_size=(32, 48)).eval()
    with torch.no_grad():
        broken.head.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite logits"):
        DAVE(broken, n_samples=2).attribute(images, TARGET)


def test_model_must_be_a_module() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        DAVE(lambda x: x)
