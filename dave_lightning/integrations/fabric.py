"""FabricMonitor: DAVE's maps and metrics of a fixed probe in a Lightning Fabric loop.

A thin front door over :class:`~dave_lightning.monitor.ProbeMonitor` that answers Fabric's
``fabric.call`` hooks (docs/beyond_the_trainer.md, "Lightning Fabric"): it hands the monitor
Fabric's loggers and strategy and evaluates the module Fabric wraps, unwrapped, so that an
evaluation neither runs under the precision plugin's autocast nor through DDP's hooks. Training
computes exactly what it computes without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric import Fabric
from lightning.fabric.wrappers import _FabricModule
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dave_lightning.monitor import MonitorSettings, ProbeMonitor, StrategyCollective
from dave_lightning.monitor.front_door import FrontDoor, check_probe_source


class FabricMonitor(FrontDoor):
    """Evaluate DAVE on a fixed probe while a Fabric loop trains, through ``fabric.call``.

    Register it with ``Fabric(callbacks=[monitor], loggers=[...])`` and call, on every rank::

        fabric.call("on_train_start", fabric=fabric, model=model)
        fabric.call("on_train_batch_end", fabric=fabric, model=model, step=step, epoch=epoch)
        fabric.call("on_train_epoch_end", fabric=fabric, model=model, step=step, epoch=epoch)
        fabric.call("on_train_end", fabric=fabric, model=model, step=step, epoch=epoch)

    where ``step`` counts the optimizer steps taken so far and ``epoch`` is 0-based.

    Args:
        probe: ``(images, labels[, masks])``, a ``Dataset`` or a ``DataLoader``.
        options: the options of :class:`~dave_lightning.DAVEMonitor` (docs/callback.md), e.g.
            ``n_samples=16, every_n_train_steps=100``.

    Raises:
        TypeError, ValueError: for a bad probe or option here, and in ``on_train_start`` for a
            probe the model cannot take or a snapshot folder that cannot be used.
    """

    def __init__(self, probe: tuple | Dataset | DataLoader, **options: Any) -> None:
        check_probe_source(probe)
        self.monitor = ProbeMonitor(probe, settings=MonitorSettings.from_options(**options))

    def on_train_start(self, fabric: Fabric, model: nn.Module) -> None:
        """Check the probe against the model, claim the snapshot folder (``snapshot_dir``,
        else ``<first logger's log_dir>/<name>``, else ``./<name>/version_<n>``) and say what
        an evaluation costs; with ``at_start``, evaluate the untrained model at step 0."""
        self.monitor.setup(
            _unwrapped(model), *fabric.loggers, root=Path.cwd(), collective=_collective(fabric)
        )
        self.monitor.announce_cost()  # a Fabric loop does not declare how long it trains
        if self.settings.schedule.at_start:
            self.monitor.run(_unwrapped(model), step=0, epoch=0)

    def on_train_batch_end(self, fabric: Fabric, model: nn.Module, step: int, epoch: int) -> None:
        """After optimizer step ``step``: evaluate every ``every_n_train_steps`` steps."""
        if self.monitor.due(step):
            self.monitor.run(_unwrapped(model), step=step, epoch=epoch)

    def on_train_epoch_end(self, fabric: Fabric, model: nn.Module, step: int, epoch: int) -> None:
        """After the last batch of (0-based) ``epoch``: evaluate every ``every_n_epochs``."""
        if self.monitor.due(step, epoch_end=epoch):
            self.monitor.run(_unwrapped(model), step=step, epoch=epoch)

    def on_train_end(self, fabric: Fabric, model: nn.Module, step: int, epoch: int) -> None:
        """With ``at_end``: the last evaluation (or the slow metrics added to one that ran at
        ``step``), redone if the weights changed since, then the progression pictures; then
        the loggers are flushed, since Fabric does not finalise them."""
        self.monitor.finish(_unwrapped(model), step=step, epoch=epoch)
        self.monitor.close(_unwrapped(model), step=step, epoch=epoch)
        if fabric.global_rank == 0:
            self.monitor.flush()


def _unwrapped(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric's wrapper (and inside DDP's, which the wrapper holds)."""
    return model.module if isinstance(model, _FabricModule) else model


def _collective(fabric: Fabric) -> StrategyCollective:
    return StrategyCollective(fabric.strategy, fabric.global_rank, fabric.world_size)
