"""Probe sets: the fixed, held-out images whose explanations are tracked across training.

A probe is built once from tensors, a ``Dataset`` or a ``DataLoader`` (the first ``num_probe``
items in index order, so the choice never depends on shuffling; a loader's items go through its
own ``collate_fn``, so the probe is what the loader yields) and validated early, so that a bad
probe fails at ``setup`` and not after an hour of training.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from dave_lightning.core.errors import describe
from dave_lightning.core.validation import check_finite, check_images
from dave_lightning.models import ModelAdapter

ProbeSource = tuple | Dataset | DataLoader


@dataclass
class Probe:
    """Images (N, C, H, W) float32, labels (N,) int64, optional object masks (N, H, W) bool and
    named regions (name → (N, H, W) bool) whose attribution share is tracked too."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    regions: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def digest(self) -> str:
        """SHA-256 of the probe images, so that runs with different probes are never compared."""
        data = self.images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()


def build_probe(
    source: ProbeSource,
    num_probe: int,
    regions: Mapping[str, torch.Tensor] | None = None,
) -> Probe:
    """Probe from ``(images, labels[, masks])``, a Dataset or a DataLoader."""
    if isinstance(source, tuple):
        if len(source) not in (2, 3):
            raise ValueError(
                f"a probe tuple must be (images, labels) or (images, labels, masks), "
                f"got {len(source)} elements"
            )
        count = len(source[0])
        if count > num_probe:
            warnings.warn(
                f"the probe tuple holds {count} images; the first num_probe={num_probe} are used "
                f"(pass num_probe={count} to use them all)",
                stacklevel=3,
            )
        items = [t[:num_probe] if isinstance(t, torch.Tensor) else t for t in source]
        images, labels, masks = (*items, None)[:3]
    else:
        images, labels, masks = _collect(source, num_probe)
    probe = Probe(
        images=_as_images(images),
        labels=_as_labels(labels),
        masks=None if masks is None else torch.as_tensor(masks),
        regions=None if regions is None else {k: torch.as_tensor(v) for k, v in regions.items()},
    )
    if probe.regions is not None:
        probe.regions = {name: m[: len(probe)] for name, m in probe.regions.items()}
    check_probe(probe)
    return probe


def check_probe(probe: Probe) -> None:
    """Shape, type and value checks that need no model; errors name the problem and the fix."""
    n, _, height, width = probe.images.shape
    if n == 0:
        raise ValueError("the probe is empty; pass at least one image (num_probe >= 1)")
    check_finite("probe images", probe.images, "every evaluation would fail; drop or fix them")
    if probe.labels.shape != (n,):
        raise ValueError(
            f"probe labels have shape {tuple(probe.labels.shape)}, expected ({n},): "
            "one class index per probe image"
        )
    named = {"masks": probe.masks, **(probe.regions or {})}
    for name, masks in named.items():
        if masks is None:
            continue
        if masks.shape != (n, height, width):
            raise ValueError(
                f"probe {name} have shape {tuple(masks.shape)} but the images need "
                f"({n}, {height}, {width}); pass one (H, W) mask per probe image"
            )
        if masks.dtype != torch.bool:
            raise TypeError(f"probe {name} must be boolean, got {masks.dtype}; use masks > 0.5")
    if probe.masks is not None:
        _check_masks_mark_objects(probe.masks)


def _check_masks_mark_objects(masks: torch.Tensor) -> None:
    """Every object mask marks part of its image: an empty one gives no energy pointing game
    (NaN), a full one a meaningless 1."""
    inside = masks.flatten(1).sum(1)
    for problem, bad in (
        ("mark no pixel", inside == 0),
        ("mark every pixel", inside == masks[0].numel()),
    ):
        if bool(bad.any()):
            items = ", ".join(map(str, bad.nonzero().flatten().tolist()[:8]))
            raise ValueError(
                f"the object masks of probe images {items} {problem}, so energy_pg means nothing "
                "there; pass masks that mark each image's object, or drop those images"
            )


def check_probe_for_model(probe: Probe, model: ModelAdapter) -> None:
    """The checks that need the model: channels, a forward of one probe image, label range."""
    channels = model.input_channels
    if channels is not None and probe.images.shape[1] != channels:
        raise ValueError(
            f"probe images have {probe.images.shape[1]} channels but the model expects "
            f"{channels}; preprocess the probe like the training data"
        )
    try:
        classes = model.num_classes(probe.images)
    except ValueError as error:
        raise ValueError(
            f"the model cannot take the probe images ({error}); resize and normalise the "
            "probe like the training data, or pass forward_fn"
        ) from error
    if int(probe.labels.max()) >= classes or int(probe.labels.min()) < 0:
        raise ValueError(
            f"probe labels span [{int(probe.labels.min())}, {int(probe.labels.max())}] but "
            f"the model has {classes} classes; pass labels in [0, {classes - 1}]"
        )


