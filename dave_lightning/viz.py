"""Heatmaps, overlays, image grids and plots for TensorBoard, the CLI report and the docs.

Every image helper returns float32 tensors in [0, 1], channels first ((3, H, W) or
(B, 3, H, W)), so ``SummaryWriter.add_image`` takes them as they are. Plots are drawn on
``matplotlib.figure.Figure`` objects with the Agg canvas: no pyplot global state, no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torchvision
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def denormalize(
    images: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Undo ``(x - mean) / std`` on (B, 3, H, W) images and clamp to [0, 1].

    With ``mean`` and ``std`` both None, each image is min-max scaled to [0, 1] instead.
    """
    images = images.detach().float()
    if mean is None and std is None:
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        return ((images - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    mean_ = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_ = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_ + mean_).clamp(0, 1)


def colorize(maps: torch.Tensor | np.ndarray, cmap: str = "inferno") -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) maps → (B, 3, H, W) RGB through a matplotlib colormap.

    Each map is divided by its own maximum (negative values are clipped to zero, an all-zero
    map stays zero), so the hottest pixel always gets the colormap's top colour.
    """
    maps = torch.as_tensor(maps).detach().float()
    if maps.dim() == 4:
        if maps.shape[1] != 1:
            raise ValueError(f"expected one channel, got maps of shape {tuple(maps.shape)}")
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(f"expected (B, 1, H, W) or (B, H, W) maps, got {tuple(maps.shape)}")
    maps = maps.clamp_min(0)
    peak = maps.amax(dim=(1, 2), keepdim=True)
    maps = maps / torch.where(peak > 0, peak, torch.ones_like(peak))
    colormap = matplotlib.colormaps[cmap]
    lut = torch.as_tensor(colormap(np.arange(colormap.N))[:, :3], dtype=torch.float32)
    indices = (maps * (colormap.N - 1)).round().long()
    return lut.to(maps.device)[indices].permute(0, 3, 1, 2).contiguous()


def overlay(
    images01: torch.Tensor,
    maps: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    cmap: str = "inferno",
) -> torch.Tensor:
    """Blend colorized ``maps`` over (B, 3, H, W) images in [0, 1]: (1 - α)·image + α·heat."""
    heat = colorize(maps, cmap).to(images01.device)
    return ((1 - alpha) * images01.detach().float() + alpha * heat).clamp(0, 1)


def make_panel(columns: Sequence[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Put (3, H, W) images side by side, separated and framed by ``pad`` white pixels."""
    return tile_rows([columns], pad=pad)


def tile_rows(rows: Sequence[Sequence[torch.Tensor]], pad: int = 2) -> torch.Tensor:
    """Tile equally long rows of (3, H, W) images into one (3, H', W') image with white gaps."""
    if len({len(row) for row in rows}) != 1:
        raise ValueError("all rows must have the same number of images")
    tiles = torch.stack([tile.detach().float().cpu() for row in rows for tile in row])
    return torchvision.utils.make_grid(tiles, nrow=len(rows[0]), padding=pad, pad_value=1.0)


MIN_TILE = 128  # smaller tiles are enlarged (nearest neighbour) so panels stay readable
TEXT_SIZE = 13
TEXT_ROW = 20
FRAME = 3


def labelled_panel(
    columns: Sequence[torch.Tensor],
    titles: Sequence[str],
    caption: str | None = None,
    frames: Sequence[tuple[float, float, float] | None] | None = None,
) -> torch.Tensor:
    """(3, H, W) images side by side with a title above each and an optional caption below.

    Tiles smaller than 128 px are enlarged by an integer factor (nearest neighbour);
    ``frames`` gives a colour per tile for a border drawn on it (e.g. red: a wrong prediction).
    """
    if len(columns) != len(titles):
        raise ValueError(f"got {len(columns)} columns but {len(titles)} titles")
    height = columns[0].shape[-2]
    zoom = max(1, -(-MIN_TILE // height))
    tiles = []
    for index, column in enumerate(columns):
        tile = column.detach().float().cpu().clamp(0, 1)
        if zoom > 1:
            tile = tile.repeat_interleave(zoom, -2).repeat_interleave(zoom, -1)
        frame = None if frames is None else frames[index]
        if frame is not None:
            tile = tile.clone()
            colour = torch.tensor(frame, dtype=tile.dtype).view(3, 1, 1)
            tile[:, :FRAME], tile[:, -FRAME:] = colour, colour
            tile[:, :, :FRAME], tile[:, :, -FRAME:] = colour, colour
        tiles.append(tile)
    body = make_panel(tiles)
    rows = [_text_row(titles, body.shape[-1], tiles[0].shape[-1]), body]
    if caption is not None:
        rows.append(_text_row([caption], body.shape[-1], body.shape[-1]))
    return torch.cat(rows, dim=1)


def _text_row(texts: Sequence[str], width: int, cell: int, pad: int = 2) -> torch.Tensor:
    """A white (3, TEXT_ROW, width) strip with each text centred over its ``cell``-wide slot."""
    image = Image.new("RGB", (width, TEXT_ROW), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=TEXT_SIZE)
    for index, text in enumerate(texts):
        left = pad + index * (cell + pad)
        text_width = draw.textlength(text, font=font)
        x = left + max(0.0, (cell - text_width) / 2)
        draw.text((x, (TEXT_ROW - TEXT_SIZE) / 2 - 1), text, fill="black", font=font)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return pixels.float() / 255.0


def figure_to_tensor(fig: Figure) -> torch.Tensor:
    """Render a matplotlib Figure with Agg to a (3, H, W) tensor in [0, 1], then close it.

    Closing only matters for figures made through pyplot, which keeps them alive until closed.
    """
    managed_by_pyplot = fig.canvas.manager is not None
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    if managed_by_pyplot:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)


@dataclass(frozen=True)
class CurvePanel:
    """One panel of :func:`plot_curves`: named (x, y) curves, a title and the axes' labels."""

    curves: Mapping[str, tuple[ArrayLike, ArrayLike]]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""


def plot_curves(panels: Sequence[CurvePanel]) -> Figure:
    """Panels of line plots side by side, e.g. deletion and insertion curves (fraction of
    pixels changed → probability)."""
    fig = Figure(figsize=(4.5 * max(1, len(panels)), 3.2), dpi=100, layout="constrained")
    for ax, panel in zip(
        fig.subplots(1, max(1, len(panels)), squeeze=False)[0], panels, strict=False
    ):
        for name, (x, y) in panel.curves.items():
            ax.plot(_numpy(x), _numpy(y), label=name)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.grid(alpha=0.3)
        if panel.curves:
            ax.legend(fontsize="small")
    return fig


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) image in [0, 1] as 8-bit pixels on the CPU (what PNG, W&B and MLflow take)."""
    return (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write a (3, H, W) image in [0, 1] to an 8-bit RGB PNG."""
    Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(path, format="PNG")


def _numpy(values: ArrayLike) -> np.ndarray:
    """Plain numpy copy of a tensor (any device, with or without grad), array or list."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)
