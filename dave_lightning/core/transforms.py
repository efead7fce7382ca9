"""Small spatial transformations (flip, rotation, translation, scale) applied differentiably.

The maps are built in pixel units so that rotations stay rotations on non-square images, then
converted to the normalised coordinates that ``affine_grid`` expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineParams:
    """A batch of transformations: forward map p ↦ scale · R(angle) · flip(p) + shift.

    ``angle`` is in degrees (counter-clockwise on screen), ``shift`` in fractions of (width,
    height), ``hflip`` a bool tensor; all tensors have the same leading length.
    """

    angle: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    hflip: torch.Tensor

    def __len__(self) -> int:
        return self.angle.shape[0]

    def index(self, idx: torch.Tensor) -> AffineParams:
        """Select a subset (or a repetition) of the transformations."""
        return AffineParams(self.angle[idx], self.shift[idx], self.scale[idx], self.hflip[idx])


def sample_affine(
    count: int,
    *,
    generator: torch.Generator,
    hflip_prob: float,
    rotation: float,
    translation: float,
    scale: tuple[float, float],
) -> AffineParams:
    """Draw ``count`` transformations: flip with ``hflip_prob``, then a uniform affine map."""
    u = torch.rand(count, 5, generator=generator, dtype=torch.float64)
    return AffineParams(
        angle=(2 * u[:, 0] - 1) * rotation,
        shift=(2 * u[:, 1:3] - 1) * translation,
        scale=scale[0] + u[:, 3] * (scale[1] - scale[0]),
        hflip=u[:, 4] < hflip_prob,
    )


def sampling_grid_matrix(params: AffineParams, height: int, width: int) -> torch.Tensor:
    """``affine_grid`` matrices (N, 2, 3) that pull each output pixel from the input.

    The forward map A·p + t acts on pixel offsets from the image centre; sampling needs its
    inverse expressed in normalised coordinates, D⁻¹ A⁻¹ D and −D⁻¹ A⁻¹ t with D = diag(W/2, H/2).
    """
    rad = params.angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    flip = torch.where(params.hflip, -1.0, 1.0).to(torch.float64)
    s = params.scale
    # Forward linear part A = s · R · diag(flip, 1), with y pointing down on screen.
    a = torch.stack(
        [
            torch.stack([s * cos * flip, s * sin], dim=-1),
            torch.stack([-s * sin * flip, s * cos], dim=-1),
        ],
        dim=-2,
    )
    half = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    shift_px = params.shift * torch.tensor([width, height], dtype=torch.float64)
    a_inv = torch.linalg.inv(a)
    lin = a_inv * half.view(1, 1, 2) / half.view(1, 2, 1)
    offset = -(a_inv @ shift_px.unsqueeze(-1)).squeeze(-1) / half
    return torch.cat([lin, offset.unsqueeze(-1)], dim=-1).to(torch.float32)


def warp(images: torch.Tensor, params: AffineParams, *, mode: str = "bilinear") -> torch.Tensor:
    """Apply one transformation per image; pixels from outside the frame are zero."""
    height, width = images.shape[-2:]
    theta = sampling_grid_matrix(params, height, width).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
