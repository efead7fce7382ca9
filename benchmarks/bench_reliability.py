"""Map reliability on the demo model: what it predicts, what adaptive sampling buys, and the
estimators tried to reach the 16-sample reliability with 8 samples.

Needs a demo checkpoint (``dave-lightning demo``; ``make bench`` trains one). On 16 probe images
(target: the label), seeds 0–2 (3 seed pairs), in one run:

1. reliability: the engine's split-half reliability (Spearman–Brown corrected) and the raw
   half-map Spearman, against the measured Spearman agreement of maps from two seeds, N = 4–64;
2. adaptive sampling: samples per image and seconds to reach a target reliability of 0.7, 0.8
   and 0.9 (cap 128), against fixed N;
3. estimators: every variant aggregates the very same per-sample contributions (one sampler
   replicating the engine's transformations and noise; Sobol noise redraws them): seed-to-seed
   agreement, split-half reliability, and Spearman against the baseline's N = 256 map (an
   estimator of the same map at lower noise keeps that high; one that estimates another map
   loses it) at N = 4 / 8 / 16 / 32.

    python benchmarks/bench_reliability.py --checkpoint runs/bench/shapes/version_0/checkpoints/X
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable

import torch

from dave_lightning import DAVE
from dave_lightning.attribution.aggregation import robust_mean
from dave_lightning.attribution.gradients import select_logits
from dave_lightning.attribution.postprocess import postprocess
from dave_lightning.attribution.reliability import spearman_brown
from dave_lightning.core.effective import effective_mode
from dave_lightning.core.stats import spearman
from dave_lightning.core.transforms import sample_affine, warp
from dave_lightning.data import ShapesClassifier, SyntheticShapes, render
from dave_lightning.models import ModelAdapter

SEEDS = (0, 1, 2)
NOISE_ALPHA = 0.5
MAD = 2.5 * 1.4826
Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image Spearman of two map batches over the pixels."""
    return float(spearman(a.flatten(1), b.flatten(1)).nanmean())


# ------------------------------------------------------------------------------ 1 and 2


