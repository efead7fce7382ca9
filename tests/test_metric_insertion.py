"""The insertion metric of the registry: known AUCs, and one shared random-order control."""

from __future__ import annotations

import torch
from tiny_models import timm_vit
from torch import nn

from dave_lightning.attribution import DAVESettings
from dave_lightning.evaluation import EvaluationOptions, ProbeEvaluator
from dave_lightning.metrics.registry import (
    METRICS,
    MetricInputs,
    check_metric_names,
    metric_names,
)
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import IDENTITY
from dave_lightning.probe import Probe

SIZE, STEPS = 8, 16
PIXELS = SIZE * SIZE


class LeftHalfModel(nn.Module):
    """Class-0 logit 10 · (mean of the left half), class-1 logit 0: p(0) = sigmoid(10 m)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([10 * left, torch.zeros_like(left)], dim=1)


def inputs(method: str, maps: torch.Tensor, model: nn.Module) -> MetricInputs:
    """All-ones images, zero baseline: inserting pixels restores the left-half mean."""
    return MetricInputs(
        method=method,
        maps=maps,
        images=torch.ones(2, 3, SIZE, SIZE),
        targets=torch.zeros(2, dtype=torch.long),
        model=model,
        attribute=lambda images, target: maps,
        grid_attribute=lambda images, target: maps,
        grid_k=2,
        deletion_steps=STEPS,
        deletion_baseline="zero",
        batch_size=64,
    )


def left_half_maps() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    maps = torch.zeros(2, 1, SIZE, SIZE)
    maps[..., : SIZE // 2] = 1 + torch.rand(2, 1, SIZE, SIZE // 2, generator=generator)
    return maps


def expected_auc(left_inserted: torch.Tensor) -> float:
    """Trapezoid AUC (x rescaled to [0, 1]) of p = sigmoid(10 · inserted left share)."""
    probabilities = torch.sigmoid(10 * left_inserted / (PIXELS // 2))
    return float(torch.trapezoid(probabilities, torch.linspace(0, 1, STEPS, dtype=torch.float64)))


def test_insertion_aucs_match_the_closed_form() -> None:
    values = METRICS["insertion"].compute(inputs("dave", left_half_maps(), LeftHalfModel()))
    counts = (torch.linspace(0, 0.9, STEPS).double() * PIXELS).round()
    morf = expected_auc(counts.clamp(max=PIXELS // 2))  # the left half comes first
    lerf = expected_auc((counts - PIXELS // 2).clamp(min=0))  # the right half comes first
    torch.testing.assert_close(values.values["insertion_morf_zero"], torch.full((2,), morf))
    torch.testing.assert_close(values.values["insertion_lerf_zero"], torch.full((2,), lerf))
    assert lerf < float(values.values["insertion_random_zero"].mean()) < morf
    curve = values.curves["insertion_morf_zero"]
    fractions, curves = curve.fractions, curve.values
    assert fractions.shape == (STEPS,) and curves.shape == (2, STEPS)


def test_random_control_is_for_dave_only_and_ignores_the_maps() -> None:
    model = LeftHalfModel()
    dave = METRICS["insertion"].compute(inputs("dave", left_half_maps(), model))
    calls = model.calls
    other = METRICS["insertion"].compute(inputs("input_x_gradient", left_half_maps(), model))
    assert set(other.values) == {"insertion_morf_zero", "insertion_lerf_zero"}
    assert model.calls - calls == calls * 2 // 3  # two orders of three: no second control
    flipped = METRICS["insertion"].compute(inputs("dave", left_half_maps().flip(-1), model))
    random = "insertion_random_zero"
    torch.testing.assert_close(dave.values[random], flipped.values[random])
    assert not torch.allclose(
        dave.values["insertion_morf_zero"], flipped.values["insertion_morf_zero"]
    )


def test_evaluation_logs_insertion_with_one_shared_control() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    probe = Probe(torch.randn(2, 3, 32, 32, generator=generator), torch.tensor([0, 1]))
    options = EvaluationOptions(
        metrics=("insertion",), compare_methods=("input_x_gradient",), deletion_steps=4
    )
    evaluator = ProbeEvaluator(probe, DAVESettings(n_samples=2, seed=0), options, IDENTITY)
    evaluation = evaluator.evaluate(ModelAdapter(timm_vit()))
    assert {key for key in evaluation.metrics if "insertion" in key} == {
        "insertion_morf_blur",
        "insertion_lerf_blur",
        "insertion_random_blur",
        "input_x_gradient/insertion_morf_blur",
        "input_x_gradient/insertion_lerf_blur",
    }
    assert set(evaluation.curves) == {
        "dave/insertion_morf_blur",
        "dave/insertion_lerf_blur",
        "dave/insertion_random_blur",
        "input_x_gradient/insertion_morf_blur",
        "input_x_gradient/insertion_lerf_blur",
    }


def test_curve_labels_and_opt_in_metrics() -> None:
    assert METRICS["insertion"].figure.xlabel == "fraction of pixels inserted"
    assert METRICS["deletion"].figure.xlabel == "fraction of pixels removed"
    assert "insertion" in metric_names() and "sanity" not in metric_names()  # the defaults
    assert check_metric_names(["sanity"]) == ("sanity",)  # opt-in, but accepted by name
