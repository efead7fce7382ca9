"""The metric registry: each metric the monitor and ``compare`` compute, declared once.

A :class:`MetricSpec` names a metric (the name users pass in ``metrics=``), says whether it
needs extra model passes (``slow``: computed every ``slow_metrics_every``-th evaluation) and how
many (``cost``, from a :class:`CostContext`), what it needs from the probe or the model, which
keys it logs, what its curves are called, and how to compute per-item values from
:class:`MetricInputs`. The evaluator and the monitor ask the
registry and nothing else about metric names; adding a metric is one :func:`register_metric`
call (docs/architecture.md, "Add a metric").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from dave_lightning.metrics.artifacts import patch_artifact_score
from dave_lightning.metrics.drift import attribution_drift
from dave_lightning.metrics.faithfulness import curve_auc, deletion_curve, insertion_curve
from dave_lightning.metrics.grid import GridItems
from dave_lightning.metrics.localization import energy_pointing_game, grid_pointing_game
from dave_lightning.metrics.sanity import MethodBuilder, model_randomization
from dave_lightning.metrics.sparsity import gini
from dave_lightning.metrics.stability import STABILITY_TRANSFORMS, stability
from dave_lightning.models import ModelAdapter

AttributeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: What a metric can need, and how a user provides it when it is missing.
NEEDS: dict[str, str] = {
    "masks": "pass object masks with the probe: (images, labels, masks)",
    "regions": "pass regions={name: (N, H, W) bool masks}",
    "grid": "the probe needs images of at least grid_k² distinct classes; use a more varied "
    "probe or a smaller grid_k",
    "patch_size": "the model's patch size could not be read off it; use a ViT whose patch "
    "embedding is a convolution, or leave this metric out",
    "references": "it compares an evaluation with earlier ones, so it starts at the second",
}

#: The earlier evaluations drift is measured against.
REFERENCES = ("previous", "first")


@dataclass(frozen=True)
class KeyContext:
    """What decides a metric's keys before it runs: the method, every method of the evaluation
    (DAVE first), the region names, the deletion baseline."""

    method: str = "dave"
    methods: tuple[str, ...] = ("dave",)
    regions: tuple[str, ...] = ()
    deletion_baseline: str = "blur"


@dataclass(frozen=True)
class Passes:
    """Images through the model's forward, with gradients and without; ``uncounted`` names
    what runs passes without declaring how many (docs/callback.md, "What it costs")."""

    grad: int = 0
    no_grad: int = 0
    uncounted: frozenset[str] = frozenset()

    def __add__(self, other: Passes) -> Passes:
        return Passes(
            self.grad + other.grad, self.no_grad + other.no_grad, self.uncounted | other.uncounted
        )

    def __mul__(self, count: int) -> Passes:
        return Passes(self.grad * count, self.no_grad * count, self.uncounted)


@dataclass(frozen=True)
class CostContext:
    """What the model passes of one method's metrics depend on, in one process: the method,
    every method's passes per attributed image (DAVE first), the probe images and grid items
    this process evaluates, the deletion steps, and the model's blocks (None: not known)."""

    method: str
    per_image: Mapping[str, Passes]
    probe: int
    grid_items: int
    deletion_steps: int
    blocks: int | None

    def maps(self, images: int, method: str | None = None) -> Passes:
        """The passes of ``method``'s (default: this context's) maps of ``images`` images."""
        return self.per_image[method or self.method] * images


@dataclass
class MetricInputs:
    """Everything one method's metrics on (a shard of) the probe may read, on the model's device.

    ``images`` are pictures as the metrics perturb them; ``model`` maps them to logits and
    ``attribute`` to the method's maps (for ``images``' own items), ``grid_attribute`` for the
    grid items. ``references`` holds earlier evaluations' DAVE maps by name (``previous``,
    ``first``) for drift. ``adapter`` is the model, and ``method_builders`` build each method of
    the evaluation (DAVE's first) for a model whose ``attribute`` takes pictures like
    ``attribute`` (a randomized copy, for the sanity check), whose maps of the probe are
    ``method_maps``.
    """

    method: str
    maps: torch.Tensor
    images: torch.Tensor
    targets: torch.Tensor
    model: Callable[[torch.Tensor], torch.Tensor]
    attribute: AttributeFn
    grid_attribute: AttributeFn
    grid_k: int
    deletion_steps: int
    deletion_baseline: str
    batch_size: int
    masks: torch.Tensor | None = None
    regions: dict[str, torch.Tensor] = field(default_factory=dict)
    grid: GridItems | None = None
    patch_size: int | None = None
    references: dict[str, torch.Tensor] = field(default_factory=dict)
    adapter: ModelAdapter | None = None
    method_builders: dict[str, MethodBuilder] = field(default_factory=dict)
    method_maps: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemCurve:
    """One curve per item: the x-axis (S,), the values (n, S), its legend label, and whether it
    is a control that does not depend on the maps (drawn once, not per method)."""

    fractions: torch.Tensor
    values: torch.Tensor
    label: str
    control: bool = False


