"""effective_mode(): exact forward, effective gradients, every ViT family, no state left behind."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import MODEL_ZOO, randomize, timm_vit, torchvision_vit, zero_affine_offsets
from torch import nn

from dave_lightning import effective_mode


def _input_grad(fn, x: torch.Tensor, effective: bool) -> torch.Tensor:
    x = x.clone().requires_grad_()
    if effective:
        with effective_mode():
            out = fn(x)
    else:
        out = fn(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return grad


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_forward_inside_effective_mode_equals_normal_forward(name: str) -> None:
    model = MODEL_ZOO[name]().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    source = x.clone().requires_grad_()
    with effective_mode():
        actual = model(source)
    if name == "torchvision_vit":  # its no-grad forward takes MultiheadAttention's fast kernel
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(actual.detach(), expected)  # the same kernels, bit for bit
    assert actual.requires_grad


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm_vit(img_size=(32, 48)),
        lambda: timm_vit(img_size=(32, 48), fused_attn=False),
        lambda: torchvision_vit(),
        MODEL_ZOO["deit3_layerscale"],
        MODEL_ZOO["dinov2_registers"],
        MODEL_ZOO["beit_relative_position"],
        MODEL_ZOO["swin"],
        MODEL_ZOO["deit_distilled"],
    ],
    ids=[
        "timm_vit_nonsquare",
        "timm_vit_explicit_softmax",
        "torchvision_vit",
        "deit3",
        "dinov2_registers",
        "beit",
        "swin",
        "deit_distilled",
    ],
)
def test_dynamic_linear_completeness_without_offsets(build) -> None:
    """With biases, positional embeddings and tokens zeroed: logit = Σ x ⊙ effective gradient."""
    model = zero_affine_offsets(randomize(build())).eval()
    height = 48 if "timm" in type(model).__module__ and model.patch_embed.img_size[1] == 48 else 32
    x = torch.randn(3, 3, 32, height)
    source = x.clone().requires_grad_()
    with effective_mode():
        logits = model(source)
    (grad,) = torch.autograd.grad(logits[:, 2].sum(), source)
    reconstructed = (grad * x).flatten(1).sum(1)
    torch.testing.assert_close(reconstructed, logits[:, 2].detach(), rtol=1e-4, atol=1e-5)
    assert logits[:, 2].abs().max() > 0.1  # the property is not vacuous


def test_plain_gradient_is_not_complete_and_differs_from_effective() -> None:
    model = zero_affine_offsets(timm_vit()).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = _input_grad(lambda t: model(t)[:, 1], x, effective=False)
    effective = _input_grad(lambda t: model(t)[:, 1], x, effective=True)
    logit = model(x)[:, 1].detach()
    assert (plain - effective).abs().max() > 1e-3
    assert not torch.allclose((plain * x).flatten(1).sum(1), logit, rtol=1e-2)


def test_torchvision_multihead_attention_reaches_value_path_only() -> None:
    """nn.MultiheadAttention (fast path in eval) is covered: Q and K get no gradient."""
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    grad = _input_grad(lambda t: mha(t, t, t, need_weights=False)[0], x, effective=True)
    with torch.no_grad():
        weights = mha(x, x, x, need_weights=True, average_attn_weights=False)[1]
    w_v = mha.in_proj_weight[16:]
    w_o = mha.out_proj.weight
    # out = A · (x W_vᵀ) W_oᵀ per head → d Σout / dx = Σ_heads Aᵀ 1 ⊗ (1ᵀ W_o[:, head] W_v[head])
    expected = torch.zeros_like(x)
    for head in range(2):
        rows = slice(4 * head, 4 * head + 4)
        column = w_o[:, rows].sum(0) @ w_v[rows]
        expected += weights[:, head].sum(1).unsqueeze(-1) * column
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_transformer_encoder_layer_fast_path_is_covered() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True, bias=False)
    model = nn.Sequential(layer).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        expected = model(x)
    source = x.clone().requires_grad_()
    with effective_mode():
        out = model(source)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), source)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize(
    "softmax",
    [
        lambda s: s.softmax(-1),
        lambda s: torch.softmax(s, -1),
        lambda s: F.softmax(s, dim=-1),
        lambda s: torch.special.softmax(s, -1),
        lambda s: nn.Softmax(dim=-1)(s),
    ],
    ids=["method", "torch", "functional", "special", "module"],
)
def test_every_softmax_spelling_is_held_constant(softmax) -> None:
    scores = torch.randn(3, 4, requires_grad=True)
    with effective_mode():
        probabilities = softmax(scores)
    assert not probabilities.requires_grad
    torch.testing.assert_close(probabilities, torch.softmax(scores, -1).detach())
    assert softmax(scores).requires_grad


def _bool_mask() -> torch.Tensor:
    mask = torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True  # every query attends to at least one key
    return mask


@pytest.mark.parametrize(
    ("options", "scores_change"),
    [
        ({}, lambda s: s),
        ({"scale": 0.3}, lambda s: s * 0.3 * 8**0.5),
        ({"is_causal": True}, lambda s: s.masked_fill(~torch.ones(4, 5).bool().tril(), -torch.inf)),
        ({"attn_mask": _bool_mask()}, lambda s: s.masked_fill(~_bool_mask(), -torch.inf)),
        (
            {"attn_mask": torch.linspace(-1, 1, 20).view(4, 5)},
            lambda s: s + torch.linspace(-1, 1, 20).view(4, 5),
        ),
    ],
    ids=["plain", "scale", "causal", "bool_mask", "float_mask"],
)
def test_fused_attention_detaches_query_and_key_only(options, scores_change) -> None:
    q = torch.randn(2, 3, 4, 8, requires_grad=True)
    k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(2))
    upstream = torch.randn(2, 3, 4, 8)
    with effective_mode():
        out = F.scaled_dot_product_attention(q, k, v, **options)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **options))
    grads = torch.autograd.grad(out, (q, k, v), upstream, allow_unused=True)
    assert grads[0] is None and grads[1] is None
    scores = scores_change(q.detach() @ k.detach().transpose(-1, -2) / 8**0.5)
    attention = torch.softmax(scores, -1)
    torch.testing.assert_close(grads[2], attention.transpose(-1, -2) @ upstream)


def test_layer_norm_detaches_only_the_inverse_std() -> None:
    x = torch.randn(4, 6, dtype=torch.float64)
    weight = torch.randn(6, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    upstream = torch.randn(4, 6, dtype=torch.float64)
    source = x.clone().requires_grad_()
    with effective_mode():
        out = F.layer_norm(source, (6,), weight, bias, 1e-5)
    (grad,) = torch.autograd.grad(out, source, upstream)
    rstd = 1 / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    g = upstream * weight
    torch.testing.assert_close(grad, (g - g.mean(-1, keepdim=True)) * rstd)
    torch.testing.assert_close(out, F.layer_norm(x, (6,), weight, bias, 1e-5))


def test_layer_norm_parameter_gradients_stay_exact() -> None:
    x = torch.randn(4, 6, dtype=torch.float64)
    norm = nn.LayerNorm(6, dtype=torch.float64)
    with effective_mode():
        out = norm(x)
    effective = torch.autograd.grad(out.pow(2).sum(), (norm.weight, norm.bias))
    plain = torch.autograd.grad(norm(x).pow(2).sum(), (norm.weight, norm.bias))
    for a, b in zip(effective, plain, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "act",
    [F.gelu, lambda t: F.gelu(t, approximate="tanh"), F.silu, F.mish, F.hardswish, nn.GELU()],
    ids=["gelu", "gelu_tanh", "silu", "mish", "hardswish", "module"],
)
def test_gated_activations_use_the_detached_gate(act) -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.7], dtype=torch.float64)
    grad = _input_grad(act, x, effective=True)
    nonzero = x != 0
    torch.testing.assert_close(grad[nonzero], act(x[nonzero]) / x[nonzero])
    # at x = 0 the gate is its limit act(ε)/ε (0.5 for GELU and SiLU), not 0/0
    tiny = torch.tensor([1e-9], dtype=torch.float64)
    torch.testing.assert_close(grad[~nonzero], act(tiny) / tiny)


def test_rms_norm_and_normalize_detach_the_norm() -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    weight = torch.randn(5, dtype=torch.float64)
    rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    grad = _input_grad(lambda t: F.rms_norm(t, (5,), weight, 1e-6), x, effective=True)
    torch.testing.assert_close(grad, (rms * weight).expand_as(x))
    grad = _input_grad(lambda t: F.normalize(t, dim=-1), x, effective=True)
    torch.testing.assert_close(grad, (1 / x.norm(dim=-1, keepdim=True)).expand_as(x))


def test_nesting_is_idempotent_and_exit_restores_plain_autograd() -> None:
    model = timm_vit().eval()
    x = torch.randn(2, 3, 32, 32)

    def logit(t: torch.Tensor) -> torch.Tensor:
        return model(t)[:, 0]

    once = _input_grad(logit, x, effective=True)

    def nested(t: torch.Tensor) -> torch.Tensor:
        with effective_mode():
            return logit(t)

    torch.testing.assert_close(_input_grad(nested, x, effective=True), once)
    plain = _input_grad(logit, x, effective=False)
    with pytest.raises(RuntimeError, match="boom"), effective_mode():
        raise RuntimeError("boom")
    torch.testing.assert_close(_input_grad(logit, x, effective=False), plain)
    assert not torch.allclose(plain, once)
