"""The image-sink interface: where pictures go, one small protocol for every destination."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from dave_lightning import viz

#: A custom-scalars layout: chart title → tags, and margin chart title → (value, low, high) tags.
Charts = dict[str, list[str]]
Margins = dict[str, tuple[str, str, str]]


class ImageSink:
    """Receives images and figures under a tag at a training step.

    Subclasses implement :meth:`log_image`; figures are rendered to images unless a
    subclass logs them natively.
    """

    def log_image(
        self, tag: str, image: torch.Tensor, step: int, caption: str | None = None
    ) -> None:
        """Log a (3, H, W) image in [0, 1]."""
        raise NotImplementedError

    def log_figure(self, tag: str, figure: Figure, step: int) -> None:
        """Log a matplotlib figure."""
        self.log_image(tag, viz.figure_to_tensor(figure), step)

    def log_layout(self, category: str, charts: Charts, margins: Margins) -> None:
        """Group scalar tags into charts (title → tags) and margin charts (title → value, lower
        and upper bound tags), where the destination supports it."""

    def flush(self) -> None:
        """Make what was logged visible (e.g. write buffered events)."""

    def discard(self, step: int) -> None:
        """Take back what was logged at ``step`` where the destination allows it (files); called
        when publishing an evaluation fails part-way, so that it leaves nothing behind."""
