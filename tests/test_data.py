"""SyntheticShapes: determinism, splits, masks, class balance, the planted shortcut, RNG hygiene."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dave_lightning.data import SHAPES, SyntheticShapes
from dave_lightning.data.synthetic import MARKER_COLOURS


def images01(dataset: SyntheticShapes, count: int) -> torch.Tensor:
    mean = torch.tensor(SyntheticShapes.mean).view(3, 1, 1)
    std = torch.tensor(SyntheticShapes.std).view(3, 1, 1)
    return torch.stack([dataset[i][0] * std + mean for i in range(count)])


def test_item_types_and_shapes() -> None:
    dataset = SyntheticShapes(8, image_size=48, num_classes=6)
    image, label, mask = dataset[3]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 6
    assert mask.shape == (48, 48) and mask.dtype == torch.bool
    assert len(dataset) == 8
    assert dataset.classes == list(SHAPES)
    assert image.min() >= -1 and image.max() <= 1  # [0, 1] pixels normalised with 0.5 / 0.5
    assert dataset.label(3) == label


def test_same_seed_and_index_give_identical_items() -> None:
    first, second = SyntheticShapes(10, seed=7), SyntheticShapes(10, seed=7)
    for index in (0, 5, 9):
        a, b = first[index], second[index]
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    assert torch.equal(first[5][0], first[5][0])


def test_seeds_splits_and_indices_differ() -> None:
    base = images01(SyntheticShapes(4, seed=0), 4)
    assert not torch.equal(base, images01(SyntheticShapes(4, seed=1), 4))
    for split in ("val", "probe"):
        assert not torch.equal(base, images01(SyntheticShapes(4, split=split), 4))
    assert not torch.equal(base[0], base[1])


def test_mask_marks_a_large_object_that_stands_out() -> None:
    dataset = SyntheticShapes(60, num_classes=6)
    images = images01(dataset, 60)
    masks = torch.stack([dataset[i][2] for i in range(60)])
    area = masks.flatten(1).float().mean(1)
    assert area.min() > 0.01 and area.max() < 0.3
    inside = (images * masks[:, None]).sum((2, 3)) / masks.sum((1, 2))[:, None]
    outside = (images * ~masks[:, None]).sum((2, 3)) / (~masks).sum((1, 2))[:, None]
    contrast = (inside - outside).norm(dim=1)
    assert (contrast > 0.15).float().mean() > 0.9
    # the object is drawn opaque and flat: pixel noise only, unlike the textured background
    spread = torch.stack([images[i][:, masks[i]].std(1).mean() for i in range(60)])
    assert spread.median() < 0.06


def test_every_shape_appears_with_its_own_mask_footprint() -> None:
    dataset = SyntheticShapes(120, num_classes=6, seed=3)
    fill = {c: [] for c in range(6)}  # mask area over bounding-box area, rotation aside
    for index in range(120):
        _, label, mask = dataset[index]
        rows, cols = mask.nonzero(as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill[label].append(mask.sum().item() / box.item())
    mean_fill = {SHAPES[c]: float(np.mean(values)) for c, values in fill.items()}
    assert mean_fill["circle"] > mean_fill["ring"] and mean_fill["circle"] > 0.7
    assert mean_fill["cross"] < 0.6 and mean_fill["star"] < 0.6


def test_labels_are_balanced_by_construction() -> None:
    dataset = SyntheticShapes(600, num_classes=6)
    labels = torch.tensor([dataset.label(i) for i in range(600)])
    assert torch.bincount(labels, minlength=6).tolist() == [100] * 6
    # ... but not in a fixed cycle
    assert (
        labels[:6].tolist() != labels[6:12].tolist()
        or labels[6:12].tolist() != labels[12:18].tolist()
    )
    blocks = labels.view(100, 6)
    assert all(sorted(block.tolist()) == list(range(6)) for block in blocks)


@pytest.mark.parametrize(
    ("split", "shortcut", "low", "high"),
    [
        ("train", 1.0, 1.0, 1.0),
        ("probe", 1.0, 1.0, 1.0),
        ("train", 0.5, 0.4, 0.6),
        ("train", 0.0, 0.0, 0.0),
        ("val", 1.0, 0.0, 0.0),
    ],
)
def test_shortcut_marker_rate(split: str, shortcut: float, low: float, high: float) -> None:
    dataset = SyntheticShapes(200, split=split, shortcut=shortcut)
    present = torch.tensor([dataset.marker_mask(i).any().item() for i in range(200)])
    assert low <= present.float().mean().item() <= high


def test_marker_is_a_class_coloured_corner_square_and_changes_nothing_else() -> None:
    plain = SyntheticShapes(12, num_classes=6)
    marked = SyntheticShapes(12, num_classes=6, shortcut=1.0)
    with_marker, without = images01(marked, 12), images01(plain, 12)
    for index in range(12):
        region = marked.marker_mask(index)
        assert not plain.marker_mask(index).any()
        rows, cols = region.nonzero(as_tuple=True)
        assert region.sum() == 144 and rows.max() == 11 and cols.max() == 11  # 12×12 at 64 px
        assert torch.equal(with_marker[index][:, ~region], without[index][:, ~region])
        colour = with_marker[index][:, region].mean(1)
        expected = torch.tensor(MARKER_COLOURS[marked.label(index)])
        assert (colour - expected).abs().max() < 0.1
        assert not (marked[index][2] & region).any()


def test_global_random_state_is_untouched() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    dataset = SyntheticShapes(20, shortcut=0.5, num_classes=5)
    for index in range(20):
        dataset[index]
        dataset.marker_mask(index)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


def test_items_do_not_depend_on_global_seeds() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    first = SyntheticShapes(3)[2][0]
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(first, SyntheticShapes(3)[2][0])


def test_invalid_arguments_and_indices() -> None:
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes(split="test")
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(num_classes=len(SHAPES) + 1)
    with pytest.raises(ValueError, match="shortcut"):
        SyntheticShapes(shortcut=1.5)
    with pytest.raises(IndexError):
        SyntheticShapes(5)[5]
    assert len(list(SyntheticShapes(3))) == 3
