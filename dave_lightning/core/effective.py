"""Effective mode: autograd through a ViT yields its effective transformation (docs/method.md).

Every ViT layer is F(X) = L(X)·X + B with an input-dependent operator L(X). Inside
:func:`effective_mode`, the functional operations that build L(X) — attention matrices,
normalisation factors, activation gates — are held constant for autograd while the forward
values stay exact. The operations are intercepted with a ``TorchFunctionMode``, so any model
that calls them (timm, torchvision, hand-written) is covered without patching its classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _GatedActivation(torch.autograd.Function):
    """y = act(x) exactly; backward multiplies by the detached gate g, where act(x) = x·g(x)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        act: Callable[[torch.Tensor], torch.Tensor],
        gate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> Any:
        y = act(x)
        ctx.save_for_backward(gate(x, y))
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (gate,) = ctx.saved_tensors
        return grad * gate, None, None


class _EffectiveLayerNorm(torch.autograd.Function):
    """Exact ``layer_norm`` forward; backward keeps the mean-centring and detaches 1/std."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        normalized_shape: Sequence[int],
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> Any:
        out, mean, rstd = torch.native_layer_norm(x, list(normalized_shape), weight, bias, eps)
        ctx.dims = tuple(range(-len(normalized_shape), 0))
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        x_hat = (x - mean) * rstd if ctx.needs_input_grad[2] else None
        ctx.save_for_backward(rstd, weight, x_hat)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        rstd, weight, x_hat = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            g = grad * weight if ctx.has_weight else grad
            grad_x = (g - g.mean(ctx.dims, keepdim=True)) * rstd
        batch_dims = tuple(range(grad.dim() - len(ctx.dims)))
        if ctx.has_weight and ctx.needs_input_grad[2]:
            grad_weight = (grad * x_hat).sum(batch_dims)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad.sum(batch_dims)
        return grad_x, None, grad_weight, grad_bias, None


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _ratio_gate(limit: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Gate y/x, and the activation's limit at 0 where x = 0 (one division, one in-place fix)."""

    def gate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num_(y / x, nan=limit)

    return gate


