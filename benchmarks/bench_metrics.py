"""Deletion-curve speed: the vectorised, chunked ``deletion_curve`` vs per-step and per-point loops.

8 images × 128 steps on a tiny random-init timm ViT (64 px, patch 8, depth 2, 10 classes). The
per-step loop rebuilds the perturbed batch and runs the model once per step, the way most
published insertion/deletion code does; the per-point loop runs one image and step per call.
All use the same pixel order, so the curves must agree. The floor is the model forward alone
on the same perturbed images and chunks.

    python benchmarks/bench_metrics.py [--device cuda] [--repeats 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse

import timm
import torch
from _timing import timed_side_by_side

from dave_lightning.metrics import baseline_images, deletion_curve

MAX_FRACTION = 0.9


@torch.no_grad()
def loop(
    model: torch.nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    steps: int,
    per_call: int,
) -> torch.Tensor:
    """Most-relevant-first deletion (maps without ties), one model call per step and per
    ``per_call`` images: ``per_call`` = B is the per-step loop, 1 the per-point loop."""
    batch, _, height, width = images.shape
    order = maps.flatten(1).argsort(dim=1, descending=True)
    blurred = baseline_images(images, "blur")
    probabilities = []
    for fraction in torch.linspace(0, MAX_FRACTION, steps).tolist():
        count = round(fraction * height * width)
        changed = torch.zeros(batch, height * width, dtype=torch.bool, device=images.device)
        changed.scatter_(1, order[:, :count], True)
        x = torch.where(changed.view(batch, 1, height, width), blurred, images)
        logits = torch.cat([model(chunk) for chunk in x.split(per_call)])
        probabilities.append(logits.softmax(-1).gather(1, target[:, None])[:, 0])
    return torch.stack(probabilities, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=128)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=64, patch_size=8, depth=2, num_classes=10
    )
    model = model.to(args.device).eval()
    images = torch.randn(args.images, 3, 64, 64, device=args.device)
    maps = torch.rand(args.images, 1, 64, 64, device=args.device)
    target = torch.arange(args.images, device=args.device) % 10

    def vectorised() -> torch.Tensor:
        return deletion_curve(
            model,
            images,
            target,
            maps,
            order="morf",
            steps=args.steps,
            max_fraction=MAX_FRACTION,
            batch_size=args.batch_size,
        )[1]

    def per_step() -> torch.Tensor:
        return loop(model, images, target, maps[:, 0], args.steps, per_call=args.images)

    def per_point() -> torch.Tensor:
        return loop(model, images, target, maps[:, 0], args.steps, per_call=1)

    perturbed = images.repeat(args.steps, 1, 1, 1)

    @torch.no_grad()
    def floor() -> None:
        for chunk in perturbed.split(args.batch_size):
            model(chunk)

    difference = (vectorised() - per_step()).abs().max().item()
    n = args.images * args.steps
    calls = -(-n // args.batch_size)
    rows = [
        (f"vectorised deletion_curve, chunks of {args.batch_size}", vectorised, calls),
        (f"per-step loop ({args.images} images per call)", per_step, args.steps),
        ("per-point loop (1 image per call)", per_point, n),
        ("floor: the model forward alone, same chunks", floor, calls),
    ]
    times = timed_side_by_side([fn for _, fn, _ in rows], args.device, args.repeats)
    print(
        f"deletion curves: {args.images} images × {args.steps} steps, tiny ViT (64 px, patch 8, "
        f"depth 2), device={args.device}, threads={torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    print(f"{'method':<48} {'seconds':>8} {'calls':>6} {'÷ vectorised':>13}")
    for (name, _, count), seconds in zip(rows, times, strict=True):
        print(f"{name:<48} {seconds:>8.3f} {count:>6} {seconds / times[0]:>13.2f}")
    print(f"max |Δ probability| vectorised vs per-step loop: {difference:.2e}")


if __name__ == "__main__":
    main()
