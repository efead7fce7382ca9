"""A tiny random-init B-cos simple ViT from the ``bcos`` package (the authors' ViT recipe)."""

from __future__ import annotations

import math
import warnings
from functools import partial

import torch
from bcos.models.vit import SimpleViT
from bcos.modules import BcosLinear, BcosSequential, LogitLayer, norms
from torch import nn


def bcos_vit(num_classes: int = 5, image_size: int = 32, patch_size: int = 8) -> nn.Module:
    """2 blocks of width 32, inputs [x, 1 − x] (6 channels), as bcos's simple_vit entrypoints."""
    with warnings.catch_warnings():  # SimpleViT warns when built outside bcos's entrypoints
        warnings.filterwarnings("ignore", message="You are trying to use the entrypoints")
        vit = SimpleViT(
            image_size=image_size,
            patch_size=patch_size,
            num_classes=num_classes,
            dim=32,
            depth=2,
            heads=2,
            mlp_dim=64,
            channels=6,
            linear_layer=partial(BcosLinear, b=2, max_out=1),
            norm_layer=norms.NoBias(norms.DetachableLayerNorm),
            act_layer=nn.Identity,
        )
    return BcosSequential(vit, LogitLayer(logit_bias=math.log(1 / (num_classes - 1))))


def add_inverse(images01: torch.Tensor) -> torch.Tensor:
    """B-cos's input encoding [x, 1 − x]."""
    return torch.cat([images01, 1 - images01], dim=1)
