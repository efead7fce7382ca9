"""The pictures of evaluations, drawn once for every sink and report.

Per probe image a panel with column titles (the image, then DAVE and each compared method, or
one column per evaluation), the label, the prediction with its probability and a red frame
when the prediction is wrong; the overlay grid; the deletion-curve figure; and, at the end of
a fit, each probe image's DAVE map across evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from dave_lightning import viz
from dave_lightning.evaluation import Evaluation
from dave_lightning.sinks import ImageSink

METHOD_TITLES = {
    "dave": "DAVE",
    "input_x_gradient": "input x gradient",
    "input_x_effective": "input x effective",
}
ORDER_TITLES = {"lerf": "least relevant first", "morf": "most relevant first", "random": "random"}
WRONG = (0.85, 0.1, 0.1)
MAX_PROGRESSION_COLUMNS = 12


def method_title(name: str) -> str:
    """How a method is named in pictures."""
    return METHOD_TITLES.get(name, name.replace("_", " "))


def prediction_caption(evaluation: Evaluation, index: int) -> tuple[str, bool]:
    """ "label L · pred P (p)" for one probe image, and whether the prediction is wrong."""
    prediction = int(evaluation.predictions[index])
    text = f"pred {prediction}"
    if evaluation.probabilities is not None:
        text += f" ({float(evaluation.probabilities[index]):.2f})"
    if evaluation.labels is None:
        return text, False
    label = int(evaluation.labels[index])
    return f"label {label} · {text}", label != prediction


def panel(
    image01: torch.Tensor | None,
    columns: Sequence[torch.Tensor],
    titles: Sequence[str],
    evaluation: Evaluation | None = None,
    index: int = 0,
) -> torch.Tensor:
    """One probe image's panel: the image (when known), then ``columns``, titled and captioned."""
    tiles = list(columns) if image01 is None else [image01, *columns]
    names = list(titles) if image01 is None else ["image", *titles]
    if evaluation is None:
        return viz.labelled_panel(tiles, names)
    caption, wrong = prediction_caption(evaluation, index)
    return viz.labelled_panel(tiles, names, caption, [WRONG] * len(tiles) if wrong else None)


def heatmaps(images01: torch.Tensor | None, maps: torch.Tensor) -> torch.Tensor:
    """Maps over their images, or alone (colorized) when the images are not known."""
    return viz.colorize(maps) if images01 is None else viz.overlay(images01, maps)


def probe_panels(
    evaluation: Evaluation, images01: torch.Tensor | None, max_images: int
) -> list[torch.Tensor]:
    """Per probe image (up to ``max_images``): the image (if known), then each method's map."""
    columns = {name: heatmaps(images01, maps) for name, maps in evaluation.maps.items()}
    titles = [method_title(name) for name in columns]
    count = len(evaluation.targets)
    return [
        panel(
            None if images01 is None else images01[i],
            [column[i] for column in columns.values()],
            titles,
            evaluation,
            i,
        )
        for i in range(min(max_images, count))
    ]


def curves_figure(evaluation: Evaluation, step: int) -> Figure:
    """Mean deletion curves of every method and order."""
    curves = {}
    for key, (x, y) in evaluation.curves.items():
        method, _, name = key.partition("/")
        order = name.split("_")[1]
        label = ORDER_TITLES.get(order, order)
        curves[label if order == "random" else f"{method_title(method)}, {label}"] = (x, y)
    return viz.plot_curves(
        curves,
        title=f"Pixel deletion, step {step}",
        xlabel="fraction of pixels removed",
        ylabel="target softmax probability",
    )


def log_evaluation(
    sinks: Sequence[ImageSink],
    prefix: str,
    evaluation: Evaluation,
    images01: torch.Tensor | None,
    step: int,
    max_images: int,
) -> None:
    """Panels ``<prefix>/probe/<i>``, ``<prefix>/probe_grid`` and ``<prefix>/deletion_curves``."""
    panels = probe_panels(evaluation, images01, max_images)
    grid = make_grid(heatmaps(images01, evaluation.maps["dave"]), nrow=8, padding=2)
    figure = curves_figure(evaluation, step) if evaluation.curves else None
    for sink in sinks:
        for index, image in enumerate(panels):
            caption = prediction_caption(evaluation, index)[0]
            sink.log_image(f"{prefix}/probe/{index}", image, step, caption)
        sink.log_image(f"{prefix}/probe_grid", grid, step)
        if figure is not None:
            sink.log_figure(f"{prefix}/deletion_curves", figure, step)
        sink.flush()


def progression_panels(
    columns: Sequence[tuple[str, torch.Tensor]], images01: torch.Tensor, max_images: int
) -> list[torch.Tensor]:
    """For each probe image: the image, then its DAVE overlay in each (title, maps) column.

    More than 12 columns are thinned to 12 evenly spaced ones.
    """
    if len(columns) > MAX_PROGRESSION_COLUMNS:
        picks = torch.linspace(0, len(columns) - 1, MAX_PROGRESSION_COLUMNS).round().long()
        columns = [columns[i] for i in picks.tolist()]
    overlays = [viz.overlay(images01, maps) for _, maps in columns]
    titles = [title for title, _ in columns]
    return [
        panel(images01[i], [overlay[i] for overlay in overlays], titles)
        for i in range(min(max_images, images01.shape[0]))
    ]


def log_progression(
    sinks: Sequence[ImageSink],
    prefix: str,
    columns: Sequence[tuple[str, torch.Tensor]],
    images01: torch.Tensor,
    step: int,
    max_images: int,
) -> None:
    """``<prefix>/progression/<i>``: each probe image's DAVE map across evaluations."""
    panels = progression_panels(columns, images01, max_images)
    for sink in sinks:
        for index, image in enumerate(panels):
            sink.log_image(f"{prefix}/progression/{index}", image, step)
        sink.flush()
