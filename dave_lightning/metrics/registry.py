"""The metric registry: each metric the monitor and ``compare`` compute, declared once.

A :class:`MetricSpec` names a metric (the name users pass in ``metrics=``), says whether it
needs extra model passes (``slow``: computed every ``slow_metrics_every``-th evaluation), what
it needs from the probe or the model, and how to compute per-item values from
:class:`MetricInputs`. The evaluator iterates the registry; adding a metric is one
:func:`register_metric` call (docs/architecture.md, "Add a metric").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dave_lightning.metrics.artifacts import patch_artifact_score
from dave_lightning.metrics.drift import attribution_drift
from dave_lightning.metrics.faithfulness import curve_auc, deletion_curve, insertion_curve
from dave_lightning.metrics.grid import GridItems
from dave_lightning.metrics.localization import energy_pointing_game, grid_pointing_game
from dave_lightning.metrics.sanity import MethodBuilder, model_randomization
from dave_lightning.metrics.sparsity import gini
from dave_lightning.metrics.stability import stability
from dave_lightning.models import ModelAdapter

AttributeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: What a metric can need; a metric whose needs are not met is left out of the evaluation.
NEEDS = ("masks", "regions", "grid", "patch_size", "references")


@dataclass
class MetricInputs:
    """Everything one method's metrics on (a shard of) the probe may read, on the model's device.

    ``images`` are pictures as the metrics perturb them; ``model`` maps them to logits and
    ``attribute`` to the method's maps (for ``images``' own items), ``grid_attribute`` for the
    grid items. ``references`` holds earlier evaluations' DAVE maps by name (``previous``,
    ``first``) for drift. ``adapter`` is the model's adapter and ``make_method`` builds the
    method for a model (a randomized copy, for the sanity check) whose ``attribute`` takes the
    same pictures as ``attribute``.
    """

    method: str
    maps: torch.Tensor
    images: torch.Tensor
    targets: torch.Tensor
    model: Callable[[torch.Tensor], torch.Tensor]
    attribute: AttributeFn
    grid_attribute: AttributeFn
    masks: torch.Tensor | None = None
    regions: dict[str, torch.Tensor] | None = None
    grid: GridItems | None = None
    patch_size: int | None = None
    references: dict[str, torch.Tensor] = field(default_factory=dict)
    grid_k: int = 2
    deletion_steps: int = 16
    deletion_baseline: str = "blur"
    batch_size: int = 64
    adapter: ModelAdapter | None = None
    make_method: MethodBuilder | None = None


@dataclass
class MetricValues:
    """Per-item values by name, and per-item curves by name as (x (S,), values (n, S))."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class CurveLabels:
    """How a metric's curves are drawn: one figure per metric, with this title and axes."""

    title: str
    xlabel: str
    ylabel: str


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name, cost class, needs and computation.

    ``compute(inputs)`` returns per-item values (probe images, or grid cells when ``unit`` is
    ``"grid"``), which the evaluator averages over the probe (NaN skipped). ``dave_only``
    metrics are computed for DAVE's maps only; ``implicit`` ones run whenever their needs are
    met and are not named in ``metrics=``; ``opt_in`` ones run only when named there (costly
    checks). ``curve_labels`` says how the curves of ``MetricValues.curves`` are drawn.
    """

    name: str
    compute: Callable[[MetricInputs], MetricValues]
    slow: bool = False
    needs: frozenset[str] = frozenset()
    unit: str = "image"
    dave_only: bool = False
    implicit: bool = False
    opt_in: bool = False
    curve_labels: CurveLabels | None = None

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"unknown needs {sorted(unknown)}; choose from {NEEDS}")
        if self.unit not in ("image", "grid"):
            raise ValueError(f"unit must be 'image' or 'grid', got {self.unit!r}")


def _energy_pg(inputs: MetricInputs) -> MetricValues:
    return MetricValues({"energy_pg": energy_pointing_game(inputs.maps, inputs.masks)})


def _regions(inputs: MetricInputs) -> MetricValues:
    return MetricValues(
        {
            f"region_{name}": energy_pointing_game(inputs.maps, masks)
            for name, masks in inputs.regions.items()
        }
    )


def _gini(inputs: MetricInputs) -> MetricValues:
    return MetricValues({"gini": gini(inputs.maps)})


def _patch_artifact(inputs: MetricInputs) -> MetricValues:
    return MetricValues({"patch_artifact": patch_artifact_score(inputs.maps, inputs.patch_size)})


def _stability(inputs: MetricInputs) -> MetricValues:
    scores = stability(inputs.attribute, inputs.images, inputs.targets, maps=inputs.maps)
    return MetricValues({f"stability_{key}": value for key, value in scores.items()})


def _grid_pg(inputs: MetricInputs) -> MetricValues:
    grid = inputs.grid
    maps = inputs.grid_attribute(grid.images, grid.targets)
    return MetricValues({"grid_pg": grid_pointing_game(maps, inputs.grid_k, grid.cells)})


#: Orders of the curves that depend on the maps; the random order is one shared control.
DELETION_ORDERS = ("lerf", "morf")
INSERTION_ORDERS = ("morf", "lerf")
PROBABILITY = "target softmax probability"
DELETION_LABELS = CurveLabels("Pixel deletion", "fraction of pixels removed", PROBABILITY)
INSERTION_LABELS = CurveLabels("Pixel insertion", "fraction of pixels inserted", PROBABILITY)


def _curves(inputs: MetricInputs, kind: str, orders: tuple[str, ...]) -> MetricValues:
    """``<kind>_<order>_<baseline>`` AUCs and curves per order; for DAVE also the random-order
    control, which does not depend on the maps and is so computed once per probe."""
    curve = deletion_curve if kind == "deletion" else insertion_curve
    orders = (*orders, "random") if inputs.method == "dave" else orders
    result = MetricValues()
    for order in orders:
        name = f"{kind}_{order}_{inputs.deletion_baseline}"
        fractions, probabilities = curve(
            inputs.model,
            inputs.images,
            inputs.targets,
            inputs.maps,
            order=order,
            baseline=inputs.deletion_baseline,
            steps=inputs.deletion_steps,
            batch_size=inputs.batch_size,
        )
        result.values[name] = curve_auc(fractions, probabilities)
        result.curves[name] = (fractions, probabilities)
    return result


def _deletion(inputs: MetricInputs) -> MetricValues:
    """LeRF and MoRF deletion curves; for DAVE also the random-order control (once per probe)."""
    return _curves(inputs, "deletion", DELETION_ORDERS)


def _insertion(inputs: MetricInputs) -> MetricValues:
    """MoRF and LeRF insertion curves; for DAVE also the random-order control."""
    return _curves(inputs, "insertion", INSERTION_ORDERS)


def _sanity(inputs: MetricInputs) -> MetricValues:
    """Spearman and top-k IoU between the maps and those after the whole randomization
    cascade (metrics/sanity.py)."""
    if inputs.adapter is None or inputs.make_method is None:
        raise ValueError(
            "the sanity metric randomizes a copy of the model: MetricInputs needs adapter and "
            "make_method"
        )
    cascade = model_randomization(
        inputs.adapter, inputs.make_method, inputs.images, inputs.targets, maps=inputs.maps
    )
    return MetricValues(
        {"sanity_spearman": cascade.spearman[-1], "sanity_topk_iou": cascade.topk_iou[-1]}
    )


def _drift(inputs: MetricInputs) -> MetricValues:
    values = {}
    for reference, maps in inputs.references.items():
        for key, value in attribution_drift(inputs.maps, maps).items():
            values[f"drift_{reference}_{key}"] = value
    return MetricValues(values)


METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to the registry, so ``metrics=(spec.name, ...)`` computes it."""
    if not isinstance(spec, MetricSpec):
        raise TypeError(f"register a MetricSpec, got {type(spec).__name__}")
    METRICS[spec.name] = spec
    return spec


