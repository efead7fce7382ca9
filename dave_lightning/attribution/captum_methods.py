"""Captum's attribution methods as compared methods: ``captum:<Class>`` by name, or an instance.

Any class of ``captum.attr`` built from the model alone whose ``attribute(inputs, target=…)``
needs nothing else (``IntegratedGradients``, ``Saliency``, ``GuidedBackprop``, …) is usable by
name, and ``NoiseTunnel(<Class>)`` wraps one in Captum's noise tunnel (docs/methods.md). The
model runs through the :class:`ModelAdapter` (logits from any output, eval mode, frozen
float32 weights), maps are post-processed like :class:`InputXGradient`'s, and Captum is
imported only when such a method is asked for (``pip install 'dave-lightning[captum]'``).
"""

from __future__ import annotations

import inspect
import re
import warnings
from typing import Any

import torch
from torch import nn

from dave_lightning.attribution.gradients import (
    auto_batch_size,
    channel_sum,
    check_inputs,
    chunks,
)
from dave_lightning.attribution.postprocess import postprocess as postprocess_maps
from dave_lightning.core.seeding import seeded_global_rng
from dave_lightning.models import ModelAdapter

#: The prefix of a Captum method's name: ``captum:<Class>``.
CAPTUM_PREFIX = "captum:"
#: ``attribute`` arguments the method sets itself (batching follows ``batch_size``).
RESERVED = ("inputs", "target", "internal_batch_size", "nt_samples_batch_size")
#: Captum classes that wrap another attribution method (``NoiseTunnel(Saliency)``).
WRAPPERS = ("NoiseTunnel",)
_NAME = re.compile(r"^(\w+)(?:\((\w+)\))?$")
#: Model passes per explained image of the Captum classes whose cost is declared, ``(with
#: gradients, without)``: counts, or the ``attribute`` argument that gives the first (Captum's
#: default unless ``attribute_kwargs`` sets it). DeepLift runs the inputs and their baselines
#: through one forward. The perturbation methods (Lime, KernelShap, FeatureAblation, …) have
#: none: their passes depend on the chunking or on the features.
CAPTUM_PASSES: dict[str, tuple[int | str, int]] = {
    "Saliency": (1, 0),
    "InputXGradient": (1, 0),
    "GuidedBackprop": (1, 0),
    "Deconvolution": (1, 0),
    "DeepLift": (2, 0),
    "IntegratedGradients": ("n_steps", 0),
}
#: Wrappers multiply their method's passes by an ``attribute`` argument.
WRAPPER_PASSES = {"NoiseTunnel": "nt_samples"}


def _captum_attr() -> Any:
    """``captum.attr``, or an ImportError saying how to install it."""
    try:
        import captum.attr
    except ImportError as error:
        raise ImportError(
            "Captum methods need captum: pip install 'dave-lightning[captum]'"
        ) from error
    return captum.attr


def by_name_classes() -> tuple[str, ...]:
    """The ``captum.attr`` classes usable by name: built from the model alone, and whose
    ``attribute`` takes ``inputs`` and ``target`` and requires nothing else."""
    attr = _captum_attr()
    names = []
    for name in dir(attr):
        cls = getattr(attr, name)
        if not (inspect.isclass(cls) and issubclass(cls, attr.Attribution)):
            continue
        if not callable(getattr(cls, "attribute", None)) or name in WRAPPERS:
            continue
        built_from = _required(cls.__init__)
        takes = inspect.signature(cls.attribute).parameters
        if len(built_from) == 1 and "target" in takes and _required(cls.attribute) == ["inputs"]:
            names.append(name)
    return tuple(sorted(names))


