"""B-cos models (the ``bcos`` package): explanation mode, ``[x, 1 − x]`` inputs, patch grid.

B-cos layers scale their output by an input-dependent factor; their explanation mode holds it
constant, which is what makes ``input × gradient`` their exact dynamic-linear contribution. The
family switches every B-cos module into explanation mode whenever it runs inside the effective
mode (and out of it for plain gradients), and restores each module's own state afterwards (the
package's ``model.explanation_mode()`` leaves it off on exit instead).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from dave_lightning.core.effective import in_effective_mode
from dave_lightning.models.family import ModelFamily, Normalization, first_conv


def _explainable(module: nn.Module) -> bool:
    return callable(getattr(module, "set_explanation_mode", None))


class BcosFamily(ModelFamily):
    """Models with B-cos layers (``set_explanation_mode``) or B-cos's ``explanation_mode()``."""

    name = "bcos"

    def owns(self, module: nn.Module) -> bool:
        if callable(getattr(module, "explanation_mode", None)):
            return True
        return any(_explainable(m) for m in module.modules())

    def _patch(self, root: nn.Module) -> tuple[nn.Module, tuple[int, int]] | None:
        """The simple ViT (its patch embedding: an optional conv stem, then a patch rearrange)
        and its rearranged patch (height, width)."""
        vit = next((m for m in root.modules() if hasattr(m, "to_patch_embedding")), None)
        if vit is None:
            return None
        rearrange = next(
            (m for m in vit.to_patch_embedding.modules() if "p1" in getattr(m, "axes_lengths", {})),
            None,
        )
        if rearrange is None:
            return None
        return vit, (rearrange.axes_lengths["p1"], rearrange.axes_lengths["p2"])

    def patch_size(self, root: nn.Module) -> int | None:
        """The rearranged patch times the conv stem's strides (B-cos ViT-C)."""
        found = self._patch(root)
        if found is None:
            return None
        vit, (height, _) = found
        stem = vit.to_patch_embedding.modules()
        return height * math.prod(m.stride[0] for m in stem if isinstance(m, nn.Conv2d))

    def input_channels(self, root: nn.Module) -> int | None:
        """The conv stem's input channels, else the patch dimension over the patch's pixels."""
        conv = first_conv(root)
        if conv is not None:
            return conv.in_channels
        found = self._patch(root)
        if found is None:
            return None
        vit, (height, width) = found
        return vit.patch_dim // (height * width)

    def normalization(self, root: nn.Module) -> Normalization | None:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # pictures in [0, 1], no normalisation

    def input_encoding(self, root: nn.Module) -> str | None:
        return "add_inverse"

    @contextmanager
    def attribution_context(self, root: nn.Module) -> Iterator[None]:
        """B-cos modules explain inside the effective mode; their own state restored on exit."""
        modules = [m for m in root.modules() if _explainable(m)]
        states = [(m, bool(getattr(m, "is_in_explanation_mode", False))) for m in modules]
        hooks = [m.register_forward_pre_hook(_follow_effective_mode) for m in modules]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            for module, state in states:
                module.set_explanation_mode(state)


def _follow_effective_mode(module: nn.Module, args: tuple) -> None:
    module.set_explanation_mode(in_effective_mode())
