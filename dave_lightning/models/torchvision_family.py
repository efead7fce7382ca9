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
