"""Pictures of attribution maps: colormaps, overlays, panels and matplotlib figures as tensors.

Everything returns float32 (3, H, W) tensors in [0, 1] (or batches of them), which
``SummaryWriter.add_image`` takes as they are. Figures are drawn on an Agg canvas without
pyplot, so no global plotting state is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DEFAULT_CMAP = "inferno"


def denormalize(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """Undo ``(x − mean) / std`` into [0, 1]; without both, min–max scale each image."""
    images = images.detach().float().cpu()
    if mean is None or std is None:
        low = images.flatten(1).amin(1).view(-1, 1, 1, 1)
        high = images.flatten(1).amax(1).view(-1, 1, 1, 1)
        return (images - low) / (high - low).clamp_min(1e-12)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def colorize(maps: torch.Tensor, cmap: str = DEFAULT_CMAP) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) maps → (B, 3, H, W) colours, each map divided by its maximum."""
    maps = maps.detach().float().cpu()
    maps = maps[:, 0] if maps.dim() == 4 else maps
    maps = torch.nan_to_num(maps, nan=0.0).clamp_min(0)
    peak = maps.flatten(1).amax(1).view(-1, 1, 1)
    scaled = maps / torch.where(peak > 0, peak, torch.ones_like(peak))
    colours = matplotlib.colormaps[cmap](scaled.numpy())[..., :3]
    return torch.from_numpy(colours).float().permute(0, 3, 1, 2).contiguous()


def overlay(
    images01: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5, cmap: str = DEFAULT_CMAP
) -> torch.Tensor:
    """Blend colorized maps over images in [0, 1] (grayscale images are shown in RGB)."""
    images01 = images01.detach().float().cpu()
    if images01.shape[1] == 1:
        images01 = images01.expand(-1, 3, -1, -1)
    return (1 - alpha) * images01[:, :3] + alpha * colorize(maps, cmap)


def make_panel(columns: Sequence[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Images (3, H, W) of equal height side by side, separated by ``pad`` white pixels."""
    height = columns[0].shape[-2]
    gap = torch.ones(3, height, pad)
    parts: list[torch.Tensor] = []
    for index, column in enumerate(columns):
        if index:
            parts.append(gap)
        parts.append(column.detach().float().cpu())
    return torch.cat(parts, dim=-1)


def figure_to_tensor(figure: Figure) -> torch.Tensor:
    """Render a matplotlib figure to a (3, H, W) tensor in [0, 1]."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def plot_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """One line per named (x, y) curve, with a legend."""
    figure = Figure(figsize=(6, 4), dpi=80)
    axes = figure.add_subplot()
    for name, (x, y) in curves.items():
        axes.plot(x, y, label=name)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_metric_history(history: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
    """One panel per metric: its value against the training step."""
    figure = Figure(figsize=(4 * max(1, min(len(history), 3)), 3 * ((len(history) + 2) // 3)))
    for index, (name, points) in enumerate(history.items()):
        axes = figure.add_subplot((len(history) + 2) // 3, min(len(history), 3), index + 1)
        steps, values = zip(*points, strict=True) if points else ((), ())
        axes.plot(steps, values, marker="o")
        axes.set(title=name, xlabel="step")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write a (3, H, W) tensor in [0, 1] as an 8-bit PNG."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().byte()
    Image.fromarray(array.permute(1, 2, 0).numpy()).save(path)
