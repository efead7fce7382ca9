"""Attention rollout and gradient-weighted rollout against hand computations, on every family."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from hf_models import hf_model
from timm.models.vision_transformer import VisionTransformer
from tiny_models import randomize, torchvision_vit
from torch import nn

from dave_lightning.attribution import METHODS, AttentionRollout, GradRollout
from dave_lightning.models import ModelAdapter, TimmFamily

HEADS, CLASSES = 2, 4


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def timm_model(fused: bool) -> nn.Module:
    """The brief's tiny timm ViT with unit-scale weights (peaked attention), eager or sdpa."""
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=HEADS, num_classes=CLASSES
    )
    randomize(model)
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model.eval()


def inputs(count: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(count, 3, 32, 32, generator=generator), torch.arange(count) % CLASSES


def heads(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) → (B, heads, N, C / heads)."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, HEADS, channels // HEADS).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """softmax(q kᵀ / √d) and its output with heads merged back, (B, N, C)."""
    attention = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)
    out = (attention @ v).transpose(1, 2)
    return attention, out.reshape(out.shape[0], out.shape[1], -1)


def timm_by_hand(model: VisionTransformer, images: torch.Tensor) -> tuple[list, torch.Tensor]:
    """Each block's attention from its qkv weights, and the logits computed through it."""
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], 1) + model.pos_embed
    attentions = []
    for block in model.blocks:
        q, k, v = (heads(part) for part in block.attn.qkv(block.norm1(x)).chunk(3, -1))
        attention, out = attend(q, k, v)
        attentions.append(attention)
        x = x + block.attn.proj(out)
        x = x + block.mlp(block.norm2(x))
    return attentions, model.forward_head(model.norm(x))


