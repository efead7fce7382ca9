"""Tiny random-init HuggingFace transformers image classifiers (no downloads) for the tests."""

from __future__ import annotations

import torch
import transformers as T
from torch import nn

NUM_LABELS = 5
VIT = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_labels": NUM_LABELS,
}
DINO = {key: value for key, value in VIT.items() if key != "intermediate_size"} | {"mlp_ratio": 2}
BUILDERS = {
    "vit": (T.ViTConfig, T.ViTForImageClassification, VIT),
    "deit_teacher": (T.DeiTConfig, T.DeiTForImageClassificationWithTeacher, VIT),
    "beit": (
        T.BeitConfig,
        T.BeitForImageClassification,
        VIT | {"use_relative_position_bias": True, "layer_scale_init_value": 0.1},
    ),
    "swin": (
        T.SwinConfig,
        T.SwinForImageClassification,
        {
            "image_size": 32,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [2, 2],
            "num_heads": [2, 2],
            "window_size": 4,
            "num_labels": NUM_LABELS,
        },
    ),
    "dinov2": (T.Dinov2Config, T.Dinov2ForImageClassification, DINO),
}
OFFSETS = (
    "position_embeddings",
    "cls_token",
    "distillation_token",
    "register_tokens",
    "mask_token",
)


def hf_model(name: str, attention: str = "sdpa", **overrides: object) -> nn.Module:
    """A tiny random-init classifier of family ``name`` with the given attention path."""
    config_cls, model_cls, settings = BUILDERS[name]
    config = config_cls(**{**settings, **overrides})
    config._attn_implementation = attention
    return model_cls(config).eval()


def zero_hf_offsets(model: nn.Module) -> nn.Module:
    """Zero every bias, position embedding and class, distillation or register token."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or leaf in OFFSETS:
                param.zero_()
    return model
