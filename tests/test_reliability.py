"""Map reliability (split-half, Spearman–Brown) and adaptive sampling."""

from __future__ import annotations

import pytest
import torch
from tiny_models import timm_vit
from torch import nn

from dave_lightning import DAVE
from dave_lightning.attribution.reliability import spearman_brown

IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
TARGET = torch.tensor([0, 1, 2, 3])
NO_TRANSFORM = {"hflip_prob": 0.0, "rotation": 0.0, "translation": 0.0, "scale": (1.0, 1.0)}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return timm_vit().eval()


def count_items(model: nn.Module) -> list[int]:
    """A list that grows by the batch size of every forward of ``model``."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    return seen


def test_spearman_brown_known_values() -> None:
    halves = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, float("nan")])
    expected = torch.tensor([1.0, 2 / 3, 0.0, -1.0, -1.0, float("nan")])
    torch.testing.assert_close(spearman_brown(halves), expected, equal_nan=True)


def test_reliability_is_one_when_every_sample_gives_the_same_map(model: nn.Module) -> None:
    dave = DAVE(model, n_samples=6, noise_alpha=0.0, **NO_TRANSFORM)
    maps, reliability = dave.attribute(IMAGES, TARGET, return_reliability=True)
    torch.testing.assert_close(reliability, torch.ones(4))
    torch.testing.assert_close(maps, dave.attribute(IMAGES, TARGET))  # the same maps


def test_reliability_lies_in_range_and_falls_as_noise_grows(model: nn.Module) -> None:
    means = []
    for noise in (0.05, 0.5, 1.0):  # the noise is the only variation between samples
        _, reliability = DAVE(model, n_samples=16, noise_alpha=noise, **NO_TRANSFORM).attribute(
            IMAGES, TARGET, return_reliability=True
        )
        assert reliability.shape == (4,) and ((reliability >= -1) & (reliability <= 1)).all()
        means.append(float(reliability.mean()))
    assert means[0] > means[1] > means[2], means


def test_reliability_predicts_the_agreement_of_two_seeds(model: nn.Module) -> None:
    """Split-half reliability estimates how two full runs with other seeds agree (Spearman)."""
    from dave_lightning.metrics import attribution_drift

    settings = {"n_samples": 32, "noise_alpha": 0.5}
    first, reliability = DAVE(model, seed=1, **settings).attribute(
        IMAGES, TARGET, return_reliability=True
    )
    second = DAVE(model, seed=2, **settings).attribute(IMAGES, TARGET)
    agreement = attribution_drift(first, second)["spearman"]
    assert abs(float(reliability.mean() - agreement.mean())) < 0.15


def test_return_reliability_is_deterministic_under_the_seed(model: nn.Module) -> None:
    runs = [
        DAVE(model, n_samples=5, seed=4).attribute(IMAGES, TARGET, return_reliability=True)
        for _ in range(2)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    other = DAVE(model, n_samples=5, seed=5).attribute(IMAGES, TARGET, return_reliability=True)
    assert not torch.equal(other[1], runs[0][1])


def test_a_single_sample_has_no_reliability(model: nn.Module) -> None:
    _, reliability = DAVE(model, n_samples=1).attribute(IMAGES, TARGET, return_reliability=True)
    assert reliability.isnan().all()


def test_adaptive_sampling_never_exceeds_its_cap(model: nn.Module) -> None:
    seen = count_items(model)
    dave = DAVE(model, n_samples=4, target_reliability=1.0, max_samples=13, batch_size=7)
    _, reliability = dave.attribute(IMAGES, TARGET, return_reliability=True)
    assert sum(seen) == 4 * 13  # unreachable target: every image draws up to the cap
    assert (reliability < 1).all()
    assert max(seen) <= 7


def test_adaptive_sampling_stops_images_that_reach_the_target(model: nn.Module) -> None:
    settings = {"n_samples": 4, "noise_alpha": 0.5, **NO_TRANSFORM}
    fixed, reliability = DAVE(model, **settings).attribute(IMAGES, TARGET, return_reliability=True)
    target = float(reliability.sort().values[1])  # three images reach it with 4 samples
    assert 0 < target < float(reliability.max())
    seen = count_items(model)
    adaptive = DAVE(model, target_reliability=target, max_samples=64, **settings)
    maps, after = adaptive.attribute(IMAGES, TARGET, return_reliability=True)
    reached = reliability >= target
    assert torch.equal(maps[reached], fixed[reached])  # first round's samples are the same
    assert sum(seen) > 4 * 4 and ((after >= target) | ~reached).all()


def test_adaptive_sampling_is_deterministic_under_the_seed(model: nn.Module) -> None:
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        dave = DAVE(model, n_samples=4, target_reliability=0.9, max_samples=16, seed=2)
        return dave.attribute(IMAGES, TARGET, return_reliability=True)

    first, second = run(), run()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_reliability": 0.8}, "needs max_samples"),
        ({"max_samples": 32}, "pass target_reliability too"),
        ({"target_reliability": 1.5, "max_samples": 32}, "target_reliability"),
        ({"target_reliability": 0.8, "max_samples": 4, "n_samples": 8}, "max_samples must be"),
    ],
)
def test_bad_adaptive_settings_are_refused(model: nn.Module, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DAVE(model, **kwargs)
