"""DAVE engine speed and memory against the best the alternatives can do, side by side.

On a random-init timm ``vit_small_patch16_224`` at 224 px, 2 images × N samples:

1. the floor: one plain forward and input-gradient backward of the same 2·N model inputs
   (transformed and noised images), at several items per pass; the best of them is the floor;
2. DAVE at its defaults (``batch_size=None``: the engine's own chunking), against that best
   floor, and the effective mode's own cost (the floor's passes inside ``effective_mode``);
   the reliability bookkeeping (the two half-sample robust means and their split-half
   Spearman, beside the robust mean itself) as a share of DAVE's call;
   the passes the monitor's cost model weighs: DAVE's (the effective mode, an input gradient,
   its own chunking) and a forward without gradients, against a training step of the same
   inputs (forward, backward through the weights, AdamW);
3. a one-sample-per-pass implementation of the method (the reference implementation's shape)
   and Captum's ``NoiseTunnel(InputXGradient)`` with the same N, each timed beside DAVE;
4. memory: the peak added by one DAVE call at a fixed ``batch_size`` for N = 16, 64 and 128
   (the robust mean's reservoir holds up to 64 samples per image), and the peak per item and
   input pixel of one forward + backward pass, the figure behind the CUDA chunking rule.

    python benchmarks/bench_engine.py [--device cuda] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable

import timm
import torch
from _timing import timed_side_by_side

from dave_lightning import DAVE, effective_mode
from dave_lightning.attribution.aggregation import (
    SampleAccumulator,
    _median_and_threshold,
    sample_order,
)
from dave_lightning.attribution.gradients import auto_batch_size, chunks
from dave_lightning.attribution.reliability import split_half_reliability
from dave_lightning.core.transforms import sample_affine, warp
from dave_lightning.models import ModelAdapter

MODEL = "vit_small_patch16_224"
FLOOR_BATCHES = (2, 4, 8, 16, 32)


def build(device: str, n_images: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False).to(device).eval()
    images = torch.randn(n_images, 3, 224, 224, device=device)
    return model, images, torch.arange(n_images, device=device)


def model_inputs(engine: DAVE, images: torch.Tensor) -> torch.Tensor:
    """The 2·N images DAVE feeds the model: each image transformed and noised N times, with the
    engine's own settings (the CPU kernels' speed depends a little on the values)."""
    settings, n = engine.settings, engine.settings.n_samples
    generator = torch.Generator().manual_seed(1)
    params = sample_affine(
        len(images) * n,
        generator=generator,
        hflip_prob=settings.hflip_prob,
        rotation=settings.rotation,
        translation=settings.translation,
        scale=settings.scale,
    )
    keep = (1 - torch.linspace(0, settings.noise_alpha, n)).repeat(len(images)).view(-1, 1, 1, 1)
    keep = keep.to(images.device)
    noise = torch.randn(len(images) * n, *images.shape[1:], generator=generator)
    warped = warp(images.repeat_interleave(n, 0), params)
    return keep * warped + (1 - keep**2).sqrt() * noise.to(images.device)


def floor(
    model: ModelAdapter,
    inputs: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
    effective: bool = False,
) -> None:
    """Forward + input-gradient backward of ``inputs`` in passes of ``batch_size``."""
    with model.attribution():
        for chunk in chunks(len(inputs), batch_size):
            x = inputs[chunk].clone().requires_grad_()
            if effective:
                with effective_mode():
                    selected = model(x).gather(1, target[chunk].view(-1, 1))
            else:
                selected = model(x).gather(1, target[chunk].view(-1, 1))
            torch.autograd.grad(selected.sum(), x)


def robust_mean(samples: torch.Tensor) -> torch.Tensor:
    """The MAD robust mean of one image's samples alone: what DAVE needs without reliability."""
    median, threshold = _median_and_threshold(samples)
    keep = (samples - median).abs() <= threshold
    return (samples * keep).sum(0) / keep.sum(0)


def with_reliability(samples: torch.Tensor, halves: torch.Tensor) -> torch.Tensor:
    """The engine's bookkeeping of one image's samples: the robust means of all samples and of
    each half, and the halves' split-half reliability."""
    accumulator = SampleAccumulator()
    accumulator.add(samples, halves)
    _, half_a, half_b = accumulator.means()
    return split_half_reliability(half_a[None], half_b[None])


