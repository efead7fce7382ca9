"""Argument checks shared by the package: errors that name the parameter and the bad value."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_int(name: str, value: object, *, minimum: int) -> None:
    """``value`` must be an int (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_number(name: str, value: object, low: float, high: float) -> None:
    """``value`` must be a real number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_images(name: str, images: object, single_image_fix: str) -> None:
    """``images`` must be a floating-point (B, C, H, W) tensor; ``single_image_fix`` says how
    to turn a 3-D one into a batch."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D (B, C, H, W), got shape {tuple(images.shape)}; {single_image_fix}"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor normalised for the model, got {images.dtype}"
        )


def check_finite(name: str, images: torch.Tensor, fix: str) -> None:
    """``images`` (B, ...) must hold no NaN or Inf; the error names the offending items."""
    finite = torch.isfinite(images.detach()).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:8])) + (", …" if len(bad) > 8 else "")
        raise ValueError(f"{name} hold NaN or Inf values (items {shown}); {fix}")
