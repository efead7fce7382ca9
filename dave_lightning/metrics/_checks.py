"""Input validation shared by the metrics: shapes, dtypes and targets; errors say the fix."""

from __future__ import annotations

import torch

_FLOAT_TYPES = (torch.float32, torch.float64)


def as_maps(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """Return attribution maps as a float32/float64 (B, H, W) tensor; accepts (B, 1, H, W) too."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    elif maps.ndim != 3:
        raise ValueError(
            f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(maps.shape)}; "
            "reduce channels first (e.g. maps.sum(1, keepdim=True))"
        )
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {maps.dtype}; call .float() first")
    return maps if maps.dtype in _FLOAT_TYPES else maps.float()


def as_masks(masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Return boolean (B, H, W) masks on the maps' device, matching the (B, H, W) ``maps``."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {masks.dtype}; pass e.g. masks > 0.5")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks shape {tuple(masks.shape)} does not match maps shape {tuple(maps.shape)}; "
            "resize the masks (nearest) or the maps to the same (B, H, W)"
        )
    return masks.to(maps.device)


def same_shape(maps_a: torch.Tensor, maps_b: torch.Tensor) -> None:
    """Raise if two (B, H, W) map batches differ in shape."""
    if maps_a.shape != maps_b.shape:
        raise ValueError(
            f"maps shapes differ: {tuple(maps_a.shape)} vs {tuple(maps_b.shape)}; "
            "compare maps of the same images at the same resolution"
        )


def as_target(
    target: torch.Tensor | int, batch: int, device: torch.device, name: str = "target"
) -> torch.Tensor:
    """Return an int64 (B,) target on ``device`` from an int or an integer (B,) tensor."""
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name} must be an int or a tensor, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {target.dtype}; call .long() first")
    if target.ndim == 0:
        target = target.expand(batch)
    if target.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(target.shape)}")
    return target.to(device, torch.long)


def check_indices(values: torch.Tensor, high: int, name: str) -> None:
    """Raise unless every value lies in [0, high)."""
    if values.numel() and (values.min() < 0 or values.max() >= high):
        raise ValueError(
            f"{name} must lie in [0, {high}), got values in "
            f"[{int(values.min())}, {int(values.max())}]"
        )


def finite_rows(maps: torch.Tensor) -> torch.Tensor:
    """(B,) bool: images whose map is entirely finite; the others score NaN in every metric."""
    return torch.isfinite(maps).flatten(1).all(1)