def training_step(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> None:
    """One AdamW step on ``inputs`` in train mode (the weights change: time it, not its result)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    torch.nn.functional.cross_entropy(model(inputs), target).backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    model.eval()


def no_grad_forward(model: ModelAdapter, inputs: torch.Tensor) -> None:
    """A forward of ``inputs`` without gradients, as the deletion curves' passes."""
    with model.attribution(), torch.no_grad():
        model(inputs)


def one_sample_per_pass(
    model: ModelAdapter, images: torch.Tensor, target: torch.Tensor, n: int, alpha: float
) -> torch.Tensor:
    """The reference implementation's shape: one (image, sample) forward/backward at a time."""
    generator = torch.Generator().manual_seed(0)
    maps = []
    with model.attribution():
        for image, label in zip(images, target, strict=True):
            params = sample_affine(
                n, generator=generator, hflip_prob=0.5, rotation=20, translation=0.1,
                scale=(0.9, 1.1),
            )  # fmt: skip
            samples = []
            for k, t in enumerate(torch.linspace(0, alpha, n).tolist()):
                source = image[None].clone().requires_grad_()
                noise = torch.randn(source.shape, generator=generator).to(source.device)
                warped = warp(source, params.index(torch.tensor([k])))
                x = (1 - t) * warped + (1 - (1 - t) ** 2) ** 0.5 * noise
                with effective_mode():
                    logit = model(x)[0, label]
                (grad,) = torch.autograd.grad(logit, source)
                samples.append(grad * source.detach())
            maps.append(torch.stack(samples).median(0).values)
    return torch.cat(maps)


def captum_noise_tunnel(
    model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, n: int
) -> Callable[[], object] | None:
    try:
        from captum.attr import InputXGradient, NoiseTunnel
    except ImportError:
        return None
    tunnel = NoiseTunnel(InputXGradient(model))

    def run() -> object:
        return tunnel.attribute(
            images.clone().requires_grad_(),
            nt_type="smoothgrad",
            nt_samples=n,
            nt_samples_batch_size=n,
            target=target,
            stdevs=0.5,
        )

    return run


def read_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (Linux), in KiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def reset_peak_rss() -> int:
    """Reset the process's peak resident size (Linux clear_refs) and return the current one."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return read_status_kib("VmRSS") * 1024


def measure_peak(device: str, fn: Callable[[], object]) -> float:
    """Bytes added at the peak of ``fn()`` (CUDA allocations, or resident memory on a CPU)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - base
    base = reset_peak_rss()
    fn()
    return read_status_kib("VmHWM") * 1024 - base


def memory_child(device: str, what: str, value: int, batch_size: int) -> None:
    """In a fresh process: print the peak bytes of one DAVE call or of one floor pass."""
    model, images, target = build(device, 2)
    if what == "dave":
        engine = DAVE(model, n_samples=value, batch_size=batch_size)
        peak = measure_peak(device, lambda: engine.attribute(images, target))
    else:
        inputs = images.repeat(value // 2, 1, 1, 1)
        adapter = ModelAdapter(model)
        peak = measure_peak(
            device, lambda: floor(adapter, inputs, target.repeat(value // 2), value)
        )
    print(json.dumps({"peak": peak}))


def child_peak(device: str, what: str, value: int, batch_size: int) -> float:
    command = [sys.executable, __file__, "--child", what, str(value), "--batch-size"]
    command += [str(batch_size), "--device", device, "--threads", str(torch.get_num_threads())]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="for the memory rows")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch's CPU threads"
    )
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        memory_child(args.device, args.child[0], int(args.child[1]), args.batch_size)
        return

    n = args.n_samples
    model, images, target = build(args.device, 2)
    adapter = ModelAdapter(model)
    engine = DAVE(model, n_samples=n, noise_alpha=0.5)
    inputs, targets = model_inputs(engine, images), target.repeat_interleave(n)
    auto = auto_batch_size(images)
    print(
        f"{MODEL} random init, 2 images at 224 px, n_samples={n}, device={args.device}, "
        f"threads={torch.get_num_threads()}, {args.repeats} interleaved rounds (medians)"
    )
    batches = [b for b in FLOOR_BATCHES if b <= 2 * n]
    floors = timed_side_by_side(
        [lambda b=b: floor(adapter, inputs, targets, b) for b in batches], args.device, args.repeats
    )
    best = min(range(len(batches)), key=floors.__getitem__)
    print(f"\nfloor: plain forward + input backward of the same {2 * n} model inputs")
    for size, seconds in zip(batches, floors, strict=True):
        mark = "  <- best" if size == batches[best] else ""
        print(
            f"  {size:>3} items per pass {seconds:>9.3f} s  {seconds / floors[best]:>5.2f} ×{mark}"
        )

    floor_s, dave_s, effective_s = timed_side_by_side(
        [
            lambda: floor(adapter, inputs, targets, batches[best]),
            lambda: engine.attribute(images, target),
            lambda: floor(adapter, inputs, targets, batches[best], effective=True),
        ],
        args.device,
        args.repeats,
    )
    print(f"\nDAVE at its defaults ({auto} items per pass here) against the best floor")
    print(f"  best floor ({batches[best]} items per pass) {floor_s:>9.3f} s")
    print(f"  floor in effective mode        {effective_s:>9.3f} s  {effective_s / floor_s:.2f} ×")
    print(f"  DAVE, batch_size=None          {dave_s:>9.3f} s  {dave_s / floor_s:.2f} ×")

    generator = torch.Generator().manual_seed(2)
    samples = torch.randn(n, *images.shape[1:], generator=generator).to(args.device)
    halves = (sample_order(n) % 2).to(args.device)
    mean_s, reliable_s = timed_side_by_side(
        [lambda: robust_mean(samples), lambda: with_reliability(samples, halves)],
        args.device,
        args.repeats,
    )
    extra = (reliable_s - mean_s) * len(images)
    print(
        f"  reliability bookkeeping         {extra:>9.3f} s  {extra / dave_s:.1%} of DAVE's call "
        f"(robust mean alone {mean_s * 1e3:.0f} ms per image, with the halves and their "
        f"Spearman {reliable_s * 1e3:.0f} ms)"
    )

    trained = timm.create_model(MODEL, pretrained=False).to(args.device)
    train_s, pass_s, forward_s = timed_side_by_side(
        [
            lambda: training_step(trained, inputs, targets),
            lambda: floor(adapter, inputs, targets, auto, effective=True),
            lambda: no_grad_forward(adapter, inputs),
        ],
        args.device,
        args.repeats,
    )
    print(f"\nthe cost model's passes (docs/callback.md), the same {2 * n} inputs")
    print(f"  training step (AdamW, train mode)  {train_s:>9.3f} s  1.00")
    print(f"  DAVE's pass ({auto} per pass)         {pass_s:>9.3f} s  {pass_s / train_s:.2f}")
    print(f"  forward without gradients          {forward_s:>9.3f} s  {forward_s / train_s:.2f}")

    others = {"one sample per pass": lambda: one_sample_per_pass(adapter, images, target, n, 0.5)}
    captum = captum_noise_tunnel(model, images, target, n)
    if captum is not None:
        others["Captum NoiseTunnel(InputXGradient)"] = captum
    print("\nalternatives, each timed beside DAVE (÷ DAVE: that pair's ratio)")
    for name, fn in others.items():
        dave_pair, seconds = timed_side_by_side(
            [lambda: engine.attribute(images, target), fn], args.device, args.repeats
        )
        print(f"  {name:<36} {seconds:>9.3f} s  {seconds / dave_pair:.2f} × DAVE")
    if captum is None:
        print("  (Captum not installed: pip install captum)")

    kind = "CUDA allocated" if args.device == "cuda" else "resident (VmHWM − VmRSS before)"
    print(f"\npeak {kind} memory, each in a fresh process")
    for samples in (16, 64, 128):
        peak = child_peak(args.device, "dave", samples, args.batch_size)
        print(f"  one DAVE call, batch_size={args.batch_size}, n_samples={samples:<4} "
              f"{peak / 2**20:>8.1f} MiB")  # fmt: skip
    per_item = child_peak(args.device, "floor", 8, 8) / 8
    print(
        f"  one forward + backward pass of 8 items: {per_item / 2**20:.1f} MiB per item, "
        f"{per_item / 224**2:.0f} bytes per input pixel"
    )


if __name__ == "__main__":
    main()
