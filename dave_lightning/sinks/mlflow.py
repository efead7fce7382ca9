"""Images to MLflow through the logger's client, on the logger's run."""

from __future__ import annotations

import re

import torch
from lightning.pytorch.loggers import MLFlowLogger
from matplotlib.figure import Figure

from dave_lightning import viz
from dave_lightning.sinks.base import ImageSink


def image_key(tag: str) -> str:
    """A tag with only the characters MLflow allows in image keys."""
    return re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", tag)


class MlflowSink(ImageSink):
    """``log_image(run_id, image, key=tag, step=step)``: MLflow's step-aware images.

    Figures go to ``figures/<tag>/step_<step:08d>.png`` with ``log_figure``. MLflow images
    carry no caption; the panels print theirs.
    """

    def __init__(self, logger: MLFlowLogger) -> None:
        self.logger = logger

    def log_image(
        self, tag: str, image: torch.Tensor, step: int, caption: str | None = None
    ) -> None:
        pixels = viz.to_uint8(image).permute(1, 2, 0).numpy()
        self.logger.experiment.log_image(self.logger.run_id, pixels, key=image_key(tag), step=step)

    def log_figure(self, tag: str, figure: Figure, step: int) -> None:
        path = f"figures/{image_key(tag)}/step_{step:08d}.png"
        self.logger.experiment.log_figure(self.logger.run_id, figure, path)
