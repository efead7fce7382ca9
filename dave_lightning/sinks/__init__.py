"""Where pictures go: one sink per logger of the Trainer (docs/architecture.md, "Add a logger").

TensorBoard gets images in its event file, W&B through ``WandbLogger.log_image``, MLflow through
the logger's client on its run; loggers without image support (CSVLogger) get PNG files in
their own log directory. A logger type is mapped to a sink factory once, in :data:`SINKS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from dave_lightning.sinks.base import ImageSink
from dave_lightning.sinks.mlflow import MlflowSink
from dave_lightning.sinks.png import PngSink
from dave_lightning.sinks.tensorboard import TensorBoardSink
from dave_lightning.sinks.wandb import WandbSink

SinkFactory = Callable[[Logger], ImageSink]

SINKS: dict[type[Logger], SinkFactory] = {
    TensorBoardLogger: lambda logger: TensorBoardSink(logger.experiment),
    WandbLogger: WandbSink,
    MLFlowLogger: MlflowSink,
}


def register_sink(logger_type: type[Logger], factory: SinkFactory) -> None:
    """Send the monitor's images for loggers of ``logger_type`` to ``factory(logger)``."""
    SINKS[logger_type] = factory


def sinks_for_loggers(
    loggers: Sequence[Logger], fallback: Path
) -> tuple[list[ImageSink], list[str]]:
    """A sink per logger, and the names of the loggers whose images become PNG files.

    A logger without a registered sink gets a :class:`PngSink` in ``<its log_dir>/images``
    (``fallback`` when it has none, or when there are no loggers at all).
    """
    sinks: list[ImageSink] = []
    as_png: list[str] = []
    for logger in loggers:
        factory = next((f for kind, f in SINKS.items() if isinstance(logger, kind)), None)
        if factory is not None:
            sinks.append(factory(logger))
            continue
        log_dir = getattr(logger, "log_dir", None) or logger.save_dir
        sinks.append(PngSink(Path(log_dir) / "images" if log_dir else fallback))
        as_png.append(type(logger).__name__)
    if not loggers:
        sinks.append(PngSink(fallback))
    return sinks, as_png


__all__ = [
    "SINKS",
    "ImageSink",
    "MlflowSink",
    "PngSink",
    "SinkFactory",
    "TensorBoardSink",
    "WandbSink",
    "register_sink",
    "sinks_for_loggers",
]