def _input_gate(
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Gate given by one elementwise kernel of x (sigmoid for SiLU, hardsigmoid for Hardswish)."""

    def gate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(x)

    return gate


def _kwarg(args: tuple, kwargs: dict, position: int, name: str, default: Any) -> Any:
    """Read an argument that may be passed positionally or by keyword."""
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def _gelu(args: tuple, kwargs: dict) -> torch.Tensor:
    tanh = _kwarg(args, kwargs, 1, "approximate", "none") == "tanh"
    return _GatedActivation.apply(args[0], _gelu_tanh if tanh else F.gelu, _ratio_gate(0.5))


def _gated(
    act: Callable[[torch.Tensor], torch.Tensor],
    gate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[tuple, dict], torch.Tensor]:
    """Handler for an x·gate(x) activation whose extra arguments (``inplace``) do not matter."""

    def handle(args: tuple, kwargs: dict) -> torch.Tensor:
        return _GatedActivation.apply(args[0], act, gate)

    return handle


def _layer_norm(args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0]
    shape = _kwarg(args, kwargs, 1, "normalized_shape", None)
    weight = _kwarg(args, kwargs, 2, "weight", None)
    bias = _kwarg(args, kwargs, 3, "bias", None)
    eps = _kwarg(args, kwargs, 4, "eps", 1e-5)
    return _EffectiveLayerNorm.apply(x, tuple(shape), weight, bias, eps)


def _rms_norm(args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0]
    shape = _kwarg(args, kwargs, 1, "normalized_shape", None)
    weight = _kwarg(args, kwargs, 2, "weight", None)
    eps = _kwarg(args, kwargs, 3, "eps", None)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    dims = tuple(range(-len(shape), 0))
    with torch.no_grad():
        rstd = torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    out = x * rstd
    return out * weight if weight is not None else out


def _normalize(args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0]
    p = _kwarg(args, kwargs, 1, "p", 2.0)
    dim = _kwarg(args, kwargs, 2, "dim", 1)
    eps = _kwarg(args, kwargs, 3, "eps", 1e-12)
    with torch.no_grad():
        denom = x.norm(p, dim, keepdim=True).clamp_min(eps).expand_as(x)
    return x / denom


def _detached_output(func: Callable) -> Callable[[tuple, dict], torch.Tensor]:
    """Handler for operators whose output is an input-dependent operator (softmax, rsqrt)."""

    def handle(args: tuple, kwargs: dict) -> torch.Tensor:
        return func(*args, **kwargs).detach()

    return handle


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _scaled_dot_product_attention(args: tuple, kwargs: dict) -> torch.Tensor:
    """Fused attention with Q, K (and any float mask) detached: gradient flows through V only."""
    q, k, v, *rest = args
    kwargs = {name: _detach(value) for name, value in kwargs.items()}
    return F.scaled_dot_product_attention(
        q.detach(), k.detach(), v, *(_detach(value) for value in rest), **kwargs
    )


def _multi_head_attention(args: tuple, kwargs: dict) -> Any:
    """``nn.MultiheadAttention``: detached query and key inputs leave the value path only.

    Passing distinct query/key/value tensors makes the function project them separately; the
    attention matrix is built from detached tensors, so autograd sees A·V with A constant.
    """
    query, key, value, *rest = args
    return F.multi_head_attention_forward(query.detach(), key.detach(), value, *rest, **kwargs)


def _handlers() -> dict[Callable, Callable[[tuple, dict], Any]]:
    table: dict[Callable, Callable[[tuple, dict], Any]] = {
        F.scaled_dot_product_attention: _scaled_dot_product_attention,
        F.multi_head_attention_forward: _multi_head_attention,
        F.softmax: _detached_output(F.softmax),
        torch.softmax: _detached_output(torch.softmax),
        torch.Tensor.softmax: _detached_output(torch.Tensor.softmax),
        torch.special.softmax: _detached_output(torch.special.softmax),
        torch.rsqrt: _detached_output(torch.rsqrt),
        torch.Tensor.rsqrt: _detached_output(torch.Tensor.rsqrt),
        F.layer_norm: _layer_norm,
        torch.layer_norm: _layer_norm,
        F.normalize: _normalize,
        F.gelu: _gelu,
        F.silu: _gated(F.silu, _input_gate(torch.sigmoid)),
        F.mish: _gated(F.mish, _ratio_gate(math.tanh(math.log(2.0)))),
        F.hardswish: _gated(F.hardswish, _input_gate(F.hardsigmoid)),
    }
    if hasattr(F, "rms_norm"):
        table[F.rms_norm] = _rms_norm
        table[torch.rms_norm] = _rms_norm
    return table


_HANDLERS = _handlers()


class EffectiveMode(TorchFunctionMode):
    """Routes the intercepted functionals to their effective versions; all else passes through."""

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        handler = _HANDLERS.get(func)
        kwargs = kwargs or {}
        if handler is None or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        return handler(args, kwargs)


_DEPTH: ContextVar[int] = ContextVar("effective_mode_depth", default=0)


@contextmanager
def effective_mode() -> Iterator[None]:
    """Context manager: gradients taken inside it are DAVE's effective transformation.

    Forward values are those of the normal forward; only what autograd sees changes. Nesting is
    allowed, and leaving the block (normally or by an exception) removes every trace of it.
    """
    token = _DEPTH.set(_DEPTH.get() + 1)
    try:
        with EffectiveMode():
            yield
    finally:
        _DEPTH.reset(token)


def in_effective_mode() -> bool:
    """Whether the caller runs inside :func:`effective_mode`."""
    return _DEPTH.get() > 0


class _HeldGate(torch.autograd.Function):
    """Returns ``y`` as is; backward multiplies by the gate y/x held constant (``limit`` at 0)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, limit: float) -> Any:
        ctx.save_for_backward(torch.nan_to_num(y / x, nan=limit, posinf=limit, neginf=limit))
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (gate,) = ctx.saved_tensors
        return grad * gate, None, None


def held_gate(x: torch.Tensor, y: torch.Tensor, limit: float) -> torch.Tensor:
    """``y = act(x)`` for an x·gate(x) activation written out of plain ops (tanh, sigmoid, erf),
    with the gate held constant: the effective mode's rule for activations it cannot intercept.
    Call it on a module's output inside :func:`effective_mode` (e.g. from a forward hook)."""
    return _HeldGate.apply(x, y.detach(), limit)