def torchvision_by_hand(model: nn.Module, images: torch.Tensor) -> tuple[list, torch.Tensor]:
    """The same for torchvision's VisionTransformer, from each MultiheadAttention's weights."""
    x = model.conv_proj(images).flatten(2).transpose(1, 2)
    x = torch.cat([model.class_token.expand(len(x), -1, -1), x], 1)
    x = x + model.encoder.pos_embedding
    attentions = []
    for block in model.encoder.layers:
        mha = block.self_attention
        projected = F.linear(block.ln_1(x), mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = (heads(part) for part in projected.chunk(3, -1))
        attention, out = attend(q, k, v)
        attentions.append(attention)
        x = x + mha.out_proj(out)
        x = x + block.mlp(block.ln_2(x))
    return attentions, model.heads(model.encoder.ln(x)[:, 0])


def hand_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema: Â = ½ mean_h A + ½ I per block, R = Â_L ⋯ Â_1."""
    result = torch.eye(attentions[0].shape[-1])
    for attention in attentions:
        result = (0.5 * attention.mean(1) + 0.5 * torch.eye(attention.shape[-1])) @ result
    return result


def hand_gradient_rollout(attentions: list[torch.Tensor], score: torch.Tensor) -> torch.Tensor:
    """Chefer et al.: R = I, R ← R + E_h[(∇A ⊙ A)⁺] R per block."""
    gradients = torch.autograd.grad(score, attentions)
    result = torch.eye(attentions[0].shape[-1])
    for attention, gradient in zip(attentions, gradients, strict=True):
        result = result + (gradient * attention).clamp_min(0).mean(1) @ result
    return result


def class_row_map(result: torch.Tensor) -> torch.Tensor:
    """The documented read-out: class row over the 4 × 4 patch tokens, bilinear, max → 1."""
    row = result[:, 0, 1:].reshape(-1, 1, 4, 4)
    maps = F.interpolate(row, size=(32, 32), mode="bilinear", align_corners=False)
    return maps / maps.flatten(1).amax(1).view(-1, 1, 1, 1)


def expected_maps(by_hand, model: nn.Module, images: torch.Tensor, target: torch.Tensor):
    """(rollout maps, gradient rollout maps) computed by hand."""
    with torch.no_grad():
        attentions, _ = by_hand(model, images)
    rollout_maps = class_row_map(hand_rollout(attentions))
    attentions, logits = by_hand(model, images.clone().requires_grad_())
    score = logits.gather(1, target[:, None]).sum()
    return rollout_maps, class_row_map(hand_gradient_rollout(attentions, score))


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "sdpa"])
def test_timm_rollouts_equal_hand_computation(fused: bool) -> None:
    model = timm_model(fused)
    images, target = inputs()
    rollout_maps, gradient_maps = expected_maps(timm_by_hand, timm_model(False), images, target)
    assert rollout_maps.flatten(1).std(1).min() > 0.05  # peaked, not uniform: the test can fail
    maps = AttentionRollout(model).attribute(images, target)
    torch.testing.assert_close(maps, rollout_maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(GradRollout(model).attribute(images, target), gradient_maps)


def test_gradient_rollout_explains_the_target_class() -> None:
    model = timm_model(fused=True)
    images, _ = inputs(2)
    first = GradRollout(model).attribute(images, torch.tensor([0, 0]))
    second = GradRollout(model).attribute(images, torch.tensor([1, 1]))
    assert (first - second).abs().amax() > 0.05
    plain = AttentionRollout(model)
    assert torch.equal(plain.attribute(images, 0), plain.attribute(images, 1))


def test_torchvision_rollouts_equal_hand_computation() -> None:
    """nn.MultiheadAttention (its functional; the fast path is not taken) is captured."""
    torch.manual_seed(0)
    model = randomize(torchvision_vit()).eval()
    images, target = inputs()
    rollout_maps, gradient_maps = expected_maps(torchvision_by_hand, model, images, target)
    maps = AttentionRollout(model).attribute(images, target)
    assert maps.shape == (3, 1, 32, 32) and maps.min() >= 0 and maps.amax() == 1
    torch.testing.assert_close(maps, rollout_maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(GradRollout(model).attribute(images, target), gradient_maps)


def test_huggingface_eager_and_sdpa_rollouts_equal_hand_computation() -> None:
    torch.manual_seed(0)
    eager = randomize(hf_model("vit", "eager"))
    sdpa = hf_model("vit", "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    images, target = inputs()
    with torch.no_grad():
        attentions = list(eager(images, output_attentions=True).attentions)
    expected = class_row_map(hand_rollout(attentions))
    gradients = {}
    for name, model in (("eager", eager), ("sdpa", sdpa)):
        maps = AttentionRollout(model).attribute(images, target)
        assert maps.shape == (3, 1, 32, 32) and maps.min() >= 0 and maps.amax() == 1
        torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)
        gradients[name] = GradRollout(model).attribute(images, target)
        assert gradients[name].min() >= 0 and gradients[name].amax() == 1
    torch.testing.assert_close(gradients["eager"], gradients["sdpa"], atol=1e-5, rtol=0)


def test_registered_and_memory_capped() -> None:
    model = timm_model(fused=True)
    passes: list[int] = []
    model.register_forward_hook(lambda module, args, output: passes.append(len(args[0])))
    images, target = inputs(5)
    for name in ("attention_rollout", "grad_rollout"):
        whole = METHODS[name](ModelAdapter(model), None).attribute(images, target)
        passes.clear()
        capped = METHODS[name](ModelAdapter(model), 2).attribute(images, target)
        assert passes == [2, 2, 1]
        torch.testing.assert_close(capped, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm.create_model(  # the family knows: average pooling, no class token
            "vit_tiny_patch16_224", **SMALL, class_token=False, global_pool="avg"
        ),
        lambda: timm.create_model(  # registers only: prefix tokens, none of them a class token
            "vit_tiny_patch16_224", **SMALL, class_token=False, reg_tokens=2, global_pool="avg"
        ),
        lambda: VisionTransformer(  # no family: the attention covers the patch tokens only
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False,
            global_pool="avg",
        ),
    ],
    ids=["timm_avg", "timm_registers", "generic"],
)  # fmt: skip
def test_models_without_class_token_are_refused(build) -> None:
    with pytest.raises(ValueError, match="class token"):
        GradRollout(build().eval()).attribute(*inputs(1))


SMALL = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def test_windowed_attention_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # as for a model of no known family: nothing said about a class token
    monkeypatch.setattr(TimmFamily, "reads_class_token", lambda self, root: None)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=32,
        patch_size=4,
        window_size=4,
        depths=(1, 1),
        num_heads=(2, 4),
        embed_dim=32,
    )
    with pytest.raises(ValueError, match="windowed"):
        AttentionRollout(model.eval()).attribute(*inputs(1))
