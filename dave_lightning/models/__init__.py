"""The model adapter and the model families it knows (docs/architecture.md)."""

from dave_lightning.models.adapter import (
    FAMILIES,
    ModelAdapter,
    register_family,
)
from dave_lightning.models.bcos_family import BcosFamily
from dave_lightning.models.family import GenericFamily, ModelFamily, Normalization
from dave_lightning.models.timm_family import TimmFamily
from dave_lightning.models.torchvision_family import TorchvisionFamily
from dave_lightning.models.transformers_family import TransformersFamily

register_family(TorchvisionFamily())
register_family(TimmFamily())
register_family(TransformersFamily())
register_family(BcosFamily())

__all__ = [
    "FAMILIES",
    "BcosFamily",
    "GenericFamily",
    "ModelAdapter",
    "ModelFamily",
    "Normalization",
    "TimmFamily",
    "TorchvisionFamily",
    "TransformersFamily",
    "register_family",
]
