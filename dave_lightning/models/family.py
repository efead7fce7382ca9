"""Model families: what can be read off one kind of model, and what it needs during attribution.

A family recognises its models (``owns``) and answers the adapter's questions about them; it
answers ``None`` where it does not know, and the adapter falls back to :class:`GenericFamily`.
docs/architecture.md, "Support a new ViT family", shows how to add one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

Normalization = tuple[tuple[float, ...], tuple[float, ...]]


class ModelFamily:
    """Facts about one kind of model. Subclasses override what their models can tell."""

    name = "generic"

    def owns(self, module: nn.Module) -> bool:
        """Whether ``module`` is the root of a model of this family."""
        return False

    def input_channels(self, root: nn.Module) -> int | None:
        """Channels of the model's input tensor."""
        return None

    def patch_size(self, root: nn.Module) -> int | None:
        """Stride in pixels of the token grid (the patch one token sees)."""
        return None

    def input_size(self, root: nn.Module) -> tuple[int, int] | None:
        """(H, W) the model was built for."""
        return None

    def normalization(self, root: nn.Module) -> Normalization | None:
        """(mean, std) per channel that the model's inputs are normalised with."""
        return None

    def noise_alpha(self, root: nn.Module) -> float | None:
        """The paper's reference ``noise_alpha`` for this model, when it has one."""
        return None

    def input_encoding(self, root: nn.Module) -> str | None:
        """Name of the input encoding the model expects (see ``models.encoding``)."""
        return None

    def reads_class_token(self, root: nn.Module) -> bool | None:
        """Whether the classifier reads a class token, the first token (attention rollout
        explains that token's row)."""
        return None

    def blocks(self, root: nn.Module) -> list[nn.Module] | None:
        """The transformer blocks from input to output (the sanity check re-initialises them
        from the top down)."""
        return None

    def head(self, root: nn.Module) -> nn.Module | None:
        """The classification head (the first module the sanity check re-initialises)."""
        return None

    def eval_transform(
        self, root: nn.Module, size: tuple[int, int], normalization: Normalization
    ) -> Callable[[Any], Any] | None:
        """The family's own PIL image → input transform for evaluation at ``size`` (None: a
        plain resize and normalisation)."""
        return None

    @contextmanager
    def attribution_context(self, root: nn.Module) -> Iterator[None]:
        """What the model needs during attribution (an explanation mode, an attention path)."""
        yield


def first_conv(module: nn.Module) -> nn.Conv2d | None:
    """The first 2-D convolution, which in a ViT is the patch embedding."""
    return next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)


class GenericFamily(ModelFamily):
    """Any ``nn.Module``: channels and token stride from the first convolution."""

    def input_channels(self, root: nn.Module) -> int | None:
        conv = first_conv(root)
        return None if conv is None else conv.in_channels

    def patch_size(self, root: nn.Module) -> int | None:
        conv = first_conv(root)
        return None if conv is None else int(conv.stride[0])


def size_pair(size: object) -> tuple[int, int] | None:
    """(H, W) from an int or a pair, else None."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def floats(values: object) -> tuple[float, ...] | None:
    """A tuple of floats from a sequence of numbers, else None."""
    if isinstance(values, (tuple, list)) and values:
        return tuple(float(v) for v in values)
    return None
