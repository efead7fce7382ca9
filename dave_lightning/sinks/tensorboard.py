"""Images to a TensorBoard event file, at the evaluation's step (the step slider works)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.tensorboard import SummaryWriter

from dave_lightning.sinks.base import Charts, ImageSink, Margins


class TensorBoardSink(ImageSink):
    """``SummaryWriter.add_image`` on a writer, e.g. a ``TensorBoardLogger``'s experiment; given
    a writer directly (a plain PyTorch loop), it takes the scalars too (``add_scalar``)."""

    def __init__(self, writer: SummaryWriter) -> None:
        self.writer = writer

    @property
    def log_dir(self) -> str:
        """The writer's run directory."""
        return self.writer.log_dir

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Each scalar as ``add_scalar(tag, value, step)``."""
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def log_image(
        self, tag: str, image: torch.Tensor, step: int, caption: str | None = None
    ) -> None:
        self.writer.add_image(tag, image, global_step=step)

    def log_layout(self, category: str, charts: Charts, margins: Margins) -> None:
        """A custom-scalars layout (CUSTOM SCALARS tab): one multi-line chart per title, and
        one margin chart (the value with its interval as a band) per title of ``margins``."""
        layout = {title: ["Multiline", tags] for title, tags in charts.items()}
        for title, tags in margins.items():
            layout[title] = ["Margin", list(tags)]
        self.writer.add_custom_scalars({category: layout})

    def flush(self) -> None:
        self.writer.flush()
