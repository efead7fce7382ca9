"""Deletion / insertion curves and their AUC against a model with a closed-form answer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dave_lightning.metrics import baseline_images, curve_auc, deletion_curve, insertion_curve

SIZE = 8
PIXELS = SIZE * SIZE


class LeftHalfModel(nn.Module):
    """Class-0 logit = 10 · mean of the left half of the image, class-1 logit = 0.

    So p(class 0) = sigmoid(10 · m) with m the left half's mean: on an all-ones image with a
    zero baseline, m is the share of left-half pixels still present.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and x.dtype == torch.float32
        self.calls.append(len(x))
        left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([10 * left, torch.zeros_like(left)], dim=1)


def left_half_map(batch: int = 2) -> torch.Tensor:
    """Distinct positive values on the left half, ties (zeros) on the right half."""
    maps = torch.zeros(batch, 1, SIZE, SIZE)
    maps[..., : SIZE // 2] = 1 + torch.rand(batch, 1, SIZE, SIZE // 2)
    return maps


def expected_probability(left_present: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(10 * left_present / (PIXELS // 2))


def curve(order: str, insertion: bool = False, **kwargs: object) -> torch.Tensor:
    fn = insertion_curve if insertion else deletion_curve
    images = torch.ones(2, 3, SIZE, SIZE)
    options = {"baseline": "zero", "steps": 32, **kwargs}
    return fn(LeftHalfModel(), images, 0, left_half_map(), order=order, **options)


def counts(fractions: torch.Tensor) -> torch.Tensor:
    return (fractions.double() * PIXELS).round()


def test_morf_deletion_matches_closed_form() -> None:
    fractions, probs = curve("morf")
    removed = counts(fractions).clamp(max=PIXELS // 2)  # the left half goes first
    expected = expected_probability(PIXELS // 2 - removed).float()
    torch.testing.assert_close(probs, expected.expand(2, -1))


def test_lerf_deletion_matches_closed_form() -> None:
    fractions, probs = curve("lerf")
    removed_left = (counts(fractions) - PIXELS // 2).clamp(min=0)  # right half goes first
    expected = expected_probability(PIXELS // 2 - removed_left).float()
    torch.testing.assert_close(probs, expected.expand(2, -1))


def test_insertion_morf_matches_closed_form() -> None:
    fractions, probs = curve("morf", insertion=True)
    inserted = counts(fractions).clamp(max=PIXELS // 2)
    torch.testing.assert_close(probs, expected_probability(inserted).float().expand(2, -1))


def test_order_ranks_auc_with_random_control_in_between() -> None:
    auc = {order: curve_auc(*curve(order)) for order in ("morf", "random", "lerf")}
    assert (auc["morf"] < auc["random"]).all() and (auc["random"] < auc["lerf"]).all()
    inserted = {order: curve_auc(*curve(order, insertion=True)) for order in ("morf", "lerf")}
    assert (inserted["morf"] > inserted["lerf"]).all()


def test_fractions_axis_and_first_point() -> None:
    fractions, probs = curve("morf", steps=10, max_fraction=0.5)
    torch.testing.assert_close(fractions, torch.linspace(0, 0.5, 10))
    assert probs.shape == (2, 10)
    torch.testing.assert_close(probs[:, 0], torch.sigmoid(torch.tensor(10.0)).expand(2))


def test_chunked_evaluation_is_vectorised_and_chunk_invariant() -> None:
    images, maps = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 1, SIZE, SIZE)
    model = LeftHalfModel()
    _, chunked = deletion_curve(model, images, 0, maps, steps=16, batch_size=5, baseline="mean")
    assert model.calls == [5] * 6 + [2]  # 32 perturbed images in chunks of at most 5
    _, whole = deletion_curve(
        LeftHalfModel(), images, 0, maps, steps=16, batch_size=1000, baseline="mean"
    )
    torch.testing.assert_close(chunked, whole)


def test_random_order_is_seeded_and_leaves_global_rng_alone() -> None:
    images, maps = torch.ones(2, 3, SIZE, SIZE), left_half_map()

    def random_curve(seed: int) -> torch.Tensor:
        return deletion_curve(
            LeftHalfModel(), images, 0, maps, order="random", baseline="zero", seed=seed
        )[1]

    state = torch.get_rng_state()
    first = random_curve(3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first, random_curve(3))
    assert not torch.equal(first, random_curve(4))


def test_float64_images_and_nan_maps() -> None:
    images = torch.ones(2, 3, SIZE, SIZE, dtype=torch.float64)
    maps = left_half_map().double()
    maps[1, 0, 0, 0] = math.nan
    fractions, probs = deletion_curve(LeftHalfModel(), images, 0, maps[:, 0], baseline="zero")
    assert fractions.shape == (128,) and probs.dtype == torch.float32
    assert not probs[0].isnan().any() and probs[1].isnan().all()


def test_baselines() -> None:
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(
        baseline_images(images, "mean"), images.mean((2, 3), keepdim=True).expand_as(images)
    )
    assert (baseline_images(images, "zero") == 0).all()
    constant = torch.full((1, 1, 16, 16), 0.3)
    torch.testing.assert_close(baseline_images(constant, "blur"), constant)
    # One bright pixel in a 64 px image: the blur is the 31-tap, σ = 7 Gaussian kernel itself.
    impulse = torch.zeros(1, 1, 64, 64)
    impulse[..., 32, 32] = 1.0
    taps = torch.exp(-(torch.arange(-15.0, 16.0) ** 2) / (2 * 7.0**2))
    taps = taps / taps.sum()
    blurred = baseline_images(impulse, "blur")[0, 0]
    torch.testing.assert_close(blurred[17:48, 17:48], taps[:, None] * taps[None, :])
    assert blurred[:17].abs().max() == 0  # kernel size 31: nothing beyond 15 px
    assert baseline_images(torch.rand(1, 3, 8, 8), "blur").shape == (1, 3, 8, 8)  # small image


def test_curve_auc_known_values() -> None:
    fractions = torch.linspace(0, 0.9, 10)
    assert curve_auc(fractions, torch.ones(10)).item() == pytest.approx(1.0)
    assert curve_auc(fractions, 1 - fractions / 0.9).item() == pytest.approx(0.5)
    # The x-axis is normalised: the same shape on [0, 0.5] gives the same area.
    half = torch.linspace(0, 0.5, 10)
    assert curve_auc(half, 1 - half / 0.5).item() == pytest.approx(0.5)
    values = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(
        curve_auc(torch.tensor([0.0, 0.1, 0.2]), values), torch.tensor([0.5, 1.0])
    )


def test_bad_inputs() -> None:
    model, images = LeftHalfModel(), torch.rand(2, 3, SIZE, SIZE)
    maps = torch.rand(2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="upsample"):
        deletion_curve(model, images, 0, torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="order must be one of"):
        deletion_curve(model, images, 0, maps, order="best")
    with pytest.raises(ValueError, match="baseline must be one of"):
        deletion_curve(model, images, 0, maps, baseline="noise")
    with pytest.raises(ValueError, match=r"target must lie in \[0, 2\)"):
        deletion_curve(model, images, torch.tensor([0, 2]), maps)
    with pytest.raises(ValueError, match="max_fraction"):
        deletion_curve(model, images, 0, maps, max_fraction=1.5)
    with pytest.raises(ValueError, match="fractions"):
        curve_auc(torch.zeros(3), torch.ones(3))
