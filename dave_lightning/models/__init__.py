"""The model adapter and the model families it knows (docs/architecture.md)."""

from dave_lightning.models.adapter import (
    FAMILIES,
    IMAGENET_NORMALIZATION,
    ModelAdapter,
    find_family,
    logits_of,
    register_family,
)
from dave_lightning.models.family import GenericFamily, ModelFamily, Normalization
from dave_lightning.models.timm_family import TimmFamily
from dave_lightning.models.torchvision_family import TorchvisionFamily

register_family(TorchvisionFamily())
register_family(TimmFamily())

__all__ = [
    "FAMILIES",
    "IMAGENET_NORMALIZATION",
    "GenericFamily",
    "ModelAdapter",
    "ModelFamily",
    "Normalization",
    "TimmFamily",
    "TorchvisionFamily",
    "find_family",
    "logits_of",
    "register_family",
]
