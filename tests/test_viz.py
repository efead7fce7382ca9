"""viz: colormaps, overlays, panels, figure rendering and PNG output."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from dave_lightning import viz


def test_denormalize_inverts_normalisation() -> None:
    images01 = torch.rand(2, 3, 8, 8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalized = (images01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    restored = viz.denormalize(normalized, mean, std)
    assert restored.dtype == torch.float32
    torch.testing.assert_close(restored, images01)


def test_denormalize_clamps_and_min_max_scales_without_statistics() -> None:
    assert viz.denormalize(torch.full((1, 3, 2, 2), 5.0), [0.5] * 3, [0.5] * 3).max() == 1
    images = torch.stack([torch.linspace(-3, 1, 48).view(3, 4, 4), torch.zeros(3, 4, 4)])
    scaled = viz.denormalize(images)
    assert scaled[0].min() == 0 and scaled[0].max() == 1
    assert torch.equal(scaled[1], torch.zeros(3, 4, 4))  # a constant image does not divide by 0
    with pytest.raises(ValueError, match="both"):
        viz.denormalize(images, mean=[0.5] * 3)


@pytest.mark.parametrize("shape", [(2, 1, 5, 6), (2, 5, 6)])
def test_colorize_one_hot_map_gets_the_colormap_extremes(shape: tuple[int, ...]) -> None:
    maps = torch.zeros(shape)
    maps.view(2, 5, 6)[0, 2, 3] = 0.25  # max-normalised: any peak height reaches the top
    colours = viz.colorize(maps)
    assert colours.shape == (2, 3, 5, 6) and colours.dtype == torch.float32
    colormap = matplotlib.colormaps["inferno"]
    brightest = torch.tensor(colormap(1.0)[:3], dtype=torch.float32)
    darkest = torch.tensor(colormap(0.0)[:3], dtype=torch.float32)
    torch.testing.assert_close(colours[0, :, 2, 3], brightest)
    cold = torch.ones(2, 5, 6, dtype=torch.bool)
    cold[0, 2, 3] = False
    torch.testing.assert_close(colours.permute(0, 2, 3, 1)[cold], darkest.expand(59, 3))


def test_colorize_clips_negatives_and_accepts_numpy_and_other_colormaps() -> None:
    maps = np.array([[[-1.0, 0.5], [1.0, 0.0]]], dtype=np.float32)
    colours = viz.colorize(maps, cmap="viridis")
    viridis = matplotlib.colormaps["viridis"]
    torch.testing.assert_close(colours[0, :, 0, 0], torch.tensor(viridis(0.0)[:3]).float())
    torch.testing.assert_close(colours[0, :, 1, 0], torch.tensor(viridis(1.0)[:3]).float())
    with pytest.raises(ValueError, match="one channel"):
        viz.colorize(torch.zeros(1, 3, 2, 2))


def test_overlay_blends_between_image_and_heatmap() -> None:
    images01, maps = torch.rand(2, 3, 6, 6), torch.rand(2, 1, 6, 6)
    assert torch.equal(viz.overlay(images01, maps, alpha=0.0), images01)
    torch.testing.assert_close(viz.overlay(images01, maps, alpha=1.0), viz.colorize(maps))
    half = viz.overlay(images01, maps)
    torch.testing.assert_close(half, 0.5 * images01 + 0.5 * viz.colorize(maps))
    assert half.min() >= 0 and half.max() <= 1


def test_make_panel_and_grid_lay_images_out_with_white_padding() -> None:
    columns = [torch.zeros(3, 4, 5), torch.full((3, 4, 5), 0.5), torch.ones(3, 4, 5)]
    panel = viz.make_panel(columns, pad=2)
    assert panel.shape == (3, 4 + 2 * 2, 3 * 5 + 4 * 2)
    assert torch.equal(panel[:, 2:6, 2:7], columns[0])
    assert torch.equal(panel[:, 2:6, 9:14], columns[1])
    assert torch.equal(panel[:, :2], torch.ones(3, 2, panel.shape[2]))
    grid = viz.tile_rows([columns, columns], pad=1)
    assert grid.shape == (3, 2 * 4 + 3, 3 * 5 + 4)
    with pytest.raises(ValueError, match="same number"):
        viz.tile_rows([columns, columns[:2]])


def test_figure_to_tensor_renders_an_rgb_image() -> None:
    fig = Figure(figsize=(2, 1), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    image = viz.figure_to_tensor(fig)
    assert image.shape == (3, 50, 100) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and image.min() < 0.5  # a dark line was drawn


def test_figure_to_tensor_closes_pyplot_figures() -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1), dpi=20)
    assert plt.fignum_exists(fig.number)
    assert viz.figure_to_tensor(fig).shape == (3, 20, 20)
    assert not plt.fignum_exists(fig.number)


def test_plots_draw_every_curve_in_its_panel() -> None:
    x = torch.linspace(0, 1, 5)
    fig = viz.plot_curves(
        [
            viz.CurvePanel(
                {"dave": (x, 1 - x), "random": (x.numpy(), [0.5] * 5)},
                title="deletion",
                xlabel="fraction removed",
                ylabel="probability",
            ),
            viz.CurvePanel({"dave": (x, x)}, title="insertion"),
        ]
    )
    deletion, insertion = fig.axes
    assert [line.get_label() for line in deletion.get_lines()] == ["dave", "random"]
    assert (deletion.get_title(), insertion.get_title()) == ("deletion", "insertion")
    np.testing.assert_allclose(insertion.get_lines()[0].get_ydata(), x.numpy())
    assert viz.figure_to_tensor(fig).shape[0] == 3


def test_save_png_round_trips_through_pil(tmp_path: Path) -> None:
    image = torch.rand(3, 7, 9)
    path = tmp_path / "panel.png"
    viz.save_png(image, path)
    with Image.open(path) as png:
        assert png.mode == "RGB" and png.size == (9, 7)
        pixels = torch.from_numpy(np.array(png)).permute(2, 0, 1)
    assert torch.equal(pixels, (image * 255).round().to(torch.uint8))
