"""dave-lightning: DAVE attribution maps for Vision Transformers, tracked during training.

The exports are imported on first use (PEP 562), so that importing the package, as
``dave-lightning --help`` does, loads no deep-learning library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dave_lightning.attribution import (
        DAVE,
        DAVESettings,
        InputXEffective,
        InputXGradient,
        effective_mode,
    )
    from dave_lightning.callback import DAVEMonitor
    from dave_lightning.monitor import ProbeMonitor

#: Each export → the module that defines it.
_EXPORTS = {
    "DAVE": "dave_lightning.attribution",
    "DAVESettings": "dave_lightning.attribution",
    "InputXEffective": "dave_lightning.attribution",
    "InputXGradient": "dave_lightning.attribution",
    "effective_mode": "dave_lightning.attribution",
    "DAVEMonitor": "dave_lightning.callback",
    "ProbeMonitor": "dave_lightning.monitor",
}

__all__ = [
    "DAVE",
    "DAVEMonitor",
    "DAVESettings",
    "InputXEffective",
    "InputXGradient",
    "ProbeMonitor",
    "effective_mode",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """An export, imported from its module when first asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dave_lightning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
