"""torchmetrics classes: accumulation over batches equals the functional mean on the whole set."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torchmetrics import Metric

from dave_lightning.metrics import (
    AttributionDrift,
    DeletionAUC,
    EnergyPointingGame,
    Gini,
    GridPointingGame,
    InsertionAUC,
    PatchArtifactScore,
    Stability,
    attribution_drift,
    curve_auc,
    deletion_curve,
    energy_pointing_game,
    gini,
    grid_pointing_game,
    insertion_curve,
    patch_artifact_score,
    stability,
)


def nan_mean(values: torch.Tensor | dict[str, torch.Tensor]) -> object:
    if isinstance(values, dict):
        return {k: v.double().nanmean() for k, v in values.items()}
    return values.double().nanmean()


def assert_matches(result: object, expected: object) -> None:
    if isinstance(expected, dict):
        assert isinstance(result, dict) and set(result) == set(expected)
        for key in expected:
            assert_matches(result[key], expected[key])
        return
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-6)


def maps_with_nan_cases(batch: int) -> torch.Tensor:
    """Random maps; image 1 is all zero, so every metric scores it NaN."""
    maps = torch.rand(batch, 1, 8, 8)
    maps[1] = 0.0
    return maps


def energy_args(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.rand(batch, 8, 8) > 0.5
    masks[0] = False  # empty mask: NaN
    return maps_with_nan_cases(batch), masks


def left_linear_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()


# name: (metric factory, functional, batch arguments for a batch size)
CASES: dict[str, tuple[Callable[[], Metric], Callable[..., object], Callable[[int], tuple]]] = {
    "energy": (EnergyPointingGame, energy_pointing_game, energy_args),
    "grid": (
        lambda: GridPointingGame(k=2),
        lambda maps, cell: grid_pointing_game(maps, 2, cell),
        lambda b: (maps_with_nan_cases(b), torch.randint(0, 4, (b,))),
    ),
    "gini": (Gini, gini, lambda b: (maps_with_nan_cases(b),)),
    "artifact": (
        lambda: PatchArtifactScore(4),
        lambda maps: patch_artifact_score(maps, 4),
        lambda b: (maps_with_nan_cases(b),),
    ),
    "drift": (
        AttributionDrift,
        attribution_drift,
        lambda b: (maps_with_nan_cases(b), torch.rand(b, 1, 8, 8)),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_batches_equal_functional_on_concatenation(name: str) -> None:
    make_metric, functional, make_args = CASES[name]
    first, second = make_args(4), make_args(3)
    metric = make_metric()
    metric.update(*first)
    metric.update(*second)
    joined = [torch.cat([a, b]) for a, b in zip(first, second, strict=True)]
    values = functional(*joined)
    some = values if isinstance(values, torch.Tensor) else next(iter(values.values()))
    assert some.isnan().any()  # the NaN cases are skipped, not averaged in
    assert_matches(metric.compute(), nan_mean(values))


@pytest.mark.parametrize("name", list(CASES))
def test_merged_states_equal_functional_like_ddp_sum(name: str) -> None:
    # What DDP does: each rank accumulates its shard, states are summed, then compute().
    make_metric, functional, make_args = CASES[name]
    first, second = make_args(4), make_args(3)
    rank0, rank1 = make_metric(), make_metric()
    rank0.update(*first)
    rank1.update(*second)
    rank0.merge_state(rank1)
    joined = [torch.cat([a, b]) for a, b in zip(first, second, strict=True)]
    assert_matches(rank0.compute(), nan_mean(functional(*joined)))


def test_states_reduce_by_sum_and_flags() -> None:
    metric = EnergyPointingGame()
    assert metric._reductions["total"].__name__ == "dim_zero_sum"
    assert metric._reductions["count"].__name__ == "dim_zero_sum"
    assert not metric.is_differentiable and metric.full_state_update is False
    assert EnergyPointingGame.higher_is_better and GridPointingGame.higher_is_better
    assert Gini.higher_is_better and Stability.higher_is_better
    assert PatchArtifactScore.higher_is_better is False
    assert AttributionDrift.higher_is_better is None
    assert DeletionAUC().higher_is_better is True
    assert DeletionAUC(order="morf").higher_is_better is False
    assert DeletionAUC(order="random").higher_is_better is None
    assert InsertionAUC().higher_is_better is True
    assert InsertionAUC(order="lerf").higher_is_better is False
    with pytest.raises(ValueError, match="order must be one of"):
        DeletionAUC(order="best")


def test_all_nan_gives_nan_and_reset_clears() -> None:
    metric = EnergyPointingGame()
    metric.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))
    assert math.isnan(metric.compute())
    metric.reset()
    metric.update(torch.ones(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    assert metric.compute().item() == 1.0


def test_forward_returns_batch_value_and_accumulates() -> None:
    metric = Gini()
    first, second = torch.rand(2, 8, 8), torch.rand(3, 8, 8)
    batch_value = metric(first)
    torch.testing.assert_close(batch_value, gini(first).mean())
    metric(second)
    torch.testing.assert_close(metric.compute(), gini(torch.cat([first, second])).mean())


@pytest.mark.parametrize(
    ("metric_cls", "curve_fn"), [(DeletionAUC, deletion_curve), (InsertionAUC, insertion_curve)]
)
def test_curve_auc_classes(metric_cls: type, curve_fn: Callable) -> None:
    model = left_linear_model()
    images = [torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8)]
    maps = [torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8)]
    target = [torch.tensor([0, 1]), torch.tensor([2, 3, 0])]
    options = {"baseline": "mean", "steps": 12, "max_fraction": 0.5}
    metric = metric_cls(**options)
    for batch in zip(images, target, maps, strict=True):
        metric.update(model, *batch)
    fractions, probs = curve_fn(
        model, torch.cat(images), torch.cat(target), torch.cat(maps), **options
    )
    torch.testing.assert_close(metric.compute(), curve_auc(fractions, probs).mean())
    assert not any(isinstance(m, nn.Linear) for m in metric.modules())  # model not stored


def test_stability_class() -> None:
    def method(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return images.square().sum(1, keepdim=True)

    images = [torch.rand(2, 3, 16, 16), torch.rand(3, 3, 16, 16)]
    metric = Stability()
    for batch in images:
        metric.update(method, batch, 0)
    assert_matches(metric.compute(), nan_mean(stability(method, torch.cat(images), 0)))


def test_compute_before_update_is_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = AttributionDrift().compute()
    assert all(math.isnan(v) for v in result.values())
