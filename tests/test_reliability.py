"""Map reliability (split-half, Spearman–Brown) and adaptive sampling."""

from __future__ import annotations

import pytest
import torch
from reference_aggregation import robust_mean
from tiny_models import timm_vit
from torch import nn

from dave_lightning import DAVE
from dave_lightning.attribution.aggregation import SampleAccumulator
from dave_lightning.attribution.postprocess import postprocess
from dave_lightning.attribution.reliability import spearman_brown, split_half_reliability

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


# ------------------------------------------------------------------ reliability by definition


def reliability_by_hand(half_a: torch.Tensor, half_b: torch.Tensor) -> torch.Tensor:
    """The definition, computed independently of the package's statistics: SciPy's Spearman
    of the post-processed half maps, Spearman–Brown corrected (2r / (1 + r))."""
    from scipy.stats import spearmanr

    maps_a, maps_b = postprocess(half_a).flatten(1), postprocess(half_b).flatten(1)
    values = []
    for row_a, row_b in zip(maps_a.double().numpy(), maps_b.double().numpy(), strict=True):
        r = float(spearmanr(row_a, row_b).statistic)
        values.append(2 * r / (1 + r))
    return torch.tensor(values, dtype=torch.float32)


def column_ramp(reverse: bool = False) -> torch.Tensor:
    """(1, 3, 32, 32) contributions growing with the column (rows all alike): post-processing
    keeps every row alike and the columns in order, so its ranks are the column's."""
    ramp = (torch.arange(32.0) + 1).flip(0) if reverse else torch.arange(32.0) + 1
    return ramp.view(1, 1, 1, 32).expand(1, 3, 32, 32).clone()


def test_split_half_reliability_of_hand_built_halves() -> None:
    ramp = column_ramp()
    permuted = ramp[:, [2, 0, 1]] * 3.0  # the channels are summed; the maps max-normalised
    cases = {
        "identical halves: r = 1": (ramp, ramp.clone(), 1.0),
        "scaled, channels permuted: r = 1": (ramp, permuted, 1.0),
        "reversed ranks: r = -1": (ramp, column_ramp(reverse=True), -1.0),
        "ranks by column vs by row: r = 0": (ramp, ramp.transpose(-1, -2).contiguous(), 0.0),
    }
    for name, (half_a, half_b, expected) in cases.items():
        reliability = split_half_reliability(half_a, half_b)
        torch.testing.assert_close(reliability, torch.tensor([expected]), msg=name)
    # random halves: every pixel's rank matters, 0 < r < 1 where 2r / (1 + r) differs from r
    generator = torch.Generator().manual_seed(0)
    half_a = torch.randn(3, 3, 32, 32, generator=generator)
    half_b = half_a + torch.randn(3, 3, 32, 32, generator=generator) * torch.tensor(
        [0.5, 1.0, 2.0]
    ).view(3, 1, 1, 1)
    expected = reliability_by_hand(half_a, half_b)
    assert ((expected > 0.2) & (expected < 0.95)).all(), expected
    torch.testing.assert_close(split_half_reliability(half_a, half_b), expected, atol=1e-6, rtol=0)


def test_reported_reliability_is_the_definition_on_the_engines_own_half_maps(
    model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sample the engine adds to an image's accumulator is recorded; the reliability it
    reports must be the definition applied to the robust means of the even and odd samples."""
    recorded: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per accumulator fed samples
    add = SampleAccumulator.add

    def recording_add(self: SampleAccumulator, samples: torch.Tensor, halves: torch.Tensor) -> None:
        if not hasattr(self, "recorded"):
            self.recorded = []
            recorded.append(self.recorded)
        self.recorded.append((samples.clone(), halves.clone()))
        return add(self, samples, halves)

    monkeypatch.setattr(SampleAccumulator, "add", recording_add)
    n = 12
    maps, reliability = DAVE(model, n_samples=n, batch_size=5, seed=3).attribute(
        IMAGES, TARGET, return_reliability=True
    )
    assert len(recorded) == len(IMAGES)  # one accumulator per image, in image order
    half_a, half_b, full = [], [], []
    for blocks in recorded:
        samples, halves = torch.cat([s for s, _ in blocks]), torch.cat([h for _, h in blocks])
        assert torch.equal(halves, torch.arange(n) % 2)  # even- and odd-numbered samples
        half_a.append(robust_mean(samples[halves == 0]))
        half_b.append(robust_mean(samples[halves == 1]))
        full.append(robust_mean(samples))
    # the recorded samples are all the engine used: they give its maps
    torch.testing.assert_close(postprocess(torch.stack(full)), maps, atol=1e-5, rtol=0)
    expected = reliability_by_hand(torch.stack(half_a), torch.stack(half_b))
    assert ((expected > 0.0) & (expected < 0.99)).all(), expected
    torch.testing.assert_close(reliability, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ adaptive sampling's cap


@pytest.mark.parametrize(("max_samples", "rounds"), [(20, [8, 7, 5]), (40, [8, 7, 14, 11])])
def test_adaptive_sampling_stops_exactly_at_a_cap_its_schedule_does_not_land_on(
    model: nn.Module, max_samples: int, rounds: list[int]
) -> None:
    """Rounds add drawn − 1 samples per image (8 → 15 → 29 → 57); the last is cut to the cap.

    Each round is one forward pass here (``batch_size`` holds a whole round), so the passes'
    sizes are the rounds' sample counts times the two images.
    """
    seen = count_items(model)
    dave = DAVE(
        model, n_samples=8, target_reliability=1.0, max_samples=max_samples, batch_size=1000
    )
    _, reliability = dave.attribute(IMAGES[:2], TARGET[:2], return_reliability=True)
    assert (reliability < 1).all()  # the target is never reached
    assert seen == [2 * count for count in rounds]
    assert sum(seen) == 2 * max_samples  # both images draw exactly the cap, not a sample more
