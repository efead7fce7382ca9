"""Loading what users point the CLI at: model classes, checkpoints, weights, images and probes.

Files load with ``torch.load(weights_only=True)``, which cannot run code; a file that needs
full unpickling is refused unless the caller trusts it. Every problem with the input raises
:class:`UsageError` with a one-line message that names the problem and the fix.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn
from torchvision.transforms import InterpolationMode

from dave_lightning.attribution.model_info import input_channels, model_device
from dave_lightning.data import SHAPES, SyntheticShapes
from dave_lightning.errors import UsageError
from dave_lightning.probe import Probe, check_probe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*m")

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
Transform = Callable[[Image.Image], torch.Tensor]


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line error reports."""
    text = _TERMINAL_CODES.sub("", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ------------------------------------------------------------------ classes and checkpoints


def import_class(spec: str) -> type[nn.Module]:
    """The module class named ``pkg.mod:Class`` (the current directory is importable)."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise UsageError(
            f"--module {spec!r} is not of the form pkg.mod:Class; e.g. my_project.models:LitViT"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure of the user's import is a problem with the input
        raise UsageError(
            f"cannot import {module_name!r} ({type(error).__name__}: {first_line(error)}); "
            "check the name and that its package is installed or on PYTHONPATH"
        ) from error
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(
            f"module {module_name!r} has no {class_name!r}; pass the LightningModule class the "
            "checkpoints were trained with"
        )
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UsageError(f"{spec} is not a LightningModule class; pass pkg.mod:YourModuleClass")
    return cls


def safe_load(path: str | Path, *, trust: bool = False, kind: str = "checkpoint") -> Any:
    """``torch.load`` on the CPU, refusing files that need full unpickling unless trusted."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such {kind} file; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            needed = _UNSUPPORTED_GLOBAL.search(str(error))
            if needed is None:
                raise _unreadable(path, kind, error) from error
            raise UsageError(
                f"{path}: refusing to load; the {kind} holds the Python object "
                f"{needed.group(1)}, and unpickling it could run arbitrary code; pass "
                "--trust-checkpoint if you trust where the file came from"
            ) from error
    except Exception as error:  # foreign bytes make torch.load fail in many ways
        raise _unreadable(path, kind, error) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a trusted file can still be corrupt or need missing code
        raise _unreadable(path, kind, error) from error


def _unreadable(path: Path, kind: str, error: BaseException) -> UsageError:
    return UsageError(
        f"{path}: not a readable {kind} ({type(error).__name__}: {first_line(error)[:120]}); "
        "it may be corrupt, truncated or not written by torch.save"
    )


def load_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint as a dict holding at least ``state_dict``."""
    checkpoint = safe_load(path, trust=trust)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UsageError(
            f"{path}: not a Lightning checkpoint (no 'state_dict'); pass a .ckpt file written "
            "by Trainer.save_checkpoint or ModelCheckpoint"
        )
    return checkpoint


def build_module(cls: type[nn.Module], checkpoint: dict[str, Any], path: str | Path) -> nn.Module:
    """``cls`` from the checkpoint's hyper-parameters, weights loaded strictly, in eval mode."""
    hyper_parameters = dict(checkpoint.get("hyper_parameters") or {})
    try:
        module = cls(**_init_arguments(cls, hyper_parameters))
    except Exception as error:  # the user's constructor can fail in any way
        raise UsageError(
            f"{path}: cannot build {cls.__name__} from the checkpoint's hyper_parameters "
            f"{sorted(hyper_parameters)} ({type(error).__name__}: {first_line(error)}); pass the "
            "--module class that wrote this checkpoint"
        ) from error
    if hasattr(module, "on_load_checkpoint"):
        module.on_load_checkpoint(checkpoint)
    load_weights(module, checkpoint["state_dict"], f"{path} does not match {cls.__name__}")
    return module.eval()


def _init_arguments(cls: type[nn.Module], hyper_parameters: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters ``cls.__init__`` accepts (all of them if it takes ``**kwargs``)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return hyper_parameters
    names = {p.name for p in parameters}
    return {key: value for key, value in hyper_parameters.items() if key in names}


def load_weights(module: nn.Module, state_dict: dict[str, Any], problem: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line summary of any key or shape mismatch."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [
        key
        for key, value in expected.items()
        if key in state_dict and getattr(state_dict[key], "shape", None) != value.shape
    ]
    found = [
        f"{len(keys)} {what} (e.g. {keys[0]!r})"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", reshaped),
        )
        if keys
    ]
    if found:
        raise UsageError(
            f"{problem}: {', '.join(found)}; pass the model class (and settings) that wrote it"
        )
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise UsageError(f"{problem}: {first_line(error)}") from error


def load_lightning_module(
    path: str | Path, cls: type[nn.Module], *, trust: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The module of one checkpoint (eval mode, CPU) and the checkpoint's epoch and step."""
    checkpoint = load_checkpoint(path, trust=trust)
    module = build_module(cls, checkpoint, path)
    info = {key: checkpoint.get(key) for key in ("epoch", "global_step")}
    return module, info


# ------------------------------------------------------------------------- preprocessing


def input_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) the model takes: a timm ``img_size`` or a torchvision ``image_size`` attribute."""
    for module in model.modules():
        for name in ("img_size", "image_size"):
            size = getattr(module, name, None)
            if isinstance(size, int) and not isinstance(size, bool):
                return size, size
            if isinstance(size, (tuple, list)) and len(size) == 2:
                return int(size[0]), int(size[1])
    return None


def model_input_size(model: nn.Module, image_size: int | None) -> tuple[int, int]:
    """``image_size`` when given, else the size read off the model; an error names the fix."""
    if image_size is not None:
        return image_size, image_size
    size = input_size(model)
    if size is None:
        raise UsageError(f"cannot tell the input size of {type(model).__name__}; pass --image-size")
    return size


def timm_data_config(model: nn.Module, size: tuple[int, int]) -> dict[str, Any] | None:
    """timm's preprocessing config of the first timm (sub)module, at input size ``size``."""
    for module in model.modules():
        if isinstance(getattr(module, "pretrained_cfg", None), dict):
            return resolve_data_config({"input_size": (3, *size)}, model=module)
    return None


def normalization(
    config: dict[str, Any] | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Normalization:
    """Per-channel mean and std: as given, else from timm's data config, else ImageNet's."""
    config = config or {}
    mean = mean or config.get("mean") or IMAGENET_MEAN
    std = std or config.get("std") or IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def preprocessing(
    model: nn.Module,
    *,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Transform, Normalization]:
    """PIL image → model input: timm's eval transform for timm models, else resize + normalise."""
    size = model_input_size(model, image_size)
    config = timm_data_config(model, size)
    normal = normalization(config, mean, std)
    if config is not None:
        config.update(mean=normal[0], std=normal[1])
        return create_transform(**config), normal
    return lambda image: resize_normalize(image, size, normal), normal


def resize_normalize(
    image: Image.Image, size: tuple[int, int], normal: Normalization
) -> torch.Tensor:
    """(3, H, W) float tensor: the image resized to ``size`` (bicubic) and normalised."""
    resized = TF.resize(image, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.normalize(TF.to_tensor(resized), list(normal[0]), list(normal[1]))


# ----------------------------------------------------------------------------- images


def read_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """An image file decoded by Pillow and converted to ``mode``."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UsageError(
            f"cannot read image {path} ({first_line(error)}); pass PNG, JPEG or another "
            "format Pillow can open"
        ) from error


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Image files from files and directories (searched recursively, in sorted order)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if _is_image(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or directory; check the image paths")
    if not files:
        raise UsageError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, paths))}"
        )
    return files


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------- probes


def load_probe(
    spec: str | Path,
    model: nn.Module,
    *,
    num_probe: int = 16,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    masks: str | Path | None = None,
) -> tuple[Probe, Normalization]:
    """The probe ``synthetic`` or an ImageFolder-style directory, sized for ``model``."""
    size = model_input_size(model, image_size)
    classes = count_classes(model, size)
    if str(spec) == "synthetic":
        if masks is not None:
            raise UsageError("--masks is for --probe DIR; the synthetic probe has its own masks")
        return synthetic_probe(num_probe, size, classes), (
            SyntheticShapes.mean,
            SyntheticShapes.std,
        )
    normal = normalization(timm_data_config(model, size), mean, std)
    probe = folder_probe(spec, num_probe=num_probe, size=size, normal=normal, masks=masks)
    if int(probe.labels.max()) >= classes:
        raise UsageError(
            f"--probe {spec} has {int(probe.labels.max()) + 1} class folders but the model has "
            f"{classes} classes; keep one folder per model class, in class-index order"
        )
    return probe, normal


def count_classes(model: nn.Module, size: tuple[int, int]) -> int:
    """Number of logits the model returns for one blank image of ``size``."""
    channels = input_channels(model) or 3
    blank = torch.zeros(1, channels, *size, device=model_device(model))
    try:
        with torch.no_grad():
            logits = model(blank)
    except Exception as error:  # the user's forward can fail in any way
        raise UsageError(
            f"{type(model).__name__} cannot take images of size {size} ({type(error).__name__}: "
            f"{first_line(error)}); pass --image-size with the size it was trained on"
        ) from error
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise UsageError(
            f"{type(model).__name__}.forward must return logits (batch, classes); make forward "
            "return the classification logits"
        )
    return int(logits.shape[1])


def synthetic_probe(num_probe: int, size: tuple[int, int], classes: int) -> Probe:
    """The first ``num_probe`` items of ``SyntheticShapes(split="probe")``, with their masks."""
    if size[0] != size[1]:
        raise UsageError(f"--probe synthetic makes square images; the model takes {size}")
    if classes < 2:
        raise UsageError("--probe synthetic needs a model with at least 2 classes")
    dataset = SyntheticShapes(
        num_probe, split="probe", image_size=size[0], num_classes=min(classes, len(SHAPES))
    )
    images, labels, masks = zip(*(dataset[i] for i in range(num_probe)), strict=True)
    return Probe(torch.stack(images), torch.tensor(labels), torch.stack(masks))


def folder_probe(
    directory: str | Path,
    *,
    num_probe: int,
    size: tuple[int, int],
    normal: Normalization,
    masks: str | Path | None = None,
) -> Probe:
    """Probe from ``DIR/<class>/<image>`` (classes in sorted order, as torchvision's ImageFolder).

    Images are taken round-robin over the classes, so that a small probe covers them all, and
    resized to ``size`` without cropping, so that masks (``masks/<class>/<image>.png``, resized
    with nearest neighbours) stay aligned.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(
            f"--probe {directory}: no such directory; pass 'synthetic' or a folder with one "
            "subfolder of images per class"
        )
    per_class = [
        sorted(p for p in folder.iterdir() if _is_image(p))
        for folder in sorted(p for p in directory.iterdir() if p.is_dir())
    ]
    if not any(per_class):
        raise UsageError(
            f"--probe {directory} holds no class subfolders with images; arrange them as "
            "DIR/<class>/<image>.png, like torchvision's ImageFolder"
        )
    picks = _round_robin(per_class, num_probe)
    images = torch.stack([resize_normalize(read_image(path), size, normal) for path, _ in picks])
    labels = torch.tensor([label for _, label in picks])
    mask_tensor = None
    if masks is not None:
        mask_tensor = torch.stack(
            [_read_mask(Path(masks), path, directory, size) for path, _ in picks]
        )
    probe = Probe(images, labels, mask_tensor)
    check_probe(probe)
    return probe


def _round_robin(per_class: list[list[Path]], count: int) -> list[tuple[Path, int]]:
    """Up to ``count`` (path, class) pairs: each class's first image, then each one's second..."""
    picks = []
    for rank in range(max(len(files) for files in per_class)):
        for label, files in enumerate(per_class):
            if rank < len(files):
                picks.append((files[rank], label))
    return picks[:count]


def _read_mask(masks: Path, image: Path, root: Path, size: tuple[int, int]) -> torch.Tensor:
    """Bool (H, W) mask of ``image`` from ``masks/<same relative path>.png``."""
    relative = image.relative_to(root)
    candidates = [masks / relative.with_suffix(".png"), masks / relative]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UsageError(
            f"no mask for {relative} in {masks}; put one PNG mask per probe image at "
            f"{candidates[0]}"
        )
    mask = TF.resize(read_image(path, "L"), list(size), interpolation=InterpolationMode.NEAREST)
    return TF.pil_to_tensor(mask)[0] > 127
