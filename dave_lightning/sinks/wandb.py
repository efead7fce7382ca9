"""Images to Weights & Biases through ``WandbLogger.log_image``, at the trainer's step."""

from __future__ import annotations

import torch
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from dave_lightning import viz
from dave_lightning.sinks.base import ImageSink


class WandbSink(ImageSink):
    """``log_image(key=tag, images=[image], step=step, caption=[caption])`` on the logger, as
    8-bit pixels (``wandb.Image`` does not scale float tensors).

    The logger records the step as ``trainer/global_step``, the x-axis it declares for every
    key, so images line up with the scalars of the same evaluation.
    """

    def __init__(self, logger: WandbLogger) -> None:
        self.logger = logger

    def log_image(
        self, tag: str, image: torch.Tensor, step: int, caption: str | None = None
    ) -> None:
        captions = {} if caption is None else {"caption": [caption]}
        self.logger.log_image(key=tag, images=[viz.to_uint8(image)], step=step, **captions)

    def log_figure(self, tag: str, figure: Figure, step: int) -> None:
        self.logger.log_image(key=tag, images=[figure], step=step)
