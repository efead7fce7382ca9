"""Images as PNG files: ``<directory>/step_<step:08d>/<tag with / as _>.png``."""

from __future__ import annotations

from pathlib import Path

import torch

from dave_lightning import viz
from dave_lightning.sinks.base import ImageSink


class PngSink(ImageSink):
    """Writes each image to a PNG file under ``directory``, one folder per step."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def log_image(
        self, tag: str, image: torch.Tensor, step: int, caption: str | None = None
    ) -> None:
        path = self.directory / f"step_{step:08d}" / (tag.replace("/", "_") + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        viz.save_png(image, path)