@dataclass
class MetricValues:
    """Per-item values by key, and per-item curves by key."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    curves: dict[str, ItemCurve] = field(default_factory=dict)


@dataclass(frozen=True)
class CurveFigure:
    """How a metric's curves are drawn: the figure title and the axes' labels."""

    title: str
    xlabel: str
    ylabel: str


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name, cost, needs, keys, curves and computation.

    ``compute(inputs)`` returns per-item values (probe images, or grid cells when ``unit`` is
    ``"grid"``), which the evaluator averages over the probe (NaN skipped). ``keys(context)``
    names the values it returns before it runs (default: the metric's name). ``dave_only``
    metrics are computed once, with DAVE's inputs; ``implicit`` ones run whenever their needs
    are met and are not named in ``metrics=``; ``opt_in`` ones run only when named there (costly
    checks). ``figure`` says how its curves are drawn. ``cost(context)`` declares the model
    passes a ``slow`` metric runs for one method (a metric that is not slow runs none).
    """

    name: str
    compute: Callable[[MetricInputs], MetricValues]
    slow: bool = False
    needs: frozenset[str] = frozenset()
    unit: str = "image"
    dave_only: bool = False
    implicit: bool = False
    opt_in: bool = False
    keys: Callable[[KeyContext], tuple[str, ...]] | None = None
    figure: CurveFigure | None = None
    cost: Callable[[CostContext], Passes] | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"metric name {self.name!r} must be non-empty without '/'")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"unknown needs {sorted(unknown)}; choose from {tuple(NEEDS)}")
        if self.unit not in ("image", "grid"):
            raise ValueError(f"unit must be 'image' or 'grid', got {self.unit!r}")

    def keys_for(self, context: KeyContext) -> tuple[str, ...]:
        """The keys this metric logs for ``context``'s method (empty for a method it skips)."""
        if self.dave_only and context.method != "dave":
            return ()
        return (self.name,) if self.keys is None else self.keys(context)

    def passes(self, context: CostContext) -> Passes:
        """The model passes this metric runs for ``context``'s method: none for a metric that
        is not slow or a method it skips; a slow one without a ``cost`` is uncounted."""
        if not self.slow or (self.dave_only and context.method != "dave"):
            return Passes()
        if self.cost is None:
            return Passes(uncounted=frozenset({self.name}))
        return self.cost(context)


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


STABILITY_STATISTICS = ("pearson", "spearman", "topk_iou")


def _stability(inputs: MetricInputs) -> MetricValues:
    scores = stability(inputs.attribute, inputs.images, inputs.targets, maps=inputs.maps)
    return MetricValues({f"stability_{key}": scores[key] for key in STABILITY_STATISTICS})


def _stability_cost(context: CostContext) -> Passes:
    """The maps of each probe image moved by each transform (the probe's maps are reused)."""
    return context.maps(context.probe * len(STABILITY_TRANSFORMS))


def _grid_pg(inputs: MetricInputs) -> MetricValues:
    grid = inputs.grid
    maps = inputs.grid_attribute(grid.images, grid.targets)
    return MetricValues({"grid_pg": grid_pointing_game(maps, inputs.grid_k, grid.cells)})


#: Legend labels of the orders of the faithfulness curves; the random order is a control that
#: does not depend on the maps, computed once per probe with DAVE's.
ORDER_LABELS = {
    "lerf": "least relevant first",
    "morf": "most relevant first",
    "random": "random order",
}
#: The orders of each curve metric (the maps' orders; DAVE's adds the random control).
CURVE_ORDERS = {"deletion": ("lerf", "morf"), "insertion": ("morf", "lerf")}
PROBABILITY = "target softmax probability"


def _orders(kind: str, method: str) -> tuple[str, ...]:
    orders = CURVE_ORDERS[kind]
    return (*orders, "random") if method == "dave" else orders


def _curves(inputs: MetricInputs, kind: str) -> MetricValues:
    """``<kind>_<order>_<baseline>`` curves and their AUCs, in each order."""
    curve = deletion_curve if kind == "deletion" else insertion_curve
    result = MetricValues()
    for order in _orders(kind, inputs.method):
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
        result.curves[name] = ItemCurve(
            fractions, probabilities, ORDER_LABELS[order], control=order == "random"
        )
    return result


def _curve_spec(kind: str, figure: CurveFigure) -> MetricSpec:
    """The slow metric of the ``kind`` (deletion, insertion) curves: per order, ``deletion_steps``
    perturbed copies of each probe image through the model, without gradients."""

    def keys(context: KeyContext) -> tuple[str, ...]:
        orders = _orders(kind, context.method)
        return tuple(f"{kind}_{order}_{context.deletion_baseline}" for order in orders)

    def cost(context: CostContext) -> Passes:
        orders = len(_orders(kind, context.method))
        return Passes(no_grad=orders * context.probe * context.deletion_steps)

    return MetricSpec(
        kind,
        lambda inputs: _curves(inputs, kind),
        slow=True,
        keys=keys,
        figure=figure,
        cost=cost,
    )


