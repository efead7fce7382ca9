"""Explain image files: DAVE maps of a timm model or a Lightning checkpoint, as PNGs and tensors.

Images go through the model's own preprocessing (timm's eval transform from its data config for
timm models), and each image is explained on its own, so that its map does not depend on which
other images were passed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import clean_state_dict
from torch import nn
from tqdm import tqdm

from dave_lightning import viz
from dave_lightning.attribution import DAVE
from dave_lightning.attribution.model_info import model_device
from dave_lightning.errors import UsageError
from dave_lightning.loading import (
    Normalization,
    Transform,
    count_classes,
    image_files,
    load_weights,
    read_image,
    safe_load,
)


@dataclass
class Explanation:
    """DAVE maps (N, 1, H, W) of image files, with the images in [0, 1] as the model saw them,
    the explained classes, the predictions and the softmax probability of the explained class."""

    files: list[Path]
    images01: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor
    predictions: torch.Tensor
    probabilities: torch.Tensor
    settings: dict[str, Any]


def load_timm_model(
    name: str, weights: str | Path | None = None, *, trust: bool = False
) -> nn.Module:
    """A timm model, randomly initialised or with ``weights`` (a state dict file), in eval mode.

    The classifier is resized to the number of classes in the weights, so fine-tuned weights
    load without further options.
    """
    if not timm.is_model(name):
        raise UsageError(
            f"unknown timm model {name!r}; list the names with timm.list_models('*vit*')"
        )
    state = None
    if weights is not None:
        state = _state_dict(safe_load(weights, trust=trust, kind="weights file"), weights)
    model = timm.create_model(name, pretrained=False)
    if state is not None:
        classifier = state.get(f"{model.pretrained_cfg.get('classifier')}.weight")
        if classifier is not None and classifier.shape[0] != model.num_classes:
            model.reset_classifier(classifier.shape[0])
        load_weights(model, state, f"{weights} does not match timm model {name}")
    return model.eval()


def _state_dict(loaded: Any, path: str | Path) -> dict[str, Any]:
    """The state dict in a weights file, unwrapped from timm's ``state_dict``/``model`` keys."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise UsageError(
            f"{path}: not a state dict of tensors; save weights with "
            "torch.save(model.state_dict(), path)"
        )
    return clean_state_dict(loaded)


def explain_images(
    model: nn.Module,
    files: Sequence[str | Path],
    *,
    transform: Transform,
    normalization: Normalization,
    target: int | str = "pred",
    engine: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Explanation:
    """DAVE maps of image files (or directories of them) for the predicted or a fixed class.

    ``transform`` maps a PIL image to the model's normalised input and ``normalization`` is the
    (mean, std) it used, to show the images; ``engine`` holds DAVE's keyword arguments.
    """
    paths = image_files(files)
    dave = DAVE(model, **dict(engine or {}))
    device = model_device(model)
    images, maps, targets, predictions, probabilities = [], [], [], [], []
    bar = tqdm(paths, desc="explaining", unit="image", disable=None if progress else True)
    for index, path in enumerate(bar):
        image = transform(read_image(path)).unsqueeze(0).to(device)
        if index == 0:
            _check_target(target, count_classes(model, tuple(image.shape[-2:])))
        with torch.no_grad():
            logits = model(image)
        predicted = logits.argmax(1)
        explained = predicted if target == "pred" else torch.tensor([int(target)], device=device)
        maps.append(dave.attribute(image, explained).cpu())
        images.append(image.cpu())
        targets.append(explained.cpu())
        predictions.append(predicted.cpu())
        probabilities.append(logits.softmax(1).gather(1, explained[:, None])[:, 0].cpu())
    return Explanation(
        files=paths,
        images01=viz.denormalize(torch.cat(images), *normalization),
        maps=torch.cat(maps),
        targets=torch.cat(targets),
        predictions=torch.cat(predictions),
        probabilities=torch.cat(probabilities),
        settings={
            "engine": dave.settings(),
            "target": target,
            "mean": list(normalization[0]),
            "std": list(normalization[1]),
        },
    )


def _check_target(target: int | str, classes: int) -> None:
    if target != "pred" and not 0 <= int(target) < classes:
        raise UsageError(
            f"--target {target} is out of range: the model has {classes} classes "
            f"(0 to {classes - 1}); pass a class index or 'pred'"
        )


def write_explanation(explanation: Explanation, out: str | Path) -> list[Path]:
    """``<i>_<name>.png`` (image | DAVE overlay) per image and ``maps.pt`` with the tensors."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory for the explanations")
    out.mkdir(parents=True, exist_ok=True)
    overlays = viz.overlay(explanation.images01, explanation.maps)
    written = []
    for index, path in enumerate(explanation.files):
        png = out / f"{index:03d}_{path.stem}.png"
        viz.save_png(viz.make_panel([explanation.images01[index], overlays[index]]), png)
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
        },
        tensors,
    )
    return [*written, tensors]
