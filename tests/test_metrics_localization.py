"""Energy pointing game, boxes, grid pointing game and grid probes: hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from dave_lightning.metrics import (
    boxes_to_masks,
    energy_pointing_game,
    grid_pointing_game,
    make_grid_probe,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


def left_half_mask(batch: int = 1, size: int = 4) -> torch.Tensor:
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    mask[..., : size // 2] = True
    return mask


# --- energy pointing game ---------------------------------------------------------------------


def test_energy_all_half_none_inside() -> None:
    mask = left_half_mask(3)
    maps = torch.zeros(3, 4, 4)
    maps[0, :, :2] = 1.0  # all inside
    maps[1] = 1.0  # uniform: half inside
    maps[2, :, 2:] = 1.0  # none inside
    assert energy_pointing_game(maps, mask).tolist() == [1.0, 0.5, 0.0]


def test_energy_hand_computed_with_negatives() -> None:
    maps = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
    mask = torch.tensor([[[False, True], [True, True]]])
    # Positive part: inside 2 + 3, total 1 + 2 + 3; the -4 counts nowhere.
    assert energy_pointing_game(maps, mask).item() == pytest.approx(5 / 6)


def test_energy_only_negative_inside_scores_zero() -> None:
    maps = torch.tensor([[[-5.0, 1.0]]])
    mask = torch.tensor([[[True, False]]])
    assert energy_pointing_game(maps, mask).item() == 0.0


def test_energy_empty_mask_is_nan_not_a_hit() -> None:
    maps = torch.ones(2, 4, 4)
    mask = left_half_mask(2)
    mask[1] = False
    score = energy_pointing_game(maps, mask)
    assert score[0] == 0.5
    assert math.isnan(score[1])


def test_energy_nan_without_positive_attribution_or_with_nan_map() -> None:
    maps = torch.stack([torch.zeros(4, 4), -torch.ones(4, 4), torch.ones(4, 4)])
    maps[2, 0, 0] = math.nan
    assert energy_pointing_game(maps, left_half_mask(3)).isnan().all()


def test_energy_per_image_masks_are_not_mixed_across_batch() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0
    maps[1, 3, 3] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 0, 0] = True
    assert energy_pointing_game(maps, masks).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_energy_shapes_dtypes_devices(device: str, dtype: torch.dtype) -> None:
    maps = torch.rand(3, 1, 8, 8, dtype=dtype, device=device)
    masks = torch.rand(3, 8, 8, device=device) > 0.5
    score = energy_pointing_game(maps, masks)
    assert score.shape == (3,) and score.dtype == dtype and score.device == maps.device
    torch.testing.assert_close(score, energy_pointing_game(maps[:, 0], masks))


def test_energy_bad_inputs() -> None:
    maps = torch.rand(2, 4, 4)
    with pytest.raises(TypeError, match="bool"):
        energy_pointing_game(maps, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="does not match"):
        energy_pointing_game(maps, torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        energy_pointing_game(maps, torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        energy_pointing_game(torch.rand(2, 3, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="floating"):
        energy_pointing_game(torch.ones(2, 4, 4, dtype=torch.long), maps > 0)


# --- boxes -------------------------------------------------------------------------------------


def test_boxes_to_masks_integer_and_fractional() -> None:
    boxes = torch.tensor([[1, 1, 3, 4], [0.4, 0.0, 1.6, 1.0]])
    masks = boxes_to_masks(boxes, 5, 5)
    expected = torch.zeros(2, 5, 5, dtype=torch.bool)
    expected[0, 1:4, 1:3] = True  # rows y0..y1-1, columns x0..x1-1
    expected[1, 0, 0:2] = True  # pixel centres 0.5 and 1.5 lie in [0.4, 1.6)
    assert torch.equal(masks, expected)


def test_boxes_union_and_zero_padding() -> None:
    boxes = torch.tensor([[[0, 0, 1, 1], [3, 3, 4, 4], [0, 0, 0, 0]]])
    masks = boxes_to_masks(boxes, 4, 4)
    assert masks.sum() == 2 and masks[0, 0, 0] and masks[0, 3, 3]
    maps = torch.ones(1, 4, 4)
    assert energy_pointing_game(maps, masks).item() == pytest.approx(2 / 16)


def test_boxes_bad_shape() -> None:
    with pytest.raises(ValueError, match="x0, y0, x1, y1"):
        boxes_to_masks(torch.zeros(2, 3), 4, 4)


# --- grid pointing game ------------------------------------------------------------------------


def test_grid_own_and_other_cell() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[:, :2, 2:] = 1.0  # all attribution in cell 1 (row 0, column 1)
    score = grid_pointing_game(maps, 2, torch.tensor([1, 2]))
    assert score.tolist() == [1.0, 0.0]


def test_grid_uniform_and_hand_computed() -> None:
    assert grid_pointing_game(torch.ones(1, 4, 4), 2, 3).item() == 0.25
    maps = torch.arange(16.0).view(1, 4, 4) - 3.0  # positive part: values 1..12
    # Cell 2 (rows 2-3, columns 0-1) holds 5, 6, 9, 10; total positive is 1 + ... + 12 = 78.
    assert grid_pointing_game(maps, 2, 2).item() == pytest.approx(30 / 78)


def test_grid_three_by_three_row_major() -> None:
    maps = torch.zeros(1, 6, 6)
    maps[0, 2:4, 4:6] = 1.0  # row 1, column 2 -> cell 5
    scores = [grid_pointing_game(maps, 3, c).item() for c in range(9)]
    assert scores == [0.0] * 5 + [1.0] + [0.0] * 3


def test_grid_nan_without_positive_attribution() -> None:
    assert math.isnan(grid_pointing_game(-torch.ones(1, 4, 4), 2, 0).item())


@pytest.mark.parametrize("device", DEVICES)
def test_grid_shapes_dtypes_devices(device: str) -> None:
    maps = torch.rand(2, 1, 8, 8, dtype=torch.float64, device=device)
    score = grid_pointing_game(maps, 2, torch.tensor([0, 3], device=device))
    assert score.shape == (2,) and score.dtype == torch.float64 and score.device == maps.device


def test_grid_bad_inputs() -> None:
    maps = torch.rand(2, 6, 6)
    with pytest.raises(ValueError, match="must divide"):
        grid_pointing_game(maps, 4, 0)
    with pytest.raises(ValueError, match=r"target_cell must lie in \[0, 4\)"):
        grid_pointing_game(maps, 2, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="target_cell must lie"):
        grid_pointing_game(maps, 2, -1)
    with pytest.raises(ValueError, match="shape"):
        grid_pointing_game(maps, 2, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integers"):
        grid_pointing_game(maps, 2, torch.tensor([0.0, 1.0]))


# --- grid probes -------------------------------------------------------------------------------


def constant_images(values: list[float], size: int = 8) -> torch.Tensor:
    """One 3-channel image per value, every pixel equal to the value."""
    return (
        torch.tensor(values, dtype=torch.float32)
        .view(-1, 1, 1, 1)
        .expand(-1, 3, size, size)
        .clone()
    )


def test_grid_probe_places_distinct_classes_row_major() -> None:
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    images = constant_images([float(v) for v in labels])
    probe = make_grid_probe(images, labels, k=2)
    assert probe.images.shape == (2, 3, 8, 8)
    assert probe.cells.tolist() == [[0, 1, 2, 3]] * 2
    for grid, targets in zip(probe.images, probe.targets, strict=True):
        assert sorted(targets.tolist()) == [0, 1, 2, 3]
        quadrants = [grid[0, :4, :4], grid[0, :4, 4:], grid[0, 4:, :4], grid[0, 4:, 4:]]
        for quadrant, label in zip(quadrants, targets.tolist(), strict=True):
            torch.testing.assert_close(quadrant, torch.full((4, 4), float(label)))
    # The second grid is rotated by one cell so the first-ranked image leaves cell 0.
    assert probe.targets.tolist() == [[0, 1, 2, 3], [1, 2, 3, 0]]


def test_grid_probe_with_model_keeps_correct_images_by_confidence() -> None:
    # Channel 0 carries an image id; the model returns fixed logits per id.
    logits = torch.tensor(
        [
            [5.0, 0, 0, 0],  # id 0: class 0, confident
            [0, 1.0, 0, 0],  # id 1: class 1, barely
            [0, 0, 9.0, 0],  # id 2: class 2, very confident
            [0, 0, 0, 3.0],  # id 3: class 3
            [9.0, 0, 0, 0],  # id 4: predicts 0 but labelled 1: dropped
            [0, 0, 0, 7.0],  # id 5: class 3, more confident than id 3
        ]
    )
    images = constant_images([0, 1, 2, 3, 4, 5], size=4)
    labels = torch.tensor([0, 1, 2, 3, 1, 3])

    def model(x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and x.dtype == torch.float32
        return logits[x[:, 0, 0, 0].long()]

    probe = make_grid_probe(images, labels, k=2, model=model, size=(8, 8))
    assert probe.images.shape == (1, 3, 8, 8)
    # Confidence order: id 2, id 5, id 0, id 1 (id 3 loses to id 5 for class 3, id 4 is wrong).
    assert probe.targets.tolist() == [[2, 3, 0, 1]]
    ids = probe.images[0, 0, ::4, ::4].flatten().tolist()
    assert ids == pytest.approx([2.0, 5.0, 0.0, 1.0])


def test_grid_probe_resizes_to_model_size_and_limits_grids() -> None:
    labels = torch.arange(8) % 4
    images = torch.rand(8, 3, 16, 16)
    probe = make_grid_probe(images, labels, k=2, size=(32, 24), max_grids=1)
    assert probe.images.shape == (1, 3, 32, 24)
    assert probe.targets.shape == probe.cells.shape == (1, 4)


def test_grid_probe_bad_inputs() -> None:
    images = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match="at least 4 distinct classes"):
        make_grid_probe(images, torch.tensor([0, 0, 1, 2]), k=2)
    with pytest.raises(ValueError, match="must divide"):
        make_grid_probe(images, torch.arange(4), k=3)
    with pytest.raises(ValueError, match="shape"):
        make_grid_probe(images, torch.arange(3), k=2)
