"""Images as PNG files: ``<directory>/step_<step:08d>/<tag with / as _>.png``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from dave_lightning import viz
from dave_lightning.sinks.base import ImageSink


class PngSink(ImageSink):
    """Writes each image to a PNG file under ``directory``, one folder per step."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._written: dict[int, list[Path]] = {}

    def log_image(
        self, tag: str, image: torch.Tensor, step: int, caption: str | None = None
    ) -> None:
        path = self.directory / f"step_{step:08d}" / (tag.replace("/", "_") + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._written.setdefault(step, []).append(path)
        viz.save_png(image, path)

    def discard(self, step: int) -> None:
        """Remove the files written at ``step`` (a partly written one included)."""
        for path in self._written.pop(step, []):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            (self.directory / f"step_{step:08d}").rmdir()  # only when empty
