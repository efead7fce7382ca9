"""Attention rollout and gradient-weighted attention rollout: the ViT-native baselines.

Attention rollout (Abnar & Zuidema, 2020) multiplies the blocks' head-averaged attention, each
with the identity added for the residual path and rows renormalised; gradient-weighted rollout
(Chefer et al., 2021, "Generic attention-model explainability") accumulates R ← R + Ā·R with
Ā = E_h[(∇A ⊙ A)⁺], ∇A the gradient of the target logit. Both read the class token's row over
the patch tokens, upsample it bilinearly from the token grid and scale it to [0, 1]
(docs/methods.md).

The attention matrices are captured with a ``TorchFunctionMode``, as the effective mode does
(``attribution/effective.py``): explicit softmaxes over attention scores are recorded, and
``scaled_dot_product_attention`` and ``nn.MultiheadAttention``'s functional are computed with
explicit weights (same output), so timm, torchvision, HuggingFace and hand-written ViTs are
covered, with eager or sdpa attention, without patching their classes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from dave_lightning.attribution.gradients import (
    auto_batch_size,
    check_inputs,
    chunks,
    select_logits,
)
from dave_lightning.attribution.postprocess import normalize_max
from dave_lightning.models import ModelAdapter

_SOFTMAX = (F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax)
_MULTI_HEAD = inspect.signature(F.multi_head_attention_forward)


class Captured(NamedTuple):
    """One attention matrix: the tensor autograd sees, and its (B, heads, T, T) shape."""

    tensor: torch.Tensor
    shape: torch.Size

    def weights(self) -> torch.Tensor:
        return self.tensor.reshape(self.shape)


class AttentionCapture(TorchFunctionMode):
    """Records every self-attention matrix (B, heads, T, T) the model computes, in call order.

    Outputs are those of the model's own attention (up to float rounding where a fused kernel
    is replaced by explicit weights); the recorded weights carry gradients when the input does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.captured: list[Captured] = []

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._scaled_dot_product(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            return self._multi_head(args, kwargs)
        result = func(*args, **kwargs)
        if func in _SOFTMAX and _softmax_dim(args, kwargs) in (-1, 3):
            self._record(result, result.shape)
        return result

    def _record(self, tensor: torch.Tensor, shape: torch.Size) -> None:
        if len(shape) == 4 and shape[-1] == shape[-2]:
            self.captured.append(Captured(tensor, shape))

    def _scaled_dot_product(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        """``F.scaled_dot_product_attention`` with the softmax weights made explicit."""
        if dropout_p:
            raise ValueError(
                f"attention dropout is on (dropout_p={dropout_p}); rollout reads eval-mode "
                "attention: run the model in eval mode"
            )
        if enable_gqa:
            repeats = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(repeats, -3)
            value = value.repeat_interleave(repeats, -3)
        scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
        scores = query @ key.transpose(-2, -1) * scale
        if is_causal:
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, -math.inf)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, -math.inf)
            else:
                scores = scores + attn_mask
        weights = scores.softmax(-1)
        self._record(weights, weights.shape)
        return weights @ value

    def _multi_head(self, args: tuple, kwargs: dict) -> Any:
        """``F.multi_head_attention_forward`` asked for per-head weights, which are a view of
        the matrix its output is computed from: that matrix is recorded."""
        call = _MULTI_HEAD.bind(*args, **kwargs)
        call.apply_defaults()
        wanted, averaged = call.arguments["need_weights"], call.arguments["average_attn_weights"]
        call.arguments.update(need_weights=True, average_attn_weights=False)
        output, weights = F.multi_head_attention_forward(**call.arguments)
        self._record(weights if weights._base is None else weights._base, weights.shape)
        if not wanted:
            return output, None
        return output, weights.mean(-3) if averaged else weights


def _softmax_dim(args: tuple, kwargs: dict) -> Any:
    return args[1] if len(args) > 1 else kwargs.get("dim")


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (B, T, T) of per-block attention (B, heads, T, T), first block first:
    heads averaged, the identity added, rows renormalised, multiplied from the input up."""
    result = None
    for attention in attentions:
        identity = torch.eye(attention.shape[-1], device=attention.device, dtype=attention.dtype)
        mixed = attention.mean(1) + identity
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ValueError("rollout needs the attention of at least one block")
    return result


def gradient_rollout(
    attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Gradient-weighted rollout (B, T, T): R = I, then per block R ← R + Ā·R with
    Ā = mean over heads of the positive part of ∇A ⊙ A."""
    if not attentions or len(attentions) != len(gradients):
        raise ValueError("give one gradient per attention matrix, for at least one block")
    first = attentions[0]
    batch, tokens = first.shape[0], first.shape[-1]
    identity = torch.eye(tokens, device=first.device, dtype=first.dtype)
    result = identity.expand(batch, tokens, tokens)
    for attention, gradient in zip(attentions, gradients, strict=True):
        weight = (gradient * attention).clamp_min(0).mean(1)
        result = result + weight @ result
    return result


