"""Images from disk: discovery, decoding, preprocessing for a model, and probes (docs/cli.md).

Folders follow torchvision's ``ImageFolder`` layout and extensions; a file reached by several
paths (symlinks) is used once. Probes are normalised like the model's inputs. Every problem
raises :class:`UsageError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, is_image_file, make_dataset
from torchvision.transforms import InterpolationMode

from dave_lightning.core.errors import UsageError, first_line
from dave_lightning.data import SHAPES, SyntheticShapes
from dave_lightning.models import ModelAdapter, Normalization
from dave_lightning.probe import Probe, check_probe

Transform = Callable[[Image.Image], torch.Tensor]


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
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(str(p)))
            )
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or directory; check the image paths")
    if not files:
        raise UsageError(
            f"no image files ({', '.join(IMG_EXTENSIONS)}) in {', '.join(map(str, paths))}"
        )
    return files


def model_input_size(model: ModelAdapter, image_size: int | None) -> tuple[int, int]:
    """``image_size`` when given, else the size read off the model; an error names the fix."""
    if image_size is not None:
        return image_size, image_size
    size = model.input_size
    if size is None:
        raise UsageError(
            f"cannot tell the input size of {type(model.model).__name__}; pass `image_size`"
        )
    return size


def preprocessing(
    model: ModelAdapter,
    *,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Transform, Normalization]:
    """PIL image → model input: timm's eval transform for timm models, else resize + normalise.

    The normalisation is ``mean``/``std`` when given, else the model's own, else ImageNet's.
    """
    size = model_input_size(model, image_size)
    normal = model.normalization(mean, std)
    transform = model.eval_transform(size, normal)
    if transform is not None:
        return transform, normal
    return lambda image: resize_normalize(image, size, normal), normal


def resize_normalize(
    image: Image.Image, size: tuple[int, int], normal: Normalization
) -> torch.Tensor:
    """(3, H, W) float tensor: the image resized to ``size`` (bicubic) and normalised."""
    resized = TF.resize(image, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.normalize(TF.to_tensor(resized), list(normal[0]), list(normal[1]))


def check_probe_source(spec: str | Path, masks: str | Path | None = None) -> None:
    """Refuse a probe spec (``synthetic`` or a directory) or masks folder that cannot be read,
    before any model is loaded."""
    if str(spec) == "synthetic":
        if masks is not None:
            raise UsageError("`masks` is for a `probe` folder; the synthetic probe has its own")
        return
    if not Path(spec).is_dir():
        raise UsageError(
            f"`probe` {spec}: no such directory; pass 'synthetic' or a folder with one "
            "subfolder of images per class"
        )
    if masks is not None and not Path(masks).is_dir():
        raise UsageError(f"`masks` {masks}: no such directory; pass the folder of probe masks")


def load_probe(
    spec: str | Path,
    model: ModelAdapter,
    *,
    num_probe: int = 16,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    masks: str | Path | None = None,
) -> tuple[Probe, Normalization]:
    """The probe ``synthetic`` or an ImageFolder-style directory, sized for ``model`` and
    normalised with ``mean``/``std`` (default: the model's own, else ImageNet's)."""
    check_probe_source(spec, masks)
    if (mean is None) != (std is None):
        raise UsageError("give both `mean` and `std`, or neither")
    size = model_input_size(model, image_size)
    channels = model.input_channels or 3
    try:
        classes = model.num_classes(torch.zeros(1, channels, *size))
    except ValueError as error:
        raise UsageError(f"{error}; pass `image_size` with the size it was trained on") from error
    normal = model.normalization(mean, std)
    if str(spec) == "synthetic":
        return synthetic_probe(num_probe, size, classes, normal), normal
    probe = folder_probe(spec, num_probe=num_probe, size=size, normal=normal, masks=masks)
    if int(probe.labels.max()) >= classes:
        raise UsageError(
            f"`probe` {spec} has {int(probe.labels.max()) + 1} class folders but the model has "
            f"{classes} classes; keep one folder per model class, in class-index order"
        )
    return probe, normal


def synthetic_probe(
    num_probe: int, size: tuple[int, int], classes: int, normal: Normalization
) -> Probe:
    """The first ``num_probe`` items of ``SyntheticShapes(split="probe")``, with their masks,
    normalised with ``normal`` (the model's (mean, std)) instead of the dataset's own."""
    if size[0] != size[1]:
        raise UsageError(f"the synthetic `probe` makes square images; the model takes {size}")
    if classes < 2:
        raise UsageError("the synthetic `probe` needs a model with at least 2 classes")
    dataset = SyntheticShapes(
        num_probe, split="probe", image_size=size[0], num_classes=min(classes, len(SHAPES))
    )
    images, labels, masks = zip(*(dataset[i] for i in range(num_probe)), strict=True)
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in (dataset.mean, dataset.std))
    pixels = torch.stack(images) * std + mean  # the pictures in [0, 1]
    pictures = TF.normalize(pixels, list(normal[0]), list(normal[1]))
    return Probe(pictures, torch.tensor(labels), torch.stack(masks))


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
    check_probe_source(directory, masks)
    try:
        _, class_to_idx = find_classes(directory)
        samples = _unique_files(
            make_dataset(directory, class_to_idx, IMG_EXTENSIONS, allow_empty=True), directory
        )
    except FileNotFoundError:
        samples = []
    if not samples:
        raise UsageError(
            f"`probe` {directory} holds no class subfolders with images; arrange them as "
            "DIR/<class>/<image>.png, like torchvision's ImageFolder"
        )
    picks = _round_robin(samples, num_probe)
    images = torch.stack([resize_normalize(read_image(path), size, normal) for path, _ in picks])
    labels = torch.tensor([label for _, label in picks])
    mask_tensor = None
    if masks is not None:
        mask_tensor = torch.stack(
            [_read_mask(Path(masks), Path(path), directory, size) for path, _ in picks]
        )
    probe = Probe(images, labels, mask_tensor)
    check_probe(probe)
    return probe


def _unique_files(samples: list[tuple[str, int]], directory: Path) -> list[tuple[str, int]]:
    """Each image file once: symlinks (a loop, say) can reach one file by several paths; the
    shortest path is kept, so the file keeps its own folder's class. A warning says so."""
    kept: dict[Path, tuple[str, int]] = {}
    for path, label in samples:
        key = Path(path).resolve()
        if key not in kept or len(Path(path).parts) < len(Path(kept[key][0]).parts):
            kept[key] = (path, label)
    if len(kept) < len(samples):
        warnings.warn(
            f"`probe` {directory}: {len(samples)} image paths lead to {len(kept)} files "
            "(symlinks reach some by more than one path); each file is used once, under its "
            "shortest path",
            UserWarning,
            stacklevel=3,
        )
    chosen = set(kept.values())
    return [sample for sample in samples if sample in chosen]


def _round_robin(samples: list[tuple[str, int]], count: int) -> list[tuple[str, int]]:
    """Up to ``count`` (path, class) pairs: each class's first image, then each one's second..."""
    per_class: dict[int, list[str]] = {}
    for path, label in samples:
        per_class.setdefault(label, []).append(path)
    picks = []
    for rank in range(max(len(files) for files in per_class.values())):
        for label in sorted(per_class):
            if rank < len(per_class[label]):
                picks.append((per_class[label][rank], label))
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
