"""Compared attribution methods: one protocol, ``attribute(images, target) -> maps``, by name.

The monitor and ``compare`` compute every method named in ``compare_methods`` beside DAVE and
log the same metrics for it. A method is registered once with a factory that builds it for a
model (docs/architecture.md, "Add a compared attribution method").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from dave_lightning.attribution.captum_methods import CAPTUM_PREFIX, captum_factory
from dave_lightning.attribution.gradients import (
    auto_batch_size,
    channel_sum,
    check_inputs,
    gradient_contributions,
)
from dave_lightning.attribution.postprocess import postprocess as postprocess_maps
from dave_lightning.attribution.rollout import AttentionRollout, GradRollout
from dave_lightning.models import ModelAdapter


class AttributionMethod(Protocol):
    """Anything with ``attribute(images (B, C, H, W), target (B,)) -> maps (B, 1, H, W)``.

    A method may declare its cost, ``passes_per_image``: the images its ``attribute`` sends
    through the model's forward per image it explains, ``(with gradients, without)``; the
    monitor's cost estimate counts it (docs/callback.md, "What it costs"), and leaves a method
    without one uncounted, saying so.
    """

    def attribute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


#: Builds a method for a model, honouring the caller's memory cap (items per pass, or None).
MethodFactory = Callable[[ModelAdapter, int | None], AttributionMethod]


class _InputTimesGradient:
    """Input × gradient of the target logit from one clean pass, post-processed like DAVE."""

    effective: bool
    passes_per_image = (1, 0)  # one forward + backward per image

    def __init__(
        self,
        model: nn.Module | ModelAdapter,
        *,
        postprocess: bool = True,
        batch_size: int | None = None,
    ) -> None:
        self.adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        self.postprocess = postprocess
        self.batch_size = batch_size

    def attribute(self, images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Maps (B, 1, H, W): in [0, 1] with post-processing, signed channel sums without."""
        images, target = check_inputs(self.adapter, images, target)
        with self.adapter.attribution():
            device = self.adapter.device
            source = images.to(device, torch.float32).clone()
            contributions = gradient_contributions(
                self.adapter,
                source,
                target.to(device),
                self.batch_size or auto_batch_size(source),
                effective=self.effective,
            )
            finish = postprocess_maps if self.postprocess else channel_sum
            return finish(contributions).to(images.device)

    __call__ = attribute


class InputXGradient(_InputTimesGradient):
    """Input × plain gradient: the noisy, grid-like baseline DAVE improves on."""

    effective = False


class InputXEffective(_InputTimesGradient):
    """Input × effective gradient (operator variation removed), without averaging."""

    effective = True


METHODS: dict[str, MethodFactory] = {
    "input_x_gradient": lambda model, batch_size: InputXGradient(model, batch_size=batch_size),
    "input_x_effective": lambda model, batch_size: InputXEffective(model, batch_size=batch_size),
    "attention_rollout": lambda model, batch_size: AttentionRollout(model, batch_size=batch_size),
    "grad_rollout": lambda model, batch_size: GradRollout(model, batch_size=batch_size),
}


def register_method(name: str, factory: MethodFactory, *, replace: bool = False) -> None:
    """Make ``name`` usable in ``compare_methods`` (``factory(model, batch_size)`` builds it).

    Raises:
        ValueError: for a reserved name, or one already registered unless ``replace``.
    """
    if name == "dave" or "/" in name or not name or name.startswith(CAPTUM_PREFIX):
        raise ValueError(
            f"method name {name!r} is reserved, contains '/' or starts with "
            f"{CAPTUM_PREFIX!r}; pick another"
        )
    if name in METHODS and not replace:
        raise ValueError(
            f"a method named {name!r} is already registered; pick another name, or pass "
            "replace=True to replace it"
        )
    METHODS[name] = factory


def method_factory(name: str) -> MethodFactory:
    """The factory of the compared method ``name``: a registered one, or a Captum method
    (``captum:<Class>``, ``captum:NoiseTunnel(<Class>)``) resolved when asked for.

    Raises:
        ValueError: for an unknown name (the valid names listed).
        ImportError: for a Captum name without captum installed.
    """
    if name in METHODS:
        return METHODS[name]
    if name.startswith(CAPTUM_PREFIX):
        return captum_factory(name)
    raise ValueError(
        f"unknown compare_methods {name!r}; choose from {list(METHODS)} or "
        f"'{CAPTUM_PREFIX}<Class>' for a Captum method"
    )


def check_method_names(names: object) -> tuple[str, ...]:
    """``names`` as a tuple of compared-method names that resolve (registered, or Captum's);
    an unknown one lists the valid names."""
    if isinstance(names, str):
        raise TypeError(f"compare_methods must be a sequence of names, got {names!r}")
    names = tuple(names)
    for name in names:
        method_factory(name)
    return names