def _required(function: Any) -> list[str]:
    """Names of the positional parameters without a default, ``self`` excluded."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.name != "self"
        and parameter.kind in kinds
        and parameter.default is inspect.Parameter.empty
    ]


def parse_name(name: str) -> tuple[str | None, str]:
    """``"captum:NoiseTunnel(Saliency)"`` → ``("NoiseTunnel", "Saliency")``; ``"captum:Saliency"``
    → ``(None, "Saliency")``. Raises ValueError, listing the valid names, for anything else."""
    match = (
        _NAME.match(name.removeprefix(CAPTUM_PREFIX)) if name.startswith(CAPTUM_PREFIX) else None
    )
    valid = by_name_classes()
    if match is not None:
        wrapper, inner = (match[1], match[2]) if match[2] else (None, match[1])
        if (wrapper is None or wrapper in WRAPPERS) and inner in valid:
            return wrapper, inner
    raise ValueError(
        f"unknown Captum method {name!r}; use captum:<Class> or captum:NoiseTunnel(<Class>) "
        f"with <Class> one of {list(valid)}, or pass a Captum instance to CaptumMethod"
    )


class _Logits(nn.Module):
    """The adapter as a module: logits from any output, and the model's modules for the Captum
    methods that hook them (``GuidedBackprop``, ``DeepLift``)."""

    def __init__(self, adapter: ModelAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self.adapter = adapter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapter(images)


class CaptumMethod:
    """A Captum attribution method on DAVE's terms: (B, 1, H, W) maps, a memory cap, a seed.

    Args:
        model: the classifier (or its :class:`ModelAdapter`).
        method: ``"captum:<Class>"``, ``"captum:NoiseTunnel(<Class>)"`` (the prefix may be left
            out), or a Captum instance you built; build it on the adapter (``Occlusion(
            ModelAdapter(model))``) so that its forward function returns logits.
        postprocess: post-process like :class:`InputXGradient` (channel sum, positive part,
            smoothing, scaling to [0, 1]); False gives the raw signed channel sum.
        batch_size: the most items per model pass (None: chosen for the device). Images are
            taken ``batch_size`` at a time, and Captum's ``internal_batch_size`` (e.g.
            ``IntegratedGradients``) or ``nt_samples_batch_size`` (``NoiseTunnel``) keep its
            own expansions under the cap.
        seed: every call runs with the global torch (CPU and the model's device), NumPy and
            Python RNGs forked and seeded from ``seed``, since Captum's random methods
            (``NoiseTunnel``, ``GradientShap``, …) draw from them: the same inputs give the same
            maps, and the caller's RNG states are left as they were.
        attribute_kwargs: further arguments of the Captum ``attribute`` call (``n_steps``,
            ``nt_samples``, ``stdevs``, ``sliding_window_shapes``, …).
    """

    def __init__(
        self,
        model: nn.Module | ModelAdapter,
        method: str | Any,
        *,
        postprocess: bool = True,
        batch_size: int | None = None,
        seed: int = 0,
        attribute_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        self.method = self._build(method) if isinstance(method, str) else method
        if not callable(getattr(self.method, "attribute", None)):
            raise TypeError(
                f"method must be a Captum method name or an instance with attribute(), got "
                f"{type(self.method).__name__}"
            )
        self.postprocess = postprocess
        self.batch_size = batch_size
        self.seed = seed
        self.attribute_kwargs = dict(attribute_kwargs or {})
        reserved = sorted(set(self.attribute_kwargs) & set(RESERVED))
        if reserved:
            raise ValueError(
                f"attribute_kwargs may not set {reserved}: images and targets come with each "
                "call, and batching follows batch_size"
            )

    def _build(self, name: str) -> Any:
        attr = _captum_attr()
        wrapper, inner = parse_name(
            name if name.startswith(CAPTUM_PREFIX) else CAPTUM_PREFIX + name
        )
        method = getattr(attr, inner)(_Logits(self.adapter))
        return method if wrapper is None else getattr(attr, wrapper)(method)

    def attribute(self, images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Maps (B, 1, H, W): in [0, 1] with post-processing, signed channel sums without."""
        images, target = check_inputs(self.adapter, images, target)
        with self.adapter.attribution():
            device = self.adapter.device
            source = images.to(device, torch.float32).clone()
            target = target.to(device)
            cap = self.batch_size or auto_batch_size(source)
            out = torch.empty_like(source)
            with seeded_global_rng(self.seed, device), warnings.catch_warnings():
                # Captum sets requires_grad on the inputs it is given (our copies) and says so.
                warnings.filterwarnings("ignore", "Input Tensor .* did not already require")
                for chunk in chunks(source.shape[0], cap):
                    options = self._cap_options(cap, chunk.stop - chunk.start)
                    attributions = self.method.attribute(
                        source[chunk], target=target[chunk], **options, **self.attribute_kwargs
                    )
                    out[chunk] = attributions.detach()
            finish = postprocess_maps if self.postprocess else channel_sum
            return finish(out).to(images.device)

    __call__ = attribute

    @property
    def passes_per_image(self) -> tuple[int, int] | None:
        """Model passes per explained image, ``(with gradients, without)``, from the Captum
        class and its arguments (``n_steps``, ``nt_samples``, …); None for a class without a
        declaration in ``CAPTUM_PASSES`` (docs/callback.md, "What it costs")."""
        method, factor = self.method, 1
        argument = WRAPPER_PASSES.get(type(method).__name__)
        if argument is not None:
            factor = self._argument(method, argument)
            method = method.attribution_method
        declared = CAPTUM_PASSES.get(type(method).__name__)
        if declared is None:
            return None
        grad, no_grad = declared
        if isinstance(grad, str):
            grad = self._argument(method, grad)
        return factor * grad, factor * no_grad

    def _argument(self, method: Any, name: str) -> int:
        """The value of ``attribute``'s argument ``name`` in this method's calls."""
        if name in self.attribute_kwargs:
            return int(self.attribute_kwargs[name])
        return int(inspect.signature(method.attribute).parameters[name].default)

    def _cap_options(self, cap: int, items: int) -> dict[str, int]:
        """Captum's own batching arguments that keep each pass of ``items`` images under
        ``cap``: noise samples per pass for a noise tunnel, steps per pass for methods with
        ``internal_batch_size`` (the noise tunnel's inner method included)."""
        options = {}
        method = self.method
        if type(method).__name__ in WRAPPERS:
            options["nt_samples_batch_size"] = max(1, cap // items)
            method = method.attribution_method
        if "internal_batch_size" in inspect.signature(method.attribute).parameters:
            options["internal_batch_size"] = cap
        return options


def captum_factory(name: str) -> Any:
    """The method factory (``factory(adapter, batch_size)``) of ``captum:<Class>`` or
    ``captum:NoiseTunnel(<Class>)``; the name is checked now, so a bad one fails early."""
    parse_name(name)
    return lambda model, batch_size: CaptumMethod(model, name, batch_size=batch_size)