for _spec in (
    MetricSpec("energy_pg", _energy_pg, needs=frozenset({"masks"})),
    MetricSpec("regions", _regions, needs=frozenset({"regions"}), implicit=True),
    MetricSpec("gini", _gini),
    MetricSpec("patch_artifact", _patch_artifact, needs=frozenset({"patch_size"})),
    MetricSpec("stability", _stability, slow=True),
    MetricSpec("grid_pg", _grid_pg, slow=True, needs=frozenset({"grid"}), unit="grid"),
    MetricSpec("deletion", _deletion, slow=True, curve_labels=DELETION_LABELS),
    MetricSpec("insertion", _insertion, slow=True, curve_labels=INSERTION_LABELS),
    MetricSpec("drift", _drift, needs=frozenset({"references"}), dave_only=True),
    MetricSpec("sanity", _sanity, slow=True, opt_in=True),
):
    register_metric(_spec)


def metric_names() -> tuple[str, ...]:
    """The metrics computed when ``metrics=`` names none, in evaluation order (all but the
    implicit and the opt-in ones)."""
    return tuple(name for name, spec in METRICS.items() if not spec.implicit and not spec.opt_in)


def selectable_metric_names() -> tuple[str, ...]:
    """The names ``metrics=`` accepts, in evaluation order (the opt-in ones included)."""
    return tuple(name for name, spec in METRICS.items() if not spec.implicit)


def check_metric_names(names: object) -> tuple[str, ...]:
    """``names`` as a tuple of known metric names; an unknown one lists the valid names."""
    if isinstance(names, str):
        raise TypeError(f"metrics must be a sequence of names, got the string {names!r}")
    names = tuple(names)
    valid = selectable_metric_names()
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(valid)}")
    return names
