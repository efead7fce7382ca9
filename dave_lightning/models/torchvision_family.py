"""torchvision's ``VisionTransformer``: its ``patch_size`` and ``image_size`` attributes."""

from __future__ import annotations

from torch import nn
from torchvision.models import VisionTransformer

from dave_lightning.models.family import ModelFamily, size_pair


class TorchvisionFamily(ModelFamily):
    """``torchvision.models.VisionTransformer`` and the ``vit_*`` builders."""

    name = "torchvision"

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, VisionTransformer)

    def patch_size(self, root: nn.Module) -> int | None:
        return int(root.patch_size)

    def input_size(self, root: nn.Module) -> tuple[int, int] | None:
        return size_pair(root.image_size)

    def reads_class_token(self, root: nn.Module) -> bool | None:
        return True  # the head reads the class token, always the first token

    def blocks(self, root: nn.Module) -> list[nn.Module] | None:
        return list(root.encoder.layers)

    def head(self, root: nn.Module) -> nn.Module | None:
        return root.heads
