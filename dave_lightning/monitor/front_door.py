"""What every front door (Lightning's Trainer, Fabric, the HuggingFace Trainer) shows of the
:class:`~dave_lightning.monitor.ProbeMonitor` it drives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from dave_lightning.monitor.core import ProbeMonitor
from dave_lightning.monitor.settings import MonitorSettings


class FrontDoor:
    """The monitor's name, settings, history and snapshot folder, read through ``monitor``."""

    monitor: ProbeMonitor

    @property
    def name(self) -> str:
        return self.monitor.name

    @property
    def settings(self) -> MonitorSettings:
        return self.monitor.settings

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per evaluation: ``epoch``, ``global_step``, ``metrics``, ``intervals``,
        ``slow``, ``alerts``, ``seconds`` (docs/callback.md, "What gets logged")."""
        return self.monitor.history

    @property
    def snapshot_dir(self) -> Path | None:
        """This run's snapshot folder (known once training starts)."""
        return self.monitor.snapshot_dir


def check_probe_source(probe: object, dataset: str = "a Dataset") -> None:
    """Raise ``TypeError`` unless ``probe`` is ``(images, labels[, masks])``, a ``Dataset`` (as
    ``dataset`` describes it) or a ``DataLoader``."""
    if not isinstance(probe, (tuple, Dataset, DataLoader)):
        raise TypeError(
            f"probe must be (images, labels[, masks]), {dataset} or a DataLoader; got "
            f"{type(probe).__name__}"
        )
