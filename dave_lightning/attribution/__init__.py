"""DAVE attribution for Vision Transformers: effective mode, the engine, compared methods."""

from dave_lightning.attribution.engine import COMPONENTS, DAVE
from dave_lightning.attribution.methods import (
    METHODS,
    AttributionMethod,
    InputXEffective,
    InputXGradient,
    register_method,
)
from dave_lightning.attribution.postprocess import postprocess
from dave_lightning.attribution.settings import DAVESettings
from dave_lightning.core.effective import effective_mode

__all__ = [
    "COMPONENTS",
    "DAVE",
    "METHODS",
    "AttributionMethod",
    "DAVESettings",
    "InputXEffective",
    "InputXGradient",
    "effective_mode",
    "postprocess",
    "register_method",
]
