"""Offline synthetic shapes with ground-truth object masks and an optional planted shortcut.

Each image shows one class-defining shape (large, opaque, light) on a dark, textured, noisy
background, plus up to two distractor shapes of other classes (smaller and fainter). Every
item is a pure function of ``(seed, split, index)``: it draws from its own numpy Generator and
never from a global RNG, so items are identical across processes, DataLoader workers and runs.

With ``shortcut=p`` the train and probe splits carry, with probability p per image, a small
square of a class-specific colour in the top-left corner; the val split never does. A model
that learns the marker instead of the shape loses accuracy on val, and its attribution maps
light up the corner: the failure DAVEMonitor is meant to catch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")
# Saturated primaries, one per class: never the colour of a (light, desaturated) shape.
MARKER_COLOURS = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
)
SPLITS = ("train", "val", "probe")

# Geometry is in normalised coordinates: both image axes span [-1, 1] (pixel centres inside).
# Every shape fits the unit disc of its local frame, so `scale` is its radius and a scale of s
# spans a fraction s of the image side.
OBJECT_SCALE = (0.3, 0.45)
DISTRACTOR_SCALE = (0.08, 0.16)
DISTRACTOR_ALPHA = (0.35, 0.7)
MAX_DISTRACTORS = 2
MARKER_CENTRE, MARKER_HALF_SIDE = -0.8125, 0.1875  # 12 px square in the corner at 64 px
ROTATION = np.pi  # shapes turn by a uniform angle in [-ROTATION, ROTATION] radians
PLACEMENT_GAP = 0.05
PLACEMENT_TRIES = 20
# Shapes are light, backgrounds dark, in every channel: random hues, but a silhouette of one
# polarity, which a small ViT picks up from few examples.
BACKGROUND_RANGE, SHAPE_COLOUR_RANGE = (0.0, 0.4), (0.55, 1.0)
TEXTURE_GRATINGS, TEXTURE_AMPLITUDE, TEXTURE_CYCLES = 3, (0.02, 0.06), (1.0, 5.0)
NOISE_STD = 0.04


@dataclass(frozen=True)
class _Placement:
    """Where a shape sits: centre (x, y) and bounding radius, in normalised coordinates."""

    x: float
    y: float
    radius: float

    def clear_of(self, other: _Placement) -> bool:
        distance = math.hypot(self.x - other.x, self.y - other.y)
        return distance > self.radius + other.radius + PLACEMENT_GAP


_MARKER_PLACEMENT = _Placement(MARKER_CENTRE, MARKER_CENTRE, MARKER_HALF_SIDE * math.sqrt(2))


class SyntheticShapes(Dataset):
    """Procedural shape-classification images with a boolean mask of the class object.

    ``dataset[i]`` is ``(image, label, mask)``: image float32 (3, H, W) normalised with
    ``SyntheticShapes.mean``/``std``, label an int in ``[0, num_classes)`` (class names in
    ``classes``), mask bool (H, W), True on the class object's pixels. ``marker_mask(i)`` gives
    the shortcut marker's region for item i (all False when the item has no marker).

    Labels are balanced by construction: every consecutive block of ``num_classes`` indices
    holds each class once, in a seeded random order. Different splits give different images
    for the same seed. Items depend only on ``(seed, split, index)`` and the constructor
    arguments, and the shortcut changes nothing but the marker's pixels.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        length: int = 1000,
        *,
        split: str = "train",
        image_size: int = 64,
        num_classes: int = 4,
        shortcut: float = 0.0,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
        if not 0.0 <= shortcut <= 1.0:
            raise ValueError(f"shortcut must be a probability in [0, 1], got {shortcut}")
        if length < 0 or seed < 0:
            raise ValueError("length and seed must be non-negative")
        self.length = length
        self.split = split
        self.image_size = image_size
        self.num_classes = num_classes
        self.shortcut = shortcut
        self.seed = seed
        self.classes = list(SHAPES[:num_classes])
        centres = (np.arange(image_size, dtype=np.float32) * 2 + 1) / image_size - 1
        self._y, self._x = np.meshgrid(centres, centres, indexing="ij")
        self._marker_region = (np.abs(self._x - MARKER_CENTRE) <= MARKER_HALF_SIDE) & (
            np.abs(self._y - MARKER_CENTRE) <= MARKER_HALF_SIDE
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image, label, mask, _ = self._generate(index)
        pixels = (image - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return (
            torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
            label,
            torch.from_numpy(mask),
        )

    @property
    def marker_region(self) -> torch.Tensor:
        """Bool (H, W): the corner square where the shortcut marker sits when an item has one."""
        return torch.from_numpy(self._marker_region.copy())

    def marker_mask(self, index: int) -> torch.Tensor:
        """Bool (H, W): the shortcut marker's square if item ``index`` has one, else all False."""
        return torch.from_numpy(self._generate(index)[3])

    def label(self, index: int) -> int:
        """Class of item ``index``, without rendering it."""
        block, position = divmod(self._check_index(index), self.num_classes)
        order = np.random.default_rng([self.seed, SPLITS.index(self.split), 1, block])
        return int(order.permutation(self.num_classes)[position])

    def _check_index(self, index: int) -> int:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        return index

    def _generate(self, index: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """Render item ``index``: (H, W, 3) image in [0, 1], label, object mask, marker mask."""
        label = self.label(index)
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), 0, index])
        background = rng.uniform(*BACKGROUND_RANGE, 3).astype(np.float32)
        image = self._texture(rng, background)

        object_scale = rng.uniform(*OBJECT_SCALE)
        while True:  # the object always fits somewhere clear of the marker; a few tries suffice
            low, high = -1 + object_scale, 1 - object_scale
            placement = _Placement(*rng.uniform(low, high, 2), object_scale)
            if placement.clear_of(_MARKER_PLACEMENT):
                break
        occupied = [_MARKER_PLACEMENT, placement]

        # Distractors first, so that the class object is drawn whole on top of them.
        others = [c for c in range(self.num_classes) if c != label]
        for _ in range(rng.integers(0, MAX_DISTRACTORS + 1)):
            kind = SHAPES[others[rng.integers(len(others))]]
            spot = self._free_spot(rng, rng.uniform(*DISTRACTOR_SCALE), occupied)
            if spot is None:
                continue
            occupied.append(spot)
            shape = self._shape(kind, spot, rng.uniform(-ROTATION, ROTATION))
            alpha = rng.uniform(*DISTRACTOR_ALPHA)
            self._paint(image, shape, _shape_colour(rng), alpha)

        mask = self._shape(SHAPES[label], placement, rng.uniform(-ROTATION, ROTATION))
        self._paint(image, mask, _shape_colour(rng), 1.0)

        # Drawn for every split and shortcut, so that neither changes the rest of the image.
        has_marker = rng.uniform() < self.shortcut and self.split != "val"
        marker = self._marker_region if has_marker else np.zeros_like(self._marker_region)
        if has_marker:
            self._paint(image, marker, np.asarray(MARKER_COLOURS[label], np.float32), 1.0)

        image += rng.normal(0.0, NOISE_STD, image.shape).astype(np.float32)
        return np.clip(image, 0.0, 1.0), label, mask, marker

    def _texture(self, rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
        """(H, W, 3) background: a base colour plus a few coloured sinusoidal gratings."""
        angles = rng.uniform(0, np.pi, (TEXTURE_GRATINGS, 1, 1))
        frequencies = np.pi * rng.uniform(*TEXTURE_CYCLES, (TEXTURE_GRATINGS, 1, 1))
        phases = rng.uniform(0, 2 * np.pi, (TEXTURE_GRATINGS, 1, 1))
        amplitudes = rng.uniform(*TEXTURE_AMPLITUDE, (TEXTURE_GRATINGS, 3))
        along = np.cos(angles) * self._x + np.sin(angles) * self._y
        waves = np.sin(frequencies * along + phases).astype(np.float32)
        return background + np.einsum("ghw,gc->hwc", waves, amplitudes.astype(np.float32))

    def _free_spot(
        self, rng: np.random.Generator, radius: float, occupied: list[_Placement]
    ) -> _Placement | None:
        """A placement inside the image clear of all ``occupied`` ones, or None if none found."""
        for _ in range(PLACEMENT_TRIES):
            spot = _Placement(*rng.uniform(-1 + radius, 1 - radius, 2), radius)
            if all(spot.clear_of(other) for other in occupied):
                return spot
        return None

    def _shape(self, kind: str, placement: _Placement, angle: float) -> np.ndarray:
        """Bool (H, W) mask of a shape at ``placement`` rotated by ``angle`` radians."""
        dx, dy = self._x - placement.x, self._y - placement.y
        cos, sin = math.cos(angle), math.sin(angle)
        u = (cos * dx + sin * dy) / placement.radius
        v = (cos * dy - sin * dx) / placement.radius
        return _inside(kind, u, v)

    @staticmethod
    def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float) -> None:
        """Alpha-blend ``colour`` into ``image`` on ``mask``, in place."""
        image[mask] = (1 - alpha) * image[mask] + alpha * colour


def _inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bool inside test of a shape in its local frame; every shape fits the unit disc."""
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7
    if kind == "triangle":  # equilateral, circumradius 1, inradius 0.5
        normals = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.maximum.reduce([u * np.cos(a) + v * np.sin(a) for a in normals]) <= 0.5
    if kind == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.2) & (av <= 0.95)) | ((av <= 0.2) & (au <= 0.95))
    if kind == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if kind == "star":  # five points: radius 1 at the tips, 0.4 between them
        teeth = np.abs(2 * ((5 * np.arctan2(v, u) / (2 * np.pi)) % 1.0) - 1)
        return np.hypot(u, v) <= 0.4 + 0.6 * teeth
    raise ValueError(f"unknown shape {kind!r}")


def _shape_colour(rng: np.random.Generator) -> np.ndarray:
    """A random light RGB colour (each channel in SHAPE_COLOUR_RANGE)."""
    return rng.uniform(*SHAPE_COLOUR_RANGE, 3).astype(np.float32)
