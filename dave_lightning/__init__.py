"""dave-lightning: DAVE attribution maps for Vision Transformers, tracked during training."""

from dave_lightning.attribution import (
    DAVE,
    DAVESettings,
    InputXEffective,
    InputXGradient,
    effective_mode,
)
from dave_lightning.callback import DAVEMonitor

__all__ = [
    "DAVE",
    "DAVEMonitor",
    "DAVESettings",
    "InputXEffective",
    "InputXGradient",
    "effective_mode",
]
__version__ = "0.1.0"
