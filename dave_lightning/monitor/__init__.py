"""The framework-neutral monitor core and what it needs of a run (docs/architecture.md)."""

from dave_lightning.monitor.collective import (
    SINGLE_PROCESS,
    Collective,
    StrategyCollective,
    TorchDistributed,
    default_collective,
)
from dave_lightning.monitor.core import ProbeMonitor
from dave_lightning.monitor.settings import MonitorSettings, option_defaults

__all__ = [
    "SINGLE_PROCESS",
    "Collective",
    "MonitorSettings",
    "ProbeMonitor",
    "StrategyCollective",
    "TorchDistributed",
    "default_collective",
    "option_defaults",
]