def _collect(source: Dataset | DataLoader, num_probe: int) -> tuple[Any, Any, Any]:
    """The first ``num_probe`` items of a dataset (index order) or a loader (index order through
    its ``collate_fn``; iteration order for an iterable dataset)."""
    dataset = source.dataset if isinstance(source, DataLoader) else source
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        items = []
        for batch in source:
            items.extend(_unbatch(batch))
            if len(items) >= num_probe:
                break
        items = items[:num_probe]
    else:
        items = [dataset[i] for i in range(min(num_probe, len(dataset)))]
        if isinstance(source, DataLoader) and items:
            items = _unbatch(_collated(source, items))
    if not items:
        raise ValueError("the probe source holds no items; pass a non-empty dataset or loader")
    fields = [_fields(item) for item in items]
    if isinstance(fields[0][0], Image.Image):
        raise TypeError(
            "probe items are PIL images; give the dataset the transform its training data gets "
            "(e.g. torchvision's ToTensor and Normalize), or pass a DataLoader whose collate_fn "
            "prepares them"
        )
    images = torch.stack([torch.as_tensor(f[0]) for f in fields])
    labels = torch.tensor([int(f[1]) for f in fields])
    masks = None if fields[0][2] is None else torch.stack([torch.as_tensor(f[2]) for f in fields])
    return images, labels, masks


def _collated(loader: DataLoader, items: list[Any]) -> Any:
    """``items`` as the loader's own ``collate_fn`` batches them (what training sees)."""
    try:
        return loader.collate_fn(items)
    except Exception as error:
        image = _fields(items[0])[0] if isinstance(items[0], (Mapping, Sequence)) else None
        if isinstance(image, Image.Image):
            raise TypeError(
                "probe items are PIL images that the loader's collate_fn cannot batch; give the "
                "dataset the transform its training data gets (e.g. torchvision's ToTensor and "
                "Normalize)"
            ) from error
        raise ValueError(
            f"the probe loader's collate_fn failed on its first {len(items)} items "
            f"({describe(error)}); pass a loader whose collate_fn batches them"
        ) from error


IMAGE_KEYS = ("image", "images", "pixel_values")
LABEL_KEYS = ("label", "labels", "target")
MASK_KEYS = ("mask", "masks")


def _fields(item: Any) -> tuple[Any, Any, Any]:
    """(image, label, mask or None) from a tuple/list item or a dict with those keys.

    Dict items may use torchvision-style keys (``image``, ``label``, ``mask``) or
    HuggingFace-style ones (``pixel_values``, ``labels``).
    """
    if isinstance(item, Mapping):
        image = next((item[key] for key in IMAGE_KEYS if key in item), None)
        label = next((item[key] for key in LABEL_KEYS if key in item), None)
        if image is None or label is None:
            raise TypeError(
                f"probe dict items need an image ({', '.join(IMAGE_KEYS)}) and a label "
                f"({', '.join(LABEL_KEYS)}); got keys {sorted(item)}"
            )
        return image, label, next((item[key] for key in MASK_KEYS if key in item), None)
    if isinstance(item, Sequence) and len(item) >= 2:
        return item[0], item[1], item[2] if len(item) > 2 else None
    raise TypeError(
        "probe items must be (image, label[, mask]) or a dict with 'image' and 'label'; "
        f"got {type(item).__name__}"
    )


def _unbatch(batch: Any) -> list[Any]:
    """Split a collated batch (tuple of tensors or dict of tensors, e.g. a HuggingFace
    ``BatchFeature``) into items."""
    if isinstance(batch, Mapping):
        size = len(next(iter(batch.values())))
        return [{key: value[i] for key, value in batch.items()} for i in range(size)]
    return list(zip(*batch, strict=False))


def _as_images(images: Any) -> torch.Tensor:
    images = torch.as_tensor(images)
    check_images("probe images", images, "stack single images with torch.stack")
    return images.detach().to("cpu", torch.float32).clone()


def _as_labels(labels: Any) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"probe labels must be integer class indices, got {labels.dtype}")
    return labels.detach().to("cpu", torch.long).clone()


def val_dataloader(trainer: pl.Trainer) -> DataLoader:
    """The trainer's first validation dataloader, wherever the user defined it."""
    source = trainer.fit_loop.epoch_loop.val_loop._data_source
    loaders = source.dataloader() if source.is_defined() else None
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if loaders is None:
        raise ValueError(
            "probe='val' needs a validation dataloader; pass val_dataloaders to trainer.fit, "
            "define val_dataloader(), or give DAVEMonitor a probe (images, labels[, masks])"
        )
    return loaders
