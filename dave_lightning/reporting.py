"""Turn evaluations into pictures: TensorBoard images and figures, or PNG files without it.

Tags (DESIGN §4): ``dave/probe/<i>`` (image | DAVE overlay | compared methods),
``dave/probe_grid`` (all DAVE overlays), ``dave/deletion_curves`` (figure) and, at the end of
fit, ``dave/progression/<i>`` (one probe image's maps across evaluations). Every image carries
the evaluation's ``global_step`` so TensorBoard's step slider works.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from dave_lightning import viz
from dave_lightning.evaluation import Evaluation

MAX_PROGRESSION_COLUMNS = 12


class ImageSink:
    """Where images go: a TensorBoard writer, or PNG files under a directory."""

    def __init__(self, writer: SummaryWriter | None, png_dir: Path) -> None:
        self.writer = writer
        self.png_dir = png_dir

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """Log a (3, H, W) image in [0, 1] under ``tag`` at ``step``."""
        if self.writer is not None:
            self.writer.add_image(tag, image, global_step=step)
            return
        path = self.png_dir / f"step_{step:08d}" / (tag.replace("/", "_") + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        viz.save_png(image, path)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()


def log_evaluation(
    sink: ImageSink,
    evaluation: Evaluation,
    images01: torch.Tensor,
    step: int,
    max_images: int,
) -> None:
    """Per-image panels, the overlay grid and the deletion-curve figure of one evaluation."""
    overlays = {name: viz.overlay(images01, maps) for name, maps in evaluation.maps.items()}
    for index in range(min(max_images, images01.shape[0])):
        columns = [images01[index]] + [overlays[name][index] for name in overlays]
        sink.image(f"dave/probe/{index}", viz.make_panel(columns), step)
    sink.image("dave/probe_grid", make_grid(overlays["dave"], nrow=8, padding=2), step)
    if evaluation.curves:
        figure = viz.plot_curves(
            {name: (x.numpy(), y.numpy()) for name, (x, y) in evaluation.curves.items()},
            title=f"Pixel deletion, step {step}",
            xlabel="fraction of pixels removed",
            ylabel="target softmax probability",
        )
        sink.image("dave/deletion_curves", viz.figure_to_tensor(figure), step)
    sink.flush()


def log_progression(
    sink: ImageSink,
    maps_by_step: Sequence[tuple[int, torch.Tensor]],
    images01: torch.Tensor,
    step: int,
    max_images: int,
) -> None:
    """For each probe image: the image, then its DAVE overlay at each evaluation, in order."""
    if len(maps_by_step) > MAX_PROGRESSION_COLUMNS:
        picks = torch.linspace(0, len(maps_by_step) - 1, MAX_PROGRESSION_COLUMNS).round().long()
        maps_by_step = [maps_by_step[i] for i in picks.tolist()]
    overlays = [viz.overlay(images01, maps) for _, maps in maps_by_step]
    for index in range(min(max_images, images01.shape[0])):
        columns = [images01[index]] + [overlay[index] for overlay in overlays]
        sink.image(f"dave/progression/{index}", viz.make_panel(columns), step)
    sink.flush()
