"""The metrics on a real (tiny, random-init) timm ViT with a plain input × gradient method."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch

from dave_lightning import metrics


def input_x_gradient(
    model: torch.nn.Module,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Any attribution callable works: here input × gradient of the target logit, channel-summed."""

    def attribute(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_()
            logits = model(x).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(logits, x)
        return (grad * x).detach().sum(1, keepdim=True)

    return attribute


def test_metrics_on_a_timm_vit() -> None:
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        depth=1,
        embed_dim=32,
        num_heads=2,
        num_classes=4,
    ).eval()
    attribute = input_x_gradient(model)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4

    probe = metrics.make_grid_probe(images, labels, k=2)
    flat_targets = probe.targets.flatten()
    maps = attribute(probe.images.repeat_interleave(4, 0), flat_targets)
    grid_pg = metrics.grid_pointing_game(maps, 2, probe.cells.flatten())
    assert grid_pg.shape == (8,) and ((grid_pg >= 0) & (grid_pg <= 1)).all()

    maps = attribute(images, labels)
    scores = metrics.stability(attribute, images, labels)
    assert all(v.shape == (8,) and v.isfinite().all() for v in scores.values())
    for order in ("lerf", "morf", "random"):
        fractions, probs = metrics.deletion_curve(
            model, images, labels, maps, order=order, steps=16, batch_size=40
        )
        auc = metrics.curve_auc(fractions, probs)
        assert auc.shape == (8,) and ((auc > 0) & (auc < 1)).all()
    artifact = metrics.patch_artifact_score(maps, 8)
    assert ((artifact > 0) & (artifact < 1)).all()
    assert metrics.gini(maps).isfinite().all()
    masks = metrics.boxes_to_masks(torch.tensor([[0, 0, 16, 16]]).expand(8, 4), 32, 32)
    assert metrics.energy_pointing_game(maps, masks).isfinite().all()
    drift = metrics.attribution_drift(maps, attribute(images, labels))
    torch.testing.assert_close(drift["cosine"], torch.ones(8), atol=1e-5, rtol=0)