def reliability_table(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> None:
    print("1. reliability (engine) against the agreement of two seeds, mean over 16 images")
    print(f"{'N':>4} | {'agreement (3 pairs)':>19} | {'reliability':>11} | {'raw half r':>10}")
    for n in (4, 8, 16, 32, 64):
        runs = [
            DAVE(model, n_samples=n, noise_alpha=NOISE_ALPHA, seed=seed).attribute(
                images, target, return_reliability=True
            )
            for seed in SEEDS
        ]
        pairs = [agreement(runs[i][0], runs[j][0]) for i, j in itertools.combinations(range(3), 2)]
        reliability = torch.stack([r for _, r in runs])
        half = reliability / (2 - reliability)  # Spearman–Brown undone, per image
        print(
            f"{n:>4} | {sum(pairs) / 3:>19.3f} | {reliability.nanmean():>11.3f} | "
            f"{half.nanmean():>10.3f}"
        )


def adaptive_table(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> None:
    print("\n2. adaptive sampling (cap 128 samples per image) against fixed N, seed 0")
    print(f"{'run':<22} | {'samples/image':>13} | {'reliability':>11} | {'seconds':>7}")
    counter = {"items": 0}
    hook = model.register_forward_pre_hook(
        lambda module, args: counter.update(items=counter["items"] + len(args[0]))
    )
    runs = [(f"fixed N = {n}", {"n_samples": n}) for n in (8, 16, 32, 64)]
    runs += [
        (f"target {target_}", {"n_samples": 8, "target_reliability": target_, "max_samples": 128})
        for target_ in (0.7, 0.8, 0.9)
    ]
    for name, settings in runs:
        counter["items"] = 0
        engine = DAVE(model, noise_alpha=NOISE_ALPHA, **settings)
        start = time.perf_counter()
        _, reliability = engine.attribute(images, target, return_reliability=True)
        seconds = time.perf_counter() - start
        samples = counter["items"] / len(images)
        print(f"{name:<22} | {samples:>13.1f} | {reliability.nanmean():>11.3f} | {seconds:>7.2f}")
    hook.remove()


# ---------------------------------------------------------------------------------- 3


def sobol_noise(count: int, n: int, seed: int, shape: torch.Size) -> torch.Tensor:
    """Quasi-random Gaussian noise: scrambled Sobol points, inverse normal CDF, per image."""
    out = torch.empty(count, n, *shape)
    for image in range(count):
        sobol = torch.quasirandom.SobolEngine(
            math.prod(shape), scramble=True, seed=seed * 7919 + image
        )
        u = sobol.draw(n, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
        out[image] = (math.sqrt(2.0) * torch.erfinv(2 * u - 1)).float().view(n, *shape)
    return out


def engine_noise(count: int, n: int, seed: int, shape: torch.Size) -> torch.Tensor:
    """The engine's noise: item (image, sample) from a generator seeded by (seed, image, sample)."""
    from dave_lightning.attribution.engine import _item_seed

    out = torch.empty(count, n, *shape)
    for image, sample in itertools.product(range(count), range(n)):
        generator = torch.Generator().manual_seed(_item_seed(seed, image, sample))
        out[image, sample].normal_(generator=generator)
    return out


def contributions(
    model: ModelAdapter, images: torch.Tensor, target: torch.Tensor, n: int, seed: int, sobol: bool
) -> torch.Tensor:
    """Every sample's contribution (B, n, C, H, W), drawn as the engine draws them."""
    count, shape = images.shape[0], images.shape[1:]
    params = sample_affine(
        count * n, generator=torch.Generator().manual_seed(seed), hflip_prob=0.5, rotation=20.0,
        translation=0.1, scale=(0.9, 1.1),
    )  # fmt: skip
    noise = (sobol_noise if sobol else engine_noise)(count, n, seed, shape)
    keep = 1.0 - torch.linspace(0.0, NOISE_ALPHA, n)
    out = torch.empty(count, n, *shape)
    with model.attribution():
        for image in range(count):
            source = images[image : image + 1].expand(n, -1, -1, -1).clone().requires_grad_()
            warped = warp(source, params.index(torch.arange(image * n, (image + 1) * n)))
            mixed = (
                keep.view(-1, 1, 1, 1) * warped
                + (1 - keep**2).sqrt().view(-1, 1, 1, 1) * noise[image]
            )
            with effective_mode():
                logits = model(mixed)
            (grad,) = torch.autograd.grad(
                select_logits(logits, target[image].expand(n)).sum(), source
            )
            out[image] = grad * source.detach()
    return out


def median_mad(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    median = samples.median(1, keepdim=True).values
    return median, (samples - median).abs().median(1, keepdim=True).values


def kept_mean(samples: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    keep = keep.to(samples.dtype)
    return (samples * keep).sum(1) / keep.sum(1).clamp_min(1e-12)


def trimmed(samples: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    n = samples.shape[1]
    cut = max(1, round(0.125 * n)) if n > 2 else 0
    return samples.sort(1).values[:, cut : n - cut].mean(1)


def median_of_means(samples: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    groups = 4 if samples.shape[1] >= 8 else 2
    means = torch.stack([samples[:, g::groups].mean(1) for g in range(groups)], 1)
    return means.median(1).values


def huber(samples: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    median, mad = median_mad(samples)
    scale = (1.4826 * mad).clamp_min(1e-12)
    step = ((samples - median) / scale).clamp(-1.345, 1.345).mean(1, keepdim=True)
    return (median + scale * step).squeeze(1)


def image_scale_mad(samples: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The keep-rule with one MAD per image and channel (the median over its pixels)."""
    median, mad = median_mad(samples)
    scale = mad.flatten(-2).median(-1).values[..., None, None].expand_as(mad)
    return kept_mean(samples, (samples - median).abs() <= MAD * scale)


def inverse_variance(samples: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The keep-rule, then each sample weighted by 1 / its noise level's fitted variance."""
    median, mad = median_mad(samples)
    keep = ((samples - median).abs() <= MAD * mad).to(samples.dtype)
    energy = ((samples - median) ** 2).flatten(2).mean(2).clamp_min(1e-20)  # (B, n)
    design = torch.stack([torch.ones_like(levels), levels], -1).expand(len(samples), -1, -1)
    fit = torch.linalg.lstsq(design, energy.log().unsqueeze(-1)).solution
    weights = (1 / (design @ fit).squeeze(-1).exp())[:, :, None, None, None] * keep
    return (samples * weights).sum(1) / weights.sum(1).clamp_min(1e-30)


VARIANTS: dict[str, tuple[Aggregator, bool]] = {
    "baseline: MAD robust mean": (lambda s, t: robust_mean(s, dim=1), False),
    "plain mean": (lambda s, t: s.mean(1), False),
    "trimmed mean": (trimmed, False),
    "median of 4 means": (median_of_means, False),
    "Huber, one step": (huber, False),
    "median": (lambda s, t: s.median(1).values, False),
    "MAD, one scale per image": (image_scale_mad, False),
    "inverse-variance weights over t": (inverse_variance, False),
    "Sobol quasi-random noise": (lambda s, t: robust_mean(s, dim=1), True),
}


def variants_table(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> None:
    adapter = ModelAdapter(model)
    reference = DAVE(model, n_samples=256, noise_alpha=NOISE_ALPHA, seed=1000).attribute(
        images, target
    )
    samples = {
        (sobol, n, seed): contributions(adapter, images, target, n, seed, sobol)
        for sobol in (False, True)
        for n in (4, 8, 16, 32)
        for seed in SEEDS
    }
    engine = DAVE(model, n_samples=8, noise_alpha=NOISE_ALPHA, seed=0).attribute(images, target)
    replica = postprocess(robust_mean(samples[(False, 8, 0)], dim=1))
    print(f"\n(the sampler below replicates the engine: max |map difference| at N = 8 "
          f"{float((engine - replica).abs().max()):.1e})")  # fmt: skip
    print("\n3. estimators on the same samples: agreement of 2 seeds | split-half reliability |")
    print("   Spearman with the baseline's N = 256 map")
    print(f"{'variant':<34}" + "".join(f" | {'N = ' + str(n):^20}" for n in (4, 8, 16, 32)))
    for name, (aggregate, sobol) in VARIANTS.items():
        cells = []
        for n in (4, 8, 16, 32):
            levels = torch.linspace(0.0, NOISE_ALPHA, n)
            maps, halves = [], []
            for seed in SEEDS:
                s = samples[(sobol, n, seed)]
                maps.append(postprocess(aggregate(s, levels)))
                half_maps = [postprocess(aggregate(s[:, h::2], levels[h::2])) for h in (0, 1)]
                halves.append(
                    spearman_brown(spearman(*(m.flatten(1) for m in half_maps))).nanmean()
                )
            agree = (
                sum(agreement(maps[i], maps[j]) for i, j in itertools.combinations(range(3), 2)) / 3
            )
            split = float(torch.stack(halves).mean())
            fidelity = sum(agreement(m, reference) for m in maps) / 3
            cells.append(f"{agree:.3f} {split:.3f} {fidelity:.3f}")
        print(f"{name:<34}" + "".join(f" | {cell:^20}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a demo checkpoint")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ShapesClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    size = model.hparams.image_size
    images, labels, _ = render(SyntheticShapes(16, split="probe", image_size=size))
    print(f"demo model ({args.checkpoint}), 16 probe images, noise_alpha {NOISE_ALPHA}, "
          f"{torch.get_num_threads()} threads\n")  # fmt: skip
    reliability_table(model, images, labels)
    adaptive_table(model, images, labels)
    variants_table(model, images, labels)


if __name__ == "__main__":
    main()
