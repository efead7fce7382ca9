"""The pictures of evaluations, drawn once for every sink and report.

Per probe image a panel with column titles (the image, then DAVE and each compared method, or
one column per evaluation), the label, the prediction with its probability and a red frame
when the prediction is wrong; the overlay grid; the deletion-curve figure; and, at the end of
a fit, each probe image's DAVE map across evaluations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from dave_lightning import viz
from dave_lightning.attribution.captum_methods import CAPTUM_PREFIX
from dave_lightning.evaluation import Evaluation
from dave_lightning.metrics.registry import curve_figure
from dave_lightning.sinks import ImageSink

METHOD_TITLES = {
    "dave": "DAVE",
    "input_x_gradient": "input x gradient",
    "input_x_effective": "input x effective",
}
WRONG = (0.85, 0.1, 0.1)
MAX_PROGRESSION_COLUMNS = 12


_CAPTUM_NAME = re.compile(r"(\w+)(?:\((\w+)\))?")


def method_title(name: str) -> str:
    """How a method is named in pictures: a Captum method by its class in words, "(NT)" for
    the noise tunnel (``captum:IntegratedGradients`` → "Integrated Gradients",
    ``captum:NoiseTunnel(Saliency)`` → "Saliency (NT)"), short enough for a 128-px column."""
    if name in METHOD_TITLES:
        return METHOD_TITLES[name]
    match = _CAPTUM_NAME.fullmatch(name.removeprefix(CAPTUM_PREFIX))
    if name.startswith(CAPTUM_PREFIX) and match is not None:
        return f"{_words(match[2])} (NT)" if match[2] else _words(match[1])
    return name.replace("_", " ")


def _words(camel_case: str) -> str:
    """``InputXGradient`` → "Input X Gradient"."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", camel_case)


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
    """One panel per metric with curves (deletion, insertion, …): its mean curves of every
    method, titled and labelled as the metric declares (docs/architecture.md, "Add a
    metric")."""
    by_metric: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for curve in evaluation.curves.values():
        label = curve.label if curve.control else f"{method_title(curve.method)}, {curve.label}"
        by_metric.setdefault(curve.metric, {})[label] = (curve.fractions, curve.values)
    panels = []
    for metric, curves in by_metric.items():
        figure = curve_figure(metric)
        panels.append(
            viz.CurvePanel(curves, f"{figure.title}, step {step}", figure.xlabel, figure.ylabel)
        )
    return viz.plot_curves(panels)


@dataclass
class Pictures:
    """Drawn pictures, not yet sent: images (tag → (3, H, W) in [0, 1], caption) and figures."""

    images: dict[str, tuple[torch.Tensor, str | None]] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)

    def send(self, sinks: Sequence[ImageSink], step: int) -> None:
        """Every picture to every sink, at ``step``."""
        for sink in sinks:
            for tag, (image, caption) in self.images.items():
                sink.log_image(tag, image, step, caption)
            for tag, figure in self.figures.items():
                sink.log_figure(tag, figure, step)
            sink.flush()


def evaluation_pictures(
    prefix: str,
    evaluation: Evaluation,
    images01: torch.Tensor | None,
    step: int,
    max_images: int,
) -> Pictures:
    """Panels ``<prefix>/probe/<i>``, ``<prefix>/probe_grid`` and, when the evaluation has
    curves, ``<prefix>/deletion_curves`` (a panel per curve metric: deletion, insertion)."""
    pictures = Pictures()
    for index, image in enumerate(probe_panels(evaluation, images01, max_images)):
        caption = prediction_caption(evaluation, index)[0]
        pictures.images[f"{prefix}/probe/{index}"] = (image, caption)
    grid = make_grid(heatmaps(images01, evaluation.maps["dave"]), nrow=8, padding=2)
    pictures.images[f"{prefix}/probe_grid"] = (grid, None)
    if evaluation.curves:
        pictures.figures[f"{prefix}/deletion_curves"] = curves_figure(evaluation, step)
    return pictures


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


def progression_pictures(
    prefix: str,
    columns: Sequence[tuple[str, torch.Tensor]],
    images01: torch.Tensor,
    max_images: int,
) -> Pictures:
    """``<prefix>/progression/<i>``: each probe image's DAVE map across evaluations."""
    panels = progression_panels(columns, images01, max_images)
    return Pictures({f"{prefix}/progression/{i}": (image, None) for i, image in enumerate(panels)})