class AttentionRollout:
    """Attention rollout maps (B, 1, H, W) in [0, 1]: one forward pass per image, no target.

    The class token is the first token, register or distillation tokens follow it, then the
    patch grid (row-major); the grid comes from the model's patch size. Models whose classifier
    reads no class token (average pooling) are refused.
    """

    gradient = False

    def __init__(self, model: nn.Module | ModelAdapter, *, batch_size: int | None = None) -> None:
        self.adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        self.batch_size = batch_size
        if self.adapter.family.reads_class_token(self.adapter.root) is False:
            raise ValueError(
                f"{type(self).__name__} explains the class token, and this model's classifier "
                "reads none (it pools the patch tokens, e.g. global_pool='avg'); use DAVE or "
                "a gradient method for it"
            )

    def attribute(self, images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Maps (B, 1, H, W) of ``images``; ``target`` is the class explained (gradient
        rollout) or only checked (attention rollout)."""
        images, target = check_inputs(self.adapter, images, target)
        grid = self._grid(images)
        with self.adapter.attribution():
            device = self.adapter.device
            source = images.to(device, torch.float32)
            target = target.to(device)
            size = self.batch_size or auto_batch_size(source)
            rows = torch.cat(
                [
                    self._class_rows(source[chunk], target[chunk], grid)
                    for chunk in chunks(len(source), size)
                ]
            )
        maps = F.interpolate(
            rows.view(-1, 1, *grid), size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return normalize_max(maps).to(images.device)

    __call__ = attribute

    @property
    def passes_per_image(self) -> tuple[int, int]:
        """One forward per image (with gradients, without): with a backward for gradient
        rollout, without gradients for attention rollout (docs/callback.md, "What it costs")."""
        return (1, 0) if self.gradient else (0, 1)

    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of the patch grid for these images."""
        patch = self.adapter.patch_size
        height, width = images.shape[-2:]
        if patch is None or height % patch or width % patch:
            raise ValueError(
                f"rollout needs the token grid: images of {height} × {width} pixels and the "
                f"model's patch size {patch} do not give one; pass images whose sides are "
                "multiples of the patch size"
            )
        return height // patch, width // patch

    def _class_rows(
        self, images: torch.Tensor, target: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """(B, rows · columns): the class token's rollout row over the patch tokens."""
        capture = AttentionCapture()
        if not self.gradient:
            with torch.no_grad(), capture:
                self.adapter(images)
            attentions = [c.weights() for c in _global_attention(capture.captured, grid)]
            result = rollout(attentions)
        else:
            source = images.clone().requires_grad_()
            with capture:
                logits = self.adapter(source)
            captured = _global_attention(capture.captured, grid)
            gradients = torch.autograd.grad(
                select_logits(logits, target).sum(),
                [c.tensor for c in captured],
                allow_unused=True,
            )
            attentions = [c.weights().detach() for c in captured]
            gradients = [
                torch.zeros_like(a) if g is None else g.reshape(a.shape)
                for a, g in zip(attentions, gradients, strict=True)
            ]
            result = gradient_rollout(attentions, gradients)
        prefix = result.shape[-1] - grid[0] * grid[1]
        return result[:, 0, prefix:]


class GradRollout(AttentionRollout):
    """Gradient-weighted attention rollout of the target class: one forward and one backward
    pass per image."""

    gradient = True


def _global_attention(captured: list[Captured], grid: tuple[int, int]) -> list[Captured]:
    """The blocks' attention over all tokens; errors when there is none or no class token."""
    patches = grid[0] * grid[1]
    tokens = sorted({c.shape[-1] for c in captured})
    if len(tokens) != 1 or tokens[0] < patches:
        found = f"over {tokens} tokens" if tokens else "none"
        raise ValueError(
            f"rollout needs every block's attention over the {grid[0]} × {grid[1]} patch "
            f"tokens and a class token, and the model computed {found}; windowed or pooled "
            "attention (Swin) has no rollout"
        )
    if tokens[0] == patches:
        raise ValueError(
            "rollout explains the class token, and this model has none (its attention covers "
            "the patch tokens only); use DAVE or a gradient method for it"
        )
    return captured
