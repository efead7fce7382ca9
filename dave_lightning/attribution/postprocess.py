"""Post-processing of DAVE maps (docs/method.md, step 6): positive part, smoothing, scaling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

MAP_BLUR_KERNEL, MAP_BLUR_SIGMA = 11, 7.0
BILATERAL_KERNEL, BILATERAL_SIGMA_SPATIAL, BILATERAL_SIGMA_RANGE = 5, 0.5, 0.05


def postprocess(contributions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) signed contributions → (B, 1, H, W) maps in [0, 1].

    Channels are summed (signed), the positive part is averaged 50/50 with a Gaussian-blurred
    copy, bilateral-filtered and divided by each image's maximum. The map is max-normalised
    before the bilateral filter so that its range σ (0.05) is relative to the map's peak.
    """
    maps = contributions.sum(1, keepdim=True).clamp_min(0)
    maps = 0.5 * (maps + gaussian_blur(maps, [MAP_BLUR_KERNEL] * 2, [MAP_BLUR_SIGMA] * 2))
    maps = bilateral_filter(normalize_max(maps))
    return normalize_max(maps)


def normalize_max(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map by its maximum; an all-zero map stays zero."""
    peak = maps.flatten(1).amax(1).view(-1, *([1] * (maps.dim() - 1)))
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


def bilateral_filter(
    maps: torch.Tensor,
    kernel_size: int = BILATERAL_KERNEL,
    sigma_spatial: float = BILATERAL_SIGMA_SPATIAL,
    sigma_range: float = BILATERAL_SIGMA_RANGE,
) -> torch.Tensor:
    """Edge-preserving smoothing of (B, 1, H, W) maps (reflect padding at the borders)."""
    _, _, height, width = maps.shape
    radius = kernel_size // 2
    padded = F.pad(maps, [radius] * 4, mode="reflect")
    patches = F.unfold(padded, kernel_size).view(maps.shape[0], kernel_size**2, height, width)
    offsets = torch.arange(kernel_size, device=maps.device, dtype=maps.dtype) - radius
    dist2 = offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2
    spatial = torch.exp(-dist2 / (2 * sigma_spatial**2)).view(1, -1, 1, 1)
    weights = spatial * torch.exp(-((patches - maps) ** 2) / (2 * sigma_range**2))
    return (weights * patches).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
