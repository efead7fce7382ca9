"""Tiny random-init ViTs of every family the engine supports (fast enough for unit tests)."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
import torchvision
from torch import nn

NUM_CLASSES = 5


def timm_vit(img_size: int | tuple[int, int] = 32, fused_attn: bool = True) -> nn.Module:
    """timm ViT; ``fused_attn=False`` makes attention use an explicit softmax."""
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=img_size,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        num_classes=NUM_CLASSES,
    )
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused_attn
    return model


def torchvision_vit(image_size: int = 32) -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=image_size,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=NUM_CLASSES,
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision initialises the head to 0
    return model


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return timm.create_model(name, num_classes=NUM_CLASSES, **kwargs)

    return build


SMALL_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}

# name → builder of a model taking 32 × 32 RGB images.
MODEL_ZOO: dict[str, Callable[[], nn.Module]] = {
    "timm_vit": timm_vit,
    "timm_vit_explicit_softmax": lambda: timm_vit(fused_attn=False),
    "deit3_layerscale": _timm("deit3_small_patch16_224", **SMALL_VIT),
    "dinov2_registers": _timm("vit_small_patch14_reg4_dinov2", **SMALL_VIT),
    "eva02_rope_swiglu": _timm("eva02_tiny_patch14_224", **SMALL_VIT),
    "beit_relative_position": _timm("beit_base_patch16_224", **SMALL_VIT),
    "deit_distilled": _timm("deit_tiny_distilled_patch16_224", **SMALL_VIT),
    "swin": _timm(
        "swin_tiny_patch4_window7_224",
        img_size=32,
        patch_size=4,
        window_size=4,
        depths=(1, 1),
        num_heads=(2, 4),
        embed_dim=32,
    ),
    "torchvision_vit": torchvision_vit,
}


def zero_affine_offsets(model: nn.Module) -> nn.Module:
    """Zero every bias, positional embedding and class, register or distillation token."""
    offset_names = (
        "pos_embed",
        "pos_embedding",
        "cls_token",
        "class_token",
        "reg_token",
        "dist_token",
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or any(part in name for part in offset_names):
                param.zero_()
    return model


def randomize(model: nn.Module) -> nn.Module:
    """Re-draw all weights at unit scale so that logits are far from zero (LayerScale included)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5)
            else:
                param.normal_(1.0, 0.1)
    return model
