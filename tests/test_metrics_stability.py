"""Stability: equivariant, input-independent and random attributions with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dave_lightning.metrics import STABILITY_TRANSFORMS, stability


def smooth_images(batch: int = 2, size: int = 32) -> torch.Tensor:
    """Smooth random images, strictly positive so zero marks only the warp's padding."""
    noise = torch.rand(batch, 3, size // 4, size // 4)
    return 1.0 + F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)


def channel_sum(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Commutes with any warp (linear per channel): a perfectly stable attribution."""
    return images.sum(1, keepdim=True)


def test_transform_set_is_the_design_transform_and_its_mirror() -> None:
    assert STABILITY_TRANSFORMS == ((5.0, (20 / 224, 8 / 224)),)


def test_equivariant_attribution_scores_one() -> None:
    scores = stability(channel_sum, smooth_images(), 0)
    assert set(scores) == {"pearson", "spearman", "topk_iou"}
    for value in scores.values():
        assert value.shape == (2,)
        torch.testing.assert_close(value, torch.ones(2), atol=2e-3, rtol=0)


def test_identity_transform_gives_exactly_one_for_any_deterministic_method() -> None:
    def method(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (images[:, :1] * 7).sin() + target.view(-1, 1, 1, 1)

    scores = stability(method, smooth_images(), torch.tensor([0, 3]), transforms=[(0.0, (0, 0))])
    for value in scores.values():
        torch.testing.assert_close(value, torch.ones(2))


def test_pixels_outside_the_frame_are_ignored() -> None:
    # Padding (exactly zero input) gets a huge score; counted, it would wreck the correlation.
    def method(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = images.sum(1, keepdim=True)
        return total + 1000.0 * (total == 0)

    scores = stability(method, smooth_images(), 0, transforms=[(0.0, (4 / 32, 0.0))])
    for value in scores.values():
        torch.testing.assert_close(value, torch.ones(2), atol=1e-6, rtol=0)


def test_input_independent_map_is_unstable() -> None:
    # A fixed off-centre blob: attr(T x) stays put while T(attr x) moves by 8 pixels.
    grid = torch.arange(32.0)
    blob = torch.exp(-((grid[:, None] - 16) ** 2 + (grid - 10) ** 2) / (2 * 2.0**2))

    def method(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return blob.expand(len(images), 1, 32, 32)

    scores = stability(
        method, smooth_images(), 0, transforms=[(0.0, (8 / 32, 0.0))], top_fraction=0.02
    )
    assert (scores["topk_iou"] == 0).all()  # top-2 % discs (15 px) 8 px apart do not overlap
    assert (scores["pearson"] < 0.1).all()


def test_random_attribution_is_uncorrelated() -> None:
    generator = torch.Generator().manual_seed(1)

    def method(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(images), 1, *images.shape[-2:], generator=generator)

    scores = stability(method, smooth_images(4, 64), 0)
    assert scores["pearson"].abs().max() < 0.1
    assert scores["spearman"].abs().max() < 0.1
    assert scores["topk_iou"].max() < 0.15  # chance level is 0.1 / 1.9 ≈ 0.05


def test_one_batched_call_and_constant_maps_are_nan() -> None:
    calls = []

    def method(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append((len(images), target.tolist()))
        return torch.ones(len(images), 1, *images.shape[-2:], dtype=torch.float64)

    scores = stability(method, smooth_images(2, 16), torch.tensor([1, 2]))
    assert calls == [(4, [1, 2, 1, 2])]  # the 2 images and their 2 transformed copies
    for value in scores.values():
        assert value.dtype == torch.float64 and value.isnan().all()


def test_nan_map_gives_nan_for_that_image_only() -> None:
    def method(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        maps = images.sum(1, keepdim=True)
        maps[0::2, 0, 0, 0] = math.nan  # image 0 in every copy
        return maps

    scores = stability(method, smooth_images(2, 16), 0)
    for value in scores.values():
        assert math.isnan(value[0]) and not math.isnan(value[1])


def test_bad_inputs() -> None:
    def wrong_size(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(images), 1, 8, 8)

    with pytest.raises(ValueError, match="attribute_fn returned maps of shape"):
        stability(wrong_size, smooth_images(2, 16), 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        stability(channel_sum, torch.rand(3, 16, 16), 0)
    with pytest.raises(ValueError, match="at least one"):
        stability(channel_sum, smooth_images(2, 16), 0, transforms=())


def test_precomputed_maps_skip_the_originals_and_give_the_same_scores() -> None:
    images = torch.randn(3, 3, 32, 32)
    target = torch.tensor([0, 1, 2])
    calls: list[int] = []

    def attribute(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.abs().sum(1, keepdim=True)

    full = stability(attribute, images, target)
    reused = stability(attribute, images, target, maps=attribute(images, target))
    assert calls == [6, 3, 3]  # originals + moved copies; then originals alone, moved alone
    for key in full:
        torch.testing.assert_close(full[key], reused[key])
