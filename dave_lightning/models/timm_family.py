"""timm models: ``pretrained_cfg`` (normalisation, architecture) and the patch embedding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.data import create_transform, resolve_data_config
from torch import nn

from dave_lightning.models.family import ModelFamily, Normalization, floats, size_pair

# Reference noise levels per model family, from the paper's reference implementation.
REFERENCE_NOISE_ALPHA: dict[str, float] = {
    "deit3_base_patch16": 0.9,
    "deit3_small_patch16": 0.5,
    "deit_base_patch16": 0.7,
    "deit_small_patch16": 0.5,
    "vit_base_patch16": 0.3,
    "vit_small_patch16": 0.1,
}


def reference_noise_alpha(architecture: str) -> float | None:
    """The table's value for an architecture name such as ``deit_small_patch16_224``."""
    for prefix, alpha in REFERENCE_NOISE_ALPHA.items():
        if architecture == prefix or architecture.startswith(prefix + "_"):
            return alpha
    return None


class TimmFamily(ModelFamily):
    """Models built by ``timm.create_model`` (they carry a ``pretrained_cfg`` dict)."""

    name = "timm"

    def owns(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "pretrained_cfg", None), dict)

    def patch_size(self, root: nn.Module) -> int | None:
        """The patch embedding's total reduction (hybrid ViTs' convolutional stems included)."""
        embed = getattr(root, "patch_embed", None)
        if callable(getattr(embed, "feat_ratio", None)):
            return int(embed.feat_ratio(as_scalar=False)[0])
        size = size_pair(getattr(embed, "patch_size", None))
        return None if size is None else size[0]

    def input_size(self, root: nn.Module) -> tuple[int, int] | None:
        return size_pair(getattr(getattr(root, "patch_embed", None), "img_size", None))

    def normalization(self, root: nn.Module) -> Normalization | None:
        mean, std = floats(root.pretrained_cfg.get("mean")), floats(root.pretrained_cfg.get("std"))
        return None if mean is None or std is None else (mean, std)

    def noise_alpha(self, root: nn.Module) -> float | None:
        architecture = root.pretrained_cfg.get("architecture")
        return None if architecture is None else reference_noise_alpha(architecture)

    def reads_class_token(self, root: nn.Module) -> bool | None:
        """Token pooling (``global_pool='token'``) of a model with a ``cls_token``."""
        pool = getattr(root, "global_pool", None)
        if not isinstance(pool, str):
            return None
        return pool == "token" and getattr(root, "cls_token", None) is not None

    def blocks(self, root: nn.Module) -> list[nn.Module] | None:
        blocks = getattr(root, "blocks", None)
        return list(blocks) if isinstance(blocks, nn.Sequential | nn.ModuleList) else None

    def head(self, root: nn.Module) -> nn.Module | None:
        head = getattr(root, "head", None)
        return head if isinstance(head, nn.Module) else None

    def eval_transform(
        self, root: nn.Module, size: tuple[int, int], normalization: Normalization
    ) -> Callable[[Any], Any] | None:
        """timm's eval transform from the model's data config (resize, centre crop)."""
        config = resolve_data_config({"input_size": (3, *size)}, model=root)
        config.update(mean=normalization[0], std=normalization[1])
        return create_transform(**config)
