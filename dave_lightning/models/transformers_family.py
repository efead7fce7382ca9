"""HuggingFace transformers image classifiers: config facts, attention paths, activations.

``*ForImageClassification`` models (ViT, DeiT, BEiT, Swin, DINOv2, …) return an output whose
``.logits`` the adapter reads. During attribution the family makes sure the effective mode sees
what it must hold constant: attention implementations that bypass PyTorch's functionals (flash,
flex) are switched to sdpa and restored afterwards, and activations written out of plain ops
(``gelu_new``, ``quick_gelu``, …) get their gate held constant by a hook; any activation the
family cannot cover is named in a warning. ``transformers`` is imported only for such models.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch.nn.functional as F
from torch import nn

from dave_lightning.core.effective import held_gate, in_effective_mode
from dave_lightning.models.adapter import requested_normalization
from dave_lightning.models.family import ModelFamily, Normalization, size_pair
from dave_lightning.models.timm_family import reference_noise_alpha

#: Attention implementations whose softmax or sdpa call the effective mode intercepts.
INTERCEPTED_ATTENTION = ("eager", "sdpa", "paged|eager")


def _activation_rules() -> tuple[tuple[type, ...], dict[type, float]]:
    """Activation classes the effective mode covers as they are, and those needing a held gate
    (class → the gate's value at 0)."""
    from transformers import activations as A

    def classes(*names: str) -> tuple[type, ...]:  # the names differ across transformers versions
        return tuple(getattr(A, name) for name in names if hasattr(A, name))

    covered = (
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Hardswish,
        nn.ReLU,
        nn.LeakyReLU,
        nn.PReLU,
        nn.Identity,
        *classes("SiLUActivation", "LinearActivation", "PytorchGELUTanh"),
    )
    held = dict.fromkeys(
        classes(
            "NewGELUActivation", "FastGELUActivation", "AccurateGELUActivation",
            "QuickGELUActivation",
        ),
        0.5,
    )  # fmt: skip
    held[nn.Tanh] = 1.0
    return covered, held


def _gate_limit(module: nn.Module) -> float | None:
    """0 for modules the effective mode covers, the gate's limit for held-gate ones, else None.

    ``GELUActivation``, ``GELUTanh`` and ``MishActivation`` are covered when they call the
    PyTorch functional, and need a held gate in their pure-Python variants.
    """
    from transformers import activations as A

    covered, held = _activation_rules()
    if isinstance(module, A.GELUActivation):
        return 0.0 if module.act is F.gelu else 0.5
    if isinstance(module, getattr(A, "GELUTanh", ())):
        return 0.0 if isinstance(module.act, functools.partial) else 0.5
    if isinstance(module, A.MishActivation):
        return 0.0 if module.act is F.mish else None
    if isinstance(module, covered):
        return 0.0
    return next((limit for kind, limit in held.items() if isinstance(module, kind)), None)


def _activation_modules(root: nn.Module) -> list[nn.Module]:
    """The activation modules of a transformers model (instances of ``ACT2CLS`` classes)."""
    from transformers.activations import ACT2CLS

    kinds = tuple({kind[0] if isinstance(kind, tuple) else kind for kind in ACT2CLS.values()})
    return [m for m in root.modules() if isinstance(m, (*kinds, nn.Tanh))]


def _configs(root: nn.Module) -> list[Any]:
    """The configs of every transformers model inside ``root``, sub-configs included."""
    from transformers import PreTrainedModel

    seen: dict[int, Any] = {}
    stack = [m.config for m in root.modules() if isinstance(m, PreTrainedModel)]
    while stack:
        config = stack.pop()
        if id(config) in seen:
            continue
        seen[id(config)] = config
        for key in getattr(config, "sub_configs", {}):
            if getattr(config, key, None) is not None:
                stack.append(getattr(config, key))
    return list(seen.values())


class TransformersFamily(ModelFamily):
    """``transformers.PreTrainedModel`` image classifiers (main input ``pixel_values``)."""

    name = "transformers"

    def owns(self, module: nn.Module) -> bool:
        if not type(module).__module__.startswith("transformers."):
            return False
        from transformers import PreTrainedModel

        return (
            isinstance(module, PreTrainedModel)
            and module.main_input_name == "pixel_values"
            and "TimmWrapper" not in type(module).__name__
        )

    def _config(self, root: nn.Module) -> Any:
        return getattr(root.config, "vision_config", root.config)

    def input_channels(self, root: nn.Module) -> int | None:
        return getattr(self._config(root), "num_channels", None)

    def patch_size(self, root: nn.Module) -> int | None:
        config = self._config(root)
        size = size_pair(getattr(config, "patch_stride", getattr(config, "patch_size", None)))
        return None if size is None else size[0]

    def input_size(self, root: nn.Module) -> tuple[int, int] | None:
        return size_pair(getattr(self._config(root), "image_size", None))

    def normalization(self, root: nn.Module) -> Normalization | None:
        """From the model's image processor, where ``from_pretrained`` left one on disk: its
        local directory or the HuggingFace cache (nothing is downloaded)."""
        source = str(getattr(root, "name_or_path", "") or "")
        if not source:
            return None
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
            return requested_normalization(None, None, processor)
        except Exception:  # no processor saved with the model: the adapter's fallback applies
            return None

    def noise_alpha(self, root: nn.Module) -> float | None:
        """The reference table by checkpoint name (``facebook/deit-small-patch16-224``)."""
        name = str(getattr(root, "name_or_path", "") or "").rstrip("/").split("/")[-1]
        return reference_noise_alpha(re.sub(r"[^a-z0-9]+", "_", name.lower())) if name else None

    def reads_class_token(self, root: nn.Module) -> bool | None:
        """A ``cls_token`` in the embeddings, and no mean pooling (BEiT's default)."""
        if getattr(self._config(root), "use_mean_pooling", False):
            return False
        embeddings = getattr(root.base_model, "embeddings", None)
        return getattr(embeddings, "cls_token", None) is not None

    def blocks(self, root: nn.Module) -> list[nn.Module] | None:
        """The base model's layers (``layers``, or ``encoder.layer``/``encoder.layers``)."""
        base = root.base_model
        encoder = getattr(base, "encoder", None)
        for found in (
            getattr(base, "layers", None),
            getattr(encoder, "layer", None),
            getattr(encoder, "layers", None),
        ):
            if isinstance(found, nn.ModuleList):
                return list(found)
        return None

    def head(self, root: nn.Module) -> nn.Module | None:
        head = getattr(root, "classifier", None)
        return head if isinstance(head, nn.Module) else None

    @contextmanager
    def attribution_context(self, root: nn.Module) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(_interceptable_attention(root))
            stack.enter_context(_held_activation_gates(root))
            yield


@contextmanager
def _interceptable_attention(root: nn.Module) -> Iterator[None]:
    """Attention through sdpa (eager where a model has no sdpa) while inside; restored after.

    The private field is written directly: ``set_attn_implementation`` would try to load the
    kernels of the implementation it replaces.
    """
    from transformers import PreTrainedModel

    saved = [(config, config._attn_implementation_internal) for config in _configs(root)]
    sdpa = all(m._supports_sdpa for m in root.modules() if isinstance(m, PreTrainedModel))
    try:
        for config, implementation in saved:
            if implementation is not None and implementation not in INTERCEPTED_ATTENTION:
                config._attn_implementation_internal = "sdpa" if sdpa else "eager"
        yield
    finally:
        for config, implementation in saved:
            config._attn_implementation_internal = implementation


@contextmanager
def _held_activation_gates(root: nn.Module) -> Iterator[None]:
    """Forward hooks holding the gate of plain-op activations constant in effective mode."""
    hooks, uncovered = [], set()
    for module in _activation_modules(root):
        limit = _gate_limit(module)
        if limit is None:
            uncovered.add(type(module).__name__)
        elif limit:
            hooks.append(module.register_forward_hook(_gate_hook(limit)))
    if uncovered:
        warnings.warn(
            f"the effective mode does not cover the activation(s) {sorted(uncovered)}: they "
            "are not of the form x·gate(x), so their operator variation stays in the "
            "gradients and the maps are not DAVE's; use a model with GELU, SiLU or ReLU",
            stacklevel=4,
        )
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _gate_hook(limit: float) -> Any:
    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        if in_effective_mode():
            return held_gate(inputs[0], output, limit)
        return output

    return hook
