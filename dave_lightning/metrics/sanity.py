"""The model-randomization sanity check (Adebayo et al., 2018): do the maps depend on the weights?

A copy of the model has its weights re-initialised in a cascade from the output down — the
head, then the last block, then the last two, … down to every block — and after each step the
method's maps of the copy are compared with those of the model: Spearman rank correlation and
top-10 % IoU per image. A method whose maps barely change explains the input rather than the
model, and fails the check (docs/metrics.md, "Sanity"). The user's model is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import nn

from dave_lightning.attribution.methods import AttributionMethod
from dave_lightning.core.seeding import seeded_global_rng
from dave_lightning.metrics._checks import as_maps
from dave_lightning.metrics.drift import attribution_drift
from dave_lightning.models import ModelAdapter

#: A method fails the check when its maps' mean Spearman correlation with the model's maps,
#: after the whole cascade, stays above this (or is undefined): they did not visibly change.
SANITY_THRESHOLD = 0.5
TOP_FRACTION = 0.1

#: Builds the compared method for a model (the model, or a randomized copy of it).
MethodBuilder = Callable[[ModelAdapter], AttributionMethod]


@dataclass(frozen=True)
class Cascade:
    """The check's result: per cascade step, per image, the similarity to the model's maps.

    ``labels[s]`` names the lowest module re-initialised at step s (``head``, ``block 12``,
    …, ``block 1``; everything above it is re-initialised too); ``spearman`` and ``topk_iou``
    are (steps, B), NaN where a map is constant (identical maps count as 1).
    """

    labels: tuple[str, ...]
    spearman: torch.Tensor
    topk_iou: torch.Tensor

    def summary(self) -> list[tuple[str, float, float]]:
        """(label, mean Spearman, mean top-k IoU) per step, means over the images (NaN
        skipped): the points of :func:`cascade_figure`."""
        spearman, iou = self.spearman.nanmean(1), self.topk_iou.nanmean(1)
        return [
            (label, float(s), float(i))
            for label, s, i in zip(self.labels, spearman, iou, strict=True)
        ]

    def fails(self, threshold: float = SANITY_THRESHOLD) -> bool:
        """Whether the method fails the check (see :func:`sanity_fails`)."""
        return sanity_fails(float(self.spearman[-1].nanmean()), threshold)


def sanity_fails(spearman: float, threshold: float = SANITY_THRESHOLD) -> bool:
    """Whether a mean Spearman correlation at full cascade fails the check: above
    ``threshold``, or NaN (no image's maps could be shown to change)."""
    return not spearman <= threshold


def model_randomization(
    adapter: ModelAdapter,
    make_method: MethodBuilder,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    maps: torch.Tensor | None = None,
    seed: int = 0,
    top_fraction: float = TOP_FRACTION,
) -> Cascade:
    """Run the cascading model-randomization check of one method on ``images``.

    Args:
        adapter: the model; a deep copy is randomized, the model itself is left as it was.
        make_method: builds the method for a model, e.g. ``lambda model:
            METHODS["input_x_gradient"](model, None)``.
        images, targets: (B, C, H, W) inputs and the (B,) classes explained.
        maps: the method's maps of ``images`` on the model, when already computed.
        seed: seeds the re-initialisation (step s draws from ``seed + s``), through forked
            global RNGs (``reset_parameters`` draws from them), so the caller's are untouched.
        top_fraction: the share of pixels in the top sets of the IoU.

    Returns:
        The :class:`Cascade`: the head, then the blocks from the last to the first.

    Raises:
        ValueError: when the model's family cannot name its blocks and head.
    """
    randomized = _standalone_copy(adapter)
    head = randomized.family.head(randomized.root)
    blocks = randomized.family.blocks(randomized.root)
    if head is None or not blocks:
        raise ValueError(
            f"the sanity check re-initialises the model's head and blocks, and the "
            f"{randomized.family.name!r} model family cannot find them in "
            f"{type(randomized.root).__name__}; use a timm, torchvision or HuggingFace ViT, or "
            "register a family whose blocks() and head() name them"
        )
    if maps is None:
        maps = make_method(adapter).attribute(images, targets)
    steps = [("head", head)] + [
        (f"block {index + 1}", block) for index, block in reversed(list(enumerate(blocks)))
    ]
    spearman, iou = [], []
    for step, (_, module) in enumerate(steps):
        with seeded_global_rng(seed + step, randomized.device):
            reinitialise(module)
        changed = make_method(randomized).attribute(images, targets)
        scores = _similarity(maps, changed, top_fraction)
        spearman.append(scores["spearman"])
        iou.append(scores["topk_iou"])
    return Cascade(tuple(label for label, _ in steps), torch.stack(spearman), torch.stack(iou))


def _standalone_copy(adapter: ModelAdapter) -> ModelAdapter:
    """A deep copy of the adapter and its model that runs on its own weights.

    Inside ``adapter.attribution()`` a half-precision model runs through float32 copies of its
    weights; the copy drops them, so that its own (re-initialised) weights are the ones used.
    """
    randomized = copy.deepcopy(adapter)
    randomized._float32_state = None
    return randomized


@torch.no_grad()
def reinitialise(module: nn.Module) -> None:
    """Re-draw ``module``'s weights with each submodule's own ``reset_parameters``; parameters
    no reset covers (``nn.MultiheadAttention``'s projections, layer scales) are drawn from a
    normal with the tensor's own mean and standard deviation (scale kept, structure lost)."""
    covered = set()
    for submodule in module.modules():
        reset = getattr(submodule, "reset_parameters", None)
        if callable(reset):
            reset()
            covered.update(id(param) for param in submodule.parameters(recurse=False))
    for param in module.parameters():
        if id(param) not in covered and param.numel():
            std = float(param.std()) if param.numel() > 1 else 0.0
            param.normal_(float(param.mean()), std)


def _similarity(
    maps: torch.Tensor, changed: torch.Tensor, top_fraction: float
) -> dict[str, torch.Tensor]:
    """Spearman and top-k IoU per image; identical maps score 1 even where constant."""
    scores = attribution_drift(maps, changed, top_fraction=top_fraction)
    same = (as_maps(maps) == as_maps(changed).to(maps.device)).flatten(1).all(1)
    return {key: torch.where(same, 1.0, scores[key]) for key in ("spearman", "topk_iou")}


def cascade_figure(
    summaries: Mapping[str, Sequence[tuple[str, float, float]]],
    threshold: float = SANITY_THRESHOLD,
) -> Figure:
    """Spearman and top-k IoU against the cascade step, one line per method (method →
    :meth:`Cascade.summary`), with the pass/fail threshold on the Spearman panel."""
    fig = Figure(figsize=(8.0, 3.2), dpi=100, layout="constrained")
    spearman_ax, iou_ax = fig.subplots(1, 2, sharex=True)
    for method, points in summaries.items():
        labels = [label for label, _, _ in points]
        spearman_ax.plot(labels, [s for _, s, _ in points], "o-", markersize=3, label=method)
        iou_ax.plot(labels, [i for _, _, i in points], "o-", markersize=3, label=method)
    spearman_ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    spearman_ax.set(title="Spearman with the model's maps", ylim=(-0.1, 1.05))
    iou_ax.set(title="top-10 % IoU with the model's maps", ylim=(-0.05, 1.05))
    for ax in (spearman_ax, iou_ax):
        ax.set(xlabel="re-initialised down to")
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelrotation=45)
    spearman_ax.legend(fontsize="small")
    return fig
