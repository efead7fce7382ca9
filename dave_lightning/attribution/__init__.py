"""DAVE attribution for Vision Transformers: effective mode, the engine, compared methods."""

from dave_lightning.attribution.captum_methods import CaptumMethod
from dave_lightning.attribution.engine import COMPONENTS, DAVE
from dave_lightning.attribution.methods import (
    METHODS,
    InputXEffective,
    InputXGradient,
    method_factory,
    register_method,
)
from dave_lightning.attribution.postprocess import postprocess
from dave_lightning.attribution.rollout import AttentionRollout, GradRollout
from dave_lightning.attribution.settings import DAVESettings
from dave_lightning.core.effective import effective_mode

__all__ = [
    "COMPONENTS",
    "DAVE",
    "METHODS",
    "AttentionRollout",
    "CaptumMethod",
    "DAVESettings",
    "GradRollout",
    "InputXEffective",
    "InputXGradient",
    "effective_mode",
    "method_factory",
    "postprocess",
    "register_method",
]
