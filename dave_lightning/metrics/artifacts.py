"""Patch-artifact score: how much of a map is the ViT patch-grid pattern (docs/metrics.md, ours)."""

from __future__ import annotations

import torch

from dave_lightning.metrics._checks import as_maps, finite_rows


def patch_artifact_score(maps: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Share of each map's spectral energy (DC removed) at the patch-grid frequencies.

    The patch-grid frequencies are the 2-D DFT bins (u, v) with u a multiple of H/ph and v a
    multiple of W/pw: the fundamentals and harmonics of a pattern that repeats every patch.
    By Parseval this is the share of the map's variance explained by tiling its average patch:
    ≈1 for a pure periodic patch pattern, ≈0 for a smooth blob, about ph·pw/(H·W) for white
    noise. (Whole grid lines u = 0 or v = 0 are not counted: any smooth map has energy there.)

    Args:
        maps: (B, 1, H, W) or (B, H, W) attribution maps at the model's input resolution.
        patch_size: the token grid's stride in pixels, an int or (height, width).

    Returns:
        (B,) values in [0, 1] (lower is better); NaN for a constant or non-finite map.

    Raises:
        ValueError: when the patch size does not divide the map size.
    """
    maps = as_maps(maps)
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    height, width = maps.shape[-2:]
    if patch_h < 1 or patch_w < 1 or height % patch_h or width % patch_w:
        raise ValueError(
            f"patch_size {patch_size} must be positive and divide the map size {height}×{width}; "
            "compute the score on maps at the model's input resolution"
        )
    finite = finite_rows(maps)
    values = torch.where(finite[:, None, None], maps, 0.0).double()
    power = torch.fft.fft2(values).abs().square()
    rows = torch.arange(height, device=maps.device)[:, None] % (height // patch_h) == 0
    cols = torch.arange(width, device=maps.device) % (width // patch_w) == 0
    power[:, 0, 0] = 0.0
    total = power.flatten(1).sum(1)
    grid = (power * (rows & cols)).flatten(1).sum(1)
    # Exact constancy test: a constant map leaves only rounding noise outside DC.
    flat = values.flatten(1)
    defined = finite & (flat.amax(1) > flat.amin(1))
    return torch.where(defined, grid / total, torch.nan).to(maps.dtype)