def _sanity(inputs: MetricInputs) -> MetricValues:
    """Per method, the Spearman correlation (and top-k IoU) of its maps with those after the
    whole randomization cascade (docs/metrics.md, "Sanity")."""
    values = {}
    for method, build in inputs.method_builders.items():
        cascade = model_randomization(
            inputs.adapter, build, inputs.images, inputs.targets, maps=inputs.method_maps[method]
        )
        values[f"sanity/{method}"] = cascade.spearman[-1]
        values[f"sanity/{method}/topk_iou"] = cascade.topk_iou[-1]
    return MetricValues(values)


def _sanity_cost(context: CostContext) -> Passes:
    """Each method's maps of the probe after each cascade step: the head, then every block."""
    if context.blocks is None:
        return Passes(uncounted=frozenset({"sanity"}))
    steps = 1 + context.blocks
    return sum((context.maps(context.probe, m) * steps for m in context.per_image), Passes())


def _sanity_keys(context: KeyContext) -> tuple[str, ...]:
    return tuple(
        key
        for method in context.methods
        for key in (f"sanity/{method}", f"sanity/{method}/topk_iou")
    )


DRIFT_STATISTICS = ("spearman", "cosine", "topk_iou")


def _drift(inputs: MetricInputs) -> MetricValues:
    values = {}
    for reference, maps in inputs.references.items():
        for key, value in attribution_drift(inputs.maps, maps).items():
            values[f"drift_{reference}_{key}"] = value
    return MetricValues(values)


METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
    """Add ``spec`` to the registry, so ``metrics=(spec.name, ...)`` computes it.

    Raises:
        ValueError: when the name is taken and ``replace`` is not set.
    """
    if not isinstance(spec, MetricSpec):
        raise TypeError(f"register a MetricSpec, got {type(spec).__name__}")
    if spec.name in METRICS and not replace:
        raise ValueError(
            f"a metric named {spec.name!r} is already registered; pick another name, or pass "
            "replace=True to replace it"
        )
    METRICS[spec.name] = spec
    return spec


for _spec in (
    MetricSpec("energy_pg", _energy_pg, needs=frozenset({"masks"})),
    MetricSpec(
        "regions",
        _regions,
        needs=frozenset({"regions"}),
        implicit=True,
        keys=lambda context: tuple(f"region_{name}" for name in context.regions),
    ),
    MetricSpec("gini", _gini),
    MetricSpec("patch_artifact", _patch_artifact, needs=frozenset({"patch_size"})),
    MetricSpec(
        "stability",
        _stability,
        slow=True,
        keys=lambda context: tuple(f"stability_{key}" for key in STABILITY_STATISTICS),
        cost=_stability_cost,
    ),
    MetricSpec(
        "grid_pg",
        _grid_pg,
        slow=True,
        needs=frozenset({"grid"}),
        unit="grid",
        cost=lambda context: context.maps(context.grid_items),
    ),
    _curve_spec(
        "deletion", CurveFigure("Pixel deletion", "fraction of pixels removed", PROBABILITY)
    ),
    _curve_spec(
        "insertion", CurveFigure("Pixel insertion", "fraction of pixels inserted", PROBABILITY)
    ),
    MetricSpec(
        "drift",
        _drift,
        needs=frozenset({"references"}),
        dave_only=True,
        keys=lambda context: tuple(
            f"drift_{reference}_{key}" for reference in REFERENCES for key in DRIFT_STATISTICS
        ),
    ),
    MetricSpec(
        "sanity",
        _sanity,
        slow=True,
        dave_only=True,
        opt_in=True,
        keys=_sanity_keys,
        cost=_sanity_cost,
    ),
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


def selected_specs(names: Sequence[str]) -> list[MetricSpec]:
    """The specs of ``names`` plus the implicit ones, in registry order."""
    return [spec for name, spec in METRICS.items() if spec.implicit or name in names]


def metric_keys(
    specs: Sequence[MetricSpec], methods: Sequence[str], context: KeyContext
) -> dict[str, MetricSpec]:
    """Every key the ``specs`` log for DAVE and each compared method (``<method>/<key>``), with
    the spec that logs it."""
    keys = {}
    everyone = ("dave", *methods)
    for method in everyone:
        prefix = "" if method == "dave" else f"{method}/"
        own = KeyContext(
            method=method,
            methods=everyone,
            regions=context.regions,
            deletion_baseline=context.deletion_baseline,
        )
        for spec in specs:
            for key in spec.keys_for(own):
                keys[prefix + key] = spec
    return keys


def curve_figure(metric: str) -> CurveFigure:
    """How the curves of ``metric`` are drawn (its name as title when it is not registered)."""
    spec = METRICS.get(metric)
    if spec is not None and spec.figure is not None:
        return spec.figure
    return CurveFigure(metric.replace("_", " "), "fraction", "value")


def unmet_needs(spec: MetricSpec, available: Mapping[str, bool]) -> list[str]:
    """The needs of ``spec`` that ``available`` (need → met) does not meet."""
    return [need for need in sorted(spec.needs) if not available.get(need, False)]
