"""Where pictures go: one sink per logger (docs/architecture.md, "Add a logger").

TensorBoard gets images in its event file, W&B through ``WandbLogger.log_image``, MLflow through
the logger's client on its run; loggers without image support (CSVLogger) get PNG files in
their own log directory. A logger type is mapped to a sink factory once, in :data:`SINKS`; a
logger gets the sink of the most specific registered class it is an instance of.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.fabric.loggers import TensorBoardLogger
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
from torch.utils.tensorboard import SummaryWriter

from dave_lightning.sinks.base import ImageSink
from dave_lightning.sinks.mlflow import MlflowSink
from dave_lightning.sinks.png import PngSink
from dave_lightning.sinks.tensorboard import TensorBoardSink
from dave_lightning.sinks.wandb import WandbSink

SinkFactory = Callable[[Any], ImageSink]

SINKS: dict[type, SinkFactory] = {
    TensorBoardLogger: lambda logger: TensorBoardSink(logger.experiment),
    SummaryWriter: TensorBoardSink,
    WandbLogger: WandbSink,
    MLFlowLogger: MlflowSink,
}


def register_sink(logger_type: type, factory: SinkFactory, *, replace: bool = False) -> None:
    """Send the monitor's images for loggers of ``logger_type`` (and its subclasses without a
    sink of their own) to ``factory(logger)``.

    Raises:
        ValueError: when ``logger_type`` has a sink already and ``replace`` is not set.
    """
    if logger_type in SINKS and not replace:
        raise ValueError(
            f"{logger_type.__name__} has a sink already; pass replace=True to replace it"
        )
    SINKS[logger_type] = factory


def sink_factory(logger: object) -> SinkFactory | None:
    """The factory registered for the most specific class of ``logger``, or None."""
    return next((SINKS[kind] for kind in type(logger).__mro__ if kind in SINKS), None)


@dataclass
class Destinations:
    """Where an evaluation goes: ``loggers`` take scalars (``log_metrics``), ``sinks`` take
    pictures; ``as_png`` names the loggers whose pictures become PNG files."""

    loggers: list[Any] = field(default_factory=list)
    sinks: list[ImageSink] = field(default_factory=list)
    as_png: list[str] = field(default_factory=list)


def destinations(objects: Sequence[Any], fallback: Path, *, images: bool = True) -> Destinations:
    """Scalar loggers and picture sinks for ``objects``: Lightning or Fabric loggers, a
    ``SummaryWriter`` or sinks.

    Scalars go to every object with ``log_metrics`` (a ``SummaryWriter``'s sink takes them).
    Pictures go to an object's registered sink, to the object itself when it is a sink, else to
    PNG files in ``<its log_dir>/images`` (``fallback`` when it has none, or when there are no
    objects at all); ``images=False`` sends none.
    """
    result = Destinations()
    for item in objects:
        factory = sink_factory(item)
        sink = item if isinstance(item, ImageSink) else None
        if sink is None and factory is not None and (images or isinstance(item, SummaryWriter)):
            sink = factory(item)
        scalars = item if hasattr(item, "log_metrics") else sink
        if scalars is not None and hasattr(scalars, "log_metrics"):
            result.loggers.append(scalars)
        if not images:
            continue
        if sink is None:
            log_dir = getattr(item, "log_dir", None) or getattr(item, "save_dir", None)
            sink = PngSink(Path(log_dir) / "images" if log_dir else fallback)
            result.as_png.append(type(item).__name__)
        result.sinks.append(sink)
    if images and not objects:
        result.sinks.append(PngSink(fallback))
    return result


__all__ = [
    "SINKS",
    "Destinations",
    "ImageSink",
    "MlflowSink",
    "PngSink",
    "TensorBoardSink",
    "WandbSink",
    "destinations",
    "register_sink",
]
