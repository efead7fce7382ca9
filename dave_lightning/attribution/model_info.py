"""What the engine reads off a model without asking the user: channels, patch size, timm name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Reference noise levels per model family (DESIGN §2.2, from the paper's reference code).
REFERENCE_NOISE_ALPHA: dict[str, float] = {
    "deit3_base_patch16": 0.9,
    "deit3_small_patch16": 0.5,
    "deit_base_patch16": 0.7,
    "deit_small_patch16": 0.5,
    "vit_base_patch16": 0.3,
    "vit_small_patch16": 0.1,
}


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first 2-D convolution, which in a ViT is the patch embedding."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def input_channels(model: nn.Module) -> int | None:
    """Channels the model expects, or None when no convolutional stem says so."""
    conv = first_conv(model)
    return None if conv is None else conv.in_channels


def patch_size(model: nn.Module) -> int | None:
    """Height in pixels of the patch one token sees (the token grid's stride).

    timm's patch embedding reports its total reduction (convolutional stems of hybrid ViTs
    included), torchvision's ViT its ``patch_size``; otherwise the first convolution's stride.
    """
    for module in model.modules():
        embed = getattr(module, "patch_embed", None)
        if callable(getattr(embed, "feat_ratio", None)):
            return int(embed.feat_ratio(as_scalar=False)[0])
        size = getattr(module, "patch_size", None)
        if isinstance(size, int) and not isinstance(size, bool):
            return size
    conv = first_conv(model)
    return None if conv is None else int(conv.stride[0])


def timm_name(model: nn.Module) -> str | None:
    """The timm architecture name (``pretrained_cfg['architecture']``) when the model has one."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    return cfg.get("architecture") if isinstance(cfg, dict) else None


def reference_noise_alpha(model: nn.Module) -> float | None:
    """The paper's noise_alpha for this timm model family, or None when it is not in the table."""
    name = timm_name(model)
    if name is None:
        return None
    for prefix, alpha in REFERENCE_NOISE_ALPHA.items():
        if name == prefix or name.startswith(prefix + "_"):
            return alpha
    return None


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless module)."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


@contextmanager
def attribution_context(model: nn.Module) -> Iterator[None]:
    """Eval mode, frozen parameters, float32 and gradients on; everything restored on exit.

    Works inside ``torch.no_grad()``, ``torch.inference_mode()`` and autocast regions (as in
    Lightning's validation loop); ``torch.compile``d modules run their eager code, which the
    effective mode can intercept. Frozen parameters keep autograd from saving what only weight
    gradients need; ``.grad`` fields are never written.
    """
    training = [(module, module.training) for module in model.modules()]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    device_type = model_device(model).type
    try:
        model.eval()
        for param, _ in requires_grad:
            param.requires_grad_(False)
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_type=device_type, enabled=False),
            torch.compiler.set_stance("force_eager"),
        ):
            yield
    finally:
        for module, flag in training:
            module.training = flag
        for param, flag in requires_grad:
            param.requires_grad_(flag)
