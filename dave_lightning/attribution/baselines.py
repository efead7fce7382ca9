"""Single-pass baselines shown beside DAVE: input × gradient and input × effective gradient."""

from __future__ import annotations

import torch
from torch import nn

from dave_lightning.attribution.engine import (
    auto_batch_size,
    channel_sum,
    check_inputs,
    gradient_contributions,
)
from dave_lightning.attribution.model_info import attribution_context, model_device
from dave_lightning.attribution.postprocess import postprocess as postprocess_maps


class _InputTimesGradient:
    """Input × gradient of the target logit from one clean pass, post-processed like DAVE."""

    effective: bool

    def __init__(
        self, model: nn.Module, *, postprocess: bool = True, batch_size: int | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.postprocess = postprocess
        self.batch_size = batch_size

    def attribute(self, images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Maps (B, 1, H, W): in [0, 1] with post-processing, signed channel sums without."""
        images, target = check_inputs(self.model, images, target)
        with attribution_context(self.model):
            device = model_device(self.model)
            source = images.to(device, torch.float32).clone()
            contributions = gradient_contributions(
                self.model,
                source,
                target.to(device),
                self.batch_size or auto_batch_size(source),
                effective=self.effective,
            )
            finish = postprocess_maps if self.postprocess else channel_sum
            return finish(contributions).to(images.device)

    __call__ = attribute


class InputXGradient(_InputTimesGradient):
    """Input × plain gradient: the noisy, grid-like baseline DAVE improves on."""

    effective = False


class InputXEffective(_InputTimesGradient):
    """Input × effective gradient (operator variation removed), without averaging."""

    effective = True
