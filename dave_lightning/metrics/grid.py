"""Grid probes for the grid pointing game: k×k mosaics of images of distinct classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dave_lightning.metrics._checks import as_target


class GridProbe(NamedTuple):
    """Composed grids and what sits in each cell (cells row-major, 0-based).

    Score one grid per cell: ``items = probe.items()``, ``maps = attr(items.images,
    items.targets)``, then ``grid_pointing_game(maps, k, items.cells)``.
    """

    images: torch.Tensor  # (G, C, H, W)
    targets: torch.Tensor  # (G, k·k) int64: class of the image in each cell
    cells: torch.Tensor  # (G, k·k) int64: the cell index of each entry, 0..k·k-1

    def items(self) -> GridItems:
        """One item per (grid, cell), the unit the grid pointing game scores."""
        cells = self.cells.shape[1]
        return GridItems(
            self.images.repeat_interleave(cells, 0), self.targets.flatten(), self.cells.flatten()
        )


class GridItems(NamedTuple):
    """Per (grid, cell) item: the grid image, the class in that cell, and the cell's index."""

    images: torch.Tensor  # (G·k·k, C, H, W)
    targets: torch.Tensor  # (G·k·k,) int64
    cells: torch.Tensor  # (G·k·k,) int64


@torch.no_grad()
def _rank(
    images: torch.Tensor,
    labels: torch.Tensor,
    model: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> torch.Tensor:
    """Indices of the correctly classified images, most confident (true-class softmax) first."""
    correct, confidence = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].float()
        probs = model(chunk).float().softmax(-1)
        label = labels[start : start + batch_size]
        correct.append(probs.argmax(-1) == label)
        confidence.append(probs.gather(1, label[:, None])[:, 0])
    correct_t, confidence_t = torch.cat(correct), torch.cat(confidence)
    order = confidence_t.argsort(descending=True, stable=True)
    return order[correct_t[order]]


def _assign(ranked_labels: list[int], cells: int, max_grids: int | None) -> list[list[int]]:
    """Greedy grids of distinct classes: each takes the next image of the best-ranked classes.

    Returns per grid the positions (into the ranked list) of its cells' images, rotated by the
    grid index so that the most confident image does not always sit in cell 0.
    """
    pools: dict[int, list[int]] = {}
    for position, label in enumerate(ranked_labels):
        pools.setdefault(label, []).append(position)
    grids: list[list[int]] = []
    while max_grids is None or len(grids) < max_grids:
        heads = sorted(pool[0] for pool in pools.values() if pool)
        if len(heads) < cells:
            break
        chosen = heads[:cells]
        for position in chosen:
            pools[ranked_labels[position]].pop(0)
        shift = len(grids) % cells
        grids.append(chosen[shift:] + chosen[:shift])
    return grids


def make_grid_probe(
    images: torch.Tensor,
    labels: torch.Tensor,
    k: int = 2,
    model: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    size: tuple[int, int] | None = None,
    max_grids: int | None = None,
    batch_size: int = 64,
) -> GridProbe:
    """Compose k×k grids of images of distinct classes, each grid resized to ``size``.

    Each image appears at most once; grids are made until fewer than k·k classes remain or
    ``max_grids``.

    Args:
        images: (B, C, H, W) float images.
        labels: (B,) their classes.
        k: cells per side.
        model: images → logits; with it, only correctly classified images are used, most
            confident first; without it, images in the given order.
        size: (H, W) of the grids, the model's input size (default: the images' own); a
            multiple of ``k``.
        max_grids: at most this many grids.
        batch_size: images per model call when ranking.

    Returns:
        A :class:`GridProbe` (``items()`` gives what the grid pointing game scores).

    Raises:
        ValueError: for malformed inputs, a size not divisible by ``k``, or fewer than k·k
            distinct classes.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (B, C, H, W) tensor")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating, got {images.dtype}; call .float() first")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    labels = as_target(labels, len(images), images.device, name="labels")
    height, width = size if size is not None else images.shape[-2:]
    if height % k or width % k:
        raise ValueError(f"k={k} must divide the grid size {height}×{width}; pass another size")
    ranked = (
        torch.arange(len(images), device=images.device)
        if model is None
        else _rank(images, labels, model, batch_size)
    )
    grids = _assign(labels[ranked].tolist(), k * k, max_grids)
    if not grids:
        raise ValueError(
            f"need images of at least {k * k} distinct classes"
            + (" among the correctly classified ones" if model is not None else "")
            + f" to compose a {k}×{k} grid"
        )
    picked = ranked[torch.tensor(grids, device=images.device)]  # (G, k·k)
    cells = torch.arange(k * k, device=images.device).expand(len(grids), k * k).clone()
    mosaics = _mosaics(images, picked, k, (height, width))
    return GridProbe(images=mosaics, targets=labels[picked], cells=cells)


def _mosaics(
    images: torch.Tensor, picked: torch.Tensor, k: int, size: tuple[int, int]
) -> torch.Tensor:
    """(G, C, H, W) grids: the images ``picked`` (G, k·k) resized into their cells, row-major."""
    height, width = size
    tiles = F.interpolate(
        images[picked.flatten()],
        size=(height // k, width // k),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    count, channels = len(picked), images.shape[1]
    return (
        tiles.view(count, k, k, channels, height // k, width // k)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(count, channels, height, width)
    )
