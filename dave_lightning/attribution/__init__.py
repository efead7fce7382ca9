"""DAVE attribution for Vision Transformers: effective mode, the engine and its baselines."""

from dave_lightning.attribution.baselines import InputXEffective, InputXGradient
from dave_lightning.attribution.effective import effective_mode
from dave_lightning.attribution.engine import COMPONENTS, DAVE
from dave_lightning.attribution.postprocess import postprocess

__all__ = [
    "COMPONENTS",
    "DAVE",
    "InputXEffective",
    "InputXGradient",
    "effective_mode",
    "postprocess",
]
