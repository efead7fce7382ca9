"""Map-only metrics: Gini sparsity, patch-artifact score and attribution drift, known answers."""

from __future__ import annotations

import math

import pytest
import torch

from dave_lightning.metrics import attribution_drift, gini, patch_artifact_score

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


def blob(size: int = 32, sigma: float = 4.0) -> torch.Tensor:
    grid = torch.arange(size, dtype=torch.float64)
    return torch.exp(-((grid[:, None] - 14) ** 2 + (grid - 18) ** 2) / (2 * sigma**2))


# --- Gini ---------------------------------------------------------------------------------------


def test_gini_uniform_one_hot_and_hand_computed() -> None:
    one_hot = torch.zeros(16)
    one_hot[5] = 3.0
    maps = torch.stack([torch.ones(16), one_hot]).view(2, 4, 4)
    torch.testing.assert_close(gini(maps), torch.tensor([0.0, 15 / 16]))
    # Values 0, 0, 1, 3: Σ|xi − xj| over ordered pairs = 20, 2·n²·mean = 32.
    assert gini(torch.tensor([[[0.0, 3.0], [1.0, 0.0]]])).item() == pytest.approx(20 / 32)


def test_gini_clips_negatives_and_is_nan_without_positive_part() -> None:
    assert gini(torch.tensor([[[-1.0, 0.0], [0.0, 1.0]]])).item() == pytest.approx(0.75)
    scores = gini(torch.stack([torch.zeros(2, 2), -torch.ones(2, 2), torch.full((2, 2), math.nan)]))
    assert scores.isnan().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gini_shapes_dtypes_devices(device: str, dtype: torch.dtype) -> None:
    maps = torch.rand(3, 1, 8, 8, dtype=dtype, device=device)
    score = gini(maps)
    assert score.shape == (3,) and score.dtype == dtype and score.device == maps.device
    torch.testing.assert_close(score, gini(maps[:, 0]))


# --- patch-artifact score ------------------------------------------------------------------------


def test_artifact_pure_patch_pattern_is_one_and_smooth_blob_is_zero() -> None:
    periodic = torch.rand(8, 8).repeat(4, 4)  # identical pattern in every 8 px patch
    scores = patch_artifact_score(torch.stack([periodic.double(), blob()]), 8)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-9)
    assert scores[1].item() < 1e-4


def test_artifact_equals_variance_share_of_tiled_mean_patch() -> None:
    # Parseval: the lattice frequencies hold exactly the tiled average patch's variance.
    maps = torch.rand(3, 16, 32, dtype=torch.float64)
    mean_patch = maps.view(3, 4, 4, 4, 8).mean((1, 3))  # patches 4 × 8
    tiled = mean_patch.repeat(1, 4, 4)
    centred = maps - maps.mean((1, 2), keepdim=True)
    tiled_centred = tiled - tiled.mean((1, 2), keepdim=True)
    expected = tiled_centred.square().sum((1, 2)) / centred.square().sum((1, 2))
    torch.testing.assert_close(patch_artifact_score(maps, (4, 8)), expected)


def test_artifact_scales_with_the_artifact_strength() -> None:
    periodic = torch.rand(8, 8, dtype=torch.float64).repeat(4, 4)
    strengths = [0.0, 0.05, 0.2, 1.0]
    scores = patch_artifact_score(torch.stack([blob() + s * periodic for s in strengths]), 8)
    assert scores.diff().gt(0).all() and scores[-1] > 0.5


def test_artifact_constant_and_nan_maps_are_nan() -> None:
    maps = torch.stack([torch.full((8, 8), 2.0), torch.full((8, 8), math.nan)])
    assert patch_artifact_score(maps, 4).isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_artifact_shapes_dtypes_devices(device: str) -> None:
    maps = torch.rand(2, 1, 16, 16, device=device)
    score = patch_artifact_score(maps, 4)
    assert score.shape == (2,) and score.dtype == torch.float32 and score.device == maps.device


def test_artifact_patch_must_divide() -> None:
    with pytest.raises(ValueError, match="must be positive and divide"):
        patch_artifact_score(torch.rand(1, 16, 16), 5)


# --- drift ----------------------------------------------------------------------------------------


def test_drift_identical_and_monotonic_maps() -> None:
    maps = torch.rand(2, 10, 10, dtype=torch.float64)
    for value in attribution_drift(maps, maps).values():
        torch.testing.assert_close(value, torch.ones(2, dtype=torch.float64))
    transformed = attribution_drift(maps, torch.exp(5 * maps) - 3)  # strictly increasing
    torch.testing.assert_close(transformed["spearman"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(transformed["topk_iou"], torch.ones(2, dtype=torch.float64))
    assert (transformed["cosine"] < 0.99).all()
    scaled = attribution_drift(maps, 2 * maps)["cosine"]
    torch.testing.assert_close(scaled, torch.ones(2, dtype=torch.float64))


def test_drift_reversed_maps() -> None:
    maps = torch.randperm(100).double().view(1, 10, 10) - 50
    drift = attribution_drift(maps, -maps)
    assert drift["spearman"].item() == pytest.approx(-1.0)
    assert drift["cosine"].item() == pytest.approx(-1.0)
    assert drift["topk_iou"].item() == 0.0


def test_drift_hand_computed_with_ties() -> None:
    a = torch.tensor([[[1.0, 2.0], [2.0, 3.0]]])
    b = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    # Ranks (0, 1.5, 1.5, 3) vs (0, 1, 2, 3): r = 4.5 / sqrt(4.5 · 5) (scipy: 0.9486833).
    assert attribution_drift(a, b)["spearman"].item() == pytest.approx(4.5 / math.sqrt(22.5))
    # 20 pixels, top 10 % = 2: {0, 1} vs {1, 2} -> IoU 1/3.
    c = torch.zeros(1, 4, 5)
    d = torch.zeros(1, 4, 5)
    c.view(-1)[[0, 1]] = torch.tensor([2.0, 1.0])
    d.view(-1)[[1, 2]] = torch.tensor([2.0, 1.0])
    assert attribution_drift(c, d)["topk_iou"].item() == pytest.approx(1 / 3)


def test_drift_zero_constant_and_nan_maps() -> None:
    maps = torch.rand(3, 4, 4)
    other = maps.clone()
    other[0] = 0.0
    other[1] = 1.0
    other[2, 0, 0] = math.nan
    drift = attribution_drift(maps, other)
    assert drift["cosine"][0].isnan() and not drift["cosine"][1].isnan()
    assert drift["spearman"].isnan().all() and drift["topk_iou"].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_drift_shapes_dtypes_devices(device: str) -> None:
    a = torch.rand(2, 1, 8, 8, device=device)
    drift = attribution_drift(a, a[:, 0] + 1)
    assert set(drift) == {"spearman", "cosine", "topk_iou"}
    for value in drift.values():
        assert value.shape == (2,) and value.dtype == torch.float32 and value.device == a.device


def test_drift_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="maps shapes differ"):
        attribution_drift(torch.rand(2, 8, 8), torch.rand(2, 8, 4))
