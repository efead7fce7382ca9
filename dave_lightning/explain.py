"""Explain image files: DAVE maps of a model, as labelled PNG panels and tensors.

Images go through the model's own preprocessing (timm's eval transform from its data config for
timm models), and each image is explained on its own, so that its map does not depend on which
other images were passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dave_lightning import viz
from dave_lightning.attribution import DAVE, DAVESettings
from dave_lightning.core.errors import UsageError
from dave_lightning.images import Transform, image_files, read_image
from dave_lightning.models import ModelAdapter, Normalization


@dataclass
class Explanation:
    """DAVE maps (N, 1, H, W) of image files, with the images in [0, 1] as the model saw them,
    the explained classes, the predictions and the softmax probability of each prediction."""

    files: list[Path]
    images01: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor
    predictions: torch.Tensor
    probabilities: torch.Tensor
    settings: dict[str, Any]
    warning: str | None = None


def explain_images(
    model: ModelAdapter,
    files: Sequence[str | Path],
    *,
    transform: Transform,
    normalization: Normalization,
    target: int | str = "pred",
    engine: DAVESettings | None = None,
    warning: str | None = None,
    progress: bool = False,
) -> Explanation:
    """DAVE maps of image files (or directories of them) for the predicted or a fixed class.

    ``transform`` maps a PIL image to the model's normalised input and ``normalization`` is the
    (mean, std) it used, to show the images; ``warning`` is printed on every panel (e.g. that
    the weights are random).
    """
    paths = image_files(files)
    dave = DAVE.from_settings(model, engine or DAVESettings())
    images, maps, targets, predictions, probabilities = [], [], [], [], []
    bar = tqdm(paths, desc="explaining", unit="image", disable=None if progress else True)
    for index, path in enumerate(bar):
        image = transform(read_image(path)).unsqueeze(0).to(model.device)
        if index == 0:  # every image is transformed to the same size
            _check_input(model, image, target)
        with model.attribution(), torch.no_grad():
            logits = model(image)
        predicted = logits.argmax(1)
        explained = (
            predicted if target == "pred" else torch.tensor([int(target)], device=image.device)
        )
        maps.append(dave.attribute(image, explained).cpu())
        images.append(image.cpu())
        targets.append(explained.cpu())
        predictions.append(predicted.cpu())
        probabilities.append(logits.softmax(1).gather(1, predicted[:, None])[:, 0].cpu())
    return Explanation(
        files=paths,
        images01=viz.denormalize(torch.cat(images), *normalization),
        maps=torch.cat(maps),
        targets=torch.cat(targets),
        predictions=torch.cat(predictions),
        probabilities=torch.cat(probabilities),
        settings={
            "engine": dave.settings.to_dict(),
            "target": target,
            "mean": list(normalization[0]),
            "std": list(normalization[1]),
        },
        warning=warning,
    )


def _check_input(model: ModelAdapter, image: torch.Tensor, target: int | str) -> None:
    """The model takes ``image`` (else the fix is `image_size`) and has the class ``target``."""
    try:
        classes = model.num_classes(image)
    except ValueError as error:
        raise UsageError(f"{error}; pass `image_size` with the size it was trained on") from error
    if target != "pred" and not 0 <= int(target) < classes:
        raise UsageError(
            f"`target` {target} is out of range: the model has {classes} classes "
            f"(0 to {classes - 1}); pass a class index or 'pred'"
        )


def write_explanation(explanation: Explanation, out: str | Path) -> list[Path]:
    """``<i>_<name>.png`` (image | DAVE overlay, labelled) per image and ``maps.pt``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"`out` {out} is a file; pass a directory for the explanations")
    out.mkdir(parents=True, exist_ok=True)
    overlays = viz.overlay(explanation.images01, explanation.maps)
    written = []
    for index, path in enumerate(explanation.files):
        png = out / f"{index:03d}_{path.stem}.png"
        target = int(explanation.targets[index])
        prediction = int(explanation.predictions[index])
        caption = (
            f"class {target} · pred {prediction} ({float(explanation.probabilities[index]):.2f})"
        )
        if explanation.warning:
            caption = f"{caption} · {explanation.warning}"
        titles = ["image", f"DAVE, class {target}"]
        panel = viz.labelled_panel([explanation.images01[index], overlays[index]], titles, caption)
        viz.save_png(panel, png)
        written.append(png)
    tensors = out / "maps.pt"
    torch.save(
        {
            "maps": explanation.maps,
            "targets": explanation.targets,
            "predictions": explanation.predictions,
            "probabilities": explanation.probabilities,
            "files": [str(path) for path in explanation.files],
            "settings": explanation.settings,
            "warning": explanation.warning,
        },
        tensors,
    )
    return [*written, tensors]
