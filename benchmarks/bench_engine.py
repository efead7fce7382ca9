"""DAVE engine speed and memory, measured side by side in one run.

Times DAVE (N samples, 2 images, random-init timm vit_small_patch16_224 at 224 px) against
(a) the floor — one plain forward and input-gradient backward over the same 2·N model inputs
(transformed and noised images),
(b) a naive loop doing one sample at a time like the reference implementation, and
(c) Captum's NoiseTunnel(InputXGradient) with the same N when Captum is installed.
Then peak memory for n_samples 16 vs 128 at a fixed batch size, each in a fresh process.

    python benchmarks/bench_engine.py [--device cuda] [--repeats 3]
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

from dave_lightning import DAVE
from dave_lightning.attribution.effective import effective_mode
from dave_lightning.attribution.model_info import attribution_context
from dave_lightning.attribution.transforms import sample_affine, warp

MODEL = "vit_small_patch16_224"


def build(device: str, n_images: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False).to(device).eval()
    images = torch.randn(n_images, 3, 224, 224, device=device)
    return model, images, torch.arange(n_images, device=device)


def model_inputs(engine: DAVE, images: torch.Tensor) -> torch.Tensor:
    """The 2·N images DAVE feeds the model: each image transformed and noised N times, with the
    engine's own settings.

    The floor runs on these rather than on N copies of the clean images because the speed of
    the CPU kernels depends a little on the values (a noisy input costs ~3 % more).
    """
    n = engine.n_samples
    generator = torch.Generator().manual_seed(1)
    params = sample_affine(
        len(images) * n,
        generator=generator,
        hflip_prob=engine.hflip_prob,
        rotation=engine.rotation,
        translation=engine.translation,
        scale=engine.scale,
    )
    keep = (1 - torch.linspace(0, engine.noise_alpha, n)).repeat(len(images)).view(-1, 1, 1, 1)
    keep = keep.to(images.device)
    noise = torch.randn(len(images) * n, *images.shape[1:], generator=generator)
    warped = warp(images.repeat_interleave(n, 0), params)
    return keep * warped + (1 - keep**2).sqrt() * noise.to(images.device)


def floor(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> None:
    """One plain forward + input backward over the model inputs, frozen parameters."""
    with attribution_context(model):
        x = inputs.clone().requires_grad_()
        selected = model(x).gather(1, target.view(-1, 1))
        torch.autograd.grad(selected.sum(), x)


def naive_loop(
    model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, n: int, alpha: float
) -> torch.Tensor:
    """The reference implementation's shape: one (image, sample) forward/backward at a time."""
    generator = torch.Generator().manual_seed(0)
    maps = []
    with attribution_context(model):
        for image, label in zip(images, target, strict=True):
            params = sample_affine(
                n,
                generator=generator,
                hflip_prob=0.5,
                rotation=20,
                translation=0.1,
                scale=(0.9, 1.1),
            )
            samples = []
            for k, t in enumerate(torch.linspace(0, alpha, n).tolist()):
                source = image[None].clone().requires_grad_()
                noise = torch.randn(source.shape, generator=generator).to(source.device)
                x = (1 - t) * warp(source, params.index(torch.tensor([k]))) + (
                    1 - (1 - t) ** 2
                ) ** 0.5 * noise
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


def peak_memory_child(device: str, n_samples: int, batch_size: int) -> None:
    """Run in a fresh process: print the peak memory added by one DAVE call, in MiB."""
    model, images, target = build(device, 2)
    engine = DAVE(model, n_samples=n_samples, batch_size=batch_size)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        engine.attribute(images, target)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = reset_peak_rss()
        engine.attribute(images, target)
        peak = read_status_kib("VmHWM") * 1024 - base
    print(json.dumps({"peak_mib": peak / 2**20}))


def peak_memory(device: str, n_samples: int, batch_size: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child-memory",
            str(n_samples),
            "--batch-size",
            str(batch_size),
            "--device",
            device,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory is not None:
        peak_memory_child(args.device, args.child_memory, args.batch_size)
        return

    n = args.n_samples
    model, images, target = build(args.device, 2)
    engine = DAVE(model, n_samples=n, noise_alpha=0.5, batch_size=2 * n)
    inputs, targets = model_inputs(engine, images), target.repeat_interleave(n)
    print(
        f"{MODEL} random init, 2 images at 224 px, n_samples={n}, device={args.device}, "
        f"threads={torch.get_num_threads()}"
    )
    # Each comparison runs as its own interleaved pair: a pass after the naive loop's many small
    # allocations runs slower, so mixing all four in one round would bias whichever follows it.
    floor_seconds, dave_seconds = timed_side_by_side(
        [lambda: floor(model, inputs, targets), lambda: engine.attribute(images, target)],
        args.device,
        args.repeats,
    )
    rows = [
        ("floor: plain forward+backward of 2·N images", floor_seconds, dave_seconds),
        ("DAVE (one batched pass)", dave_seconds, dave_seconds),
    ]
    others = {"naive loop, one sample per pass": lambda: naive_loop(model, images, target, n, 0.5)}
    captum = captum_noise_tunnel(model, images, target, n)
    if captum is not None:
        others["Captum NoiseTunnel(InputXGradient)"] = captum
    for name, fn in others.items():
        dave_pair, seconds = timed_side_by_side(
            [lambda: engine.attribute(images, target), fn], args.device, args.repeats
        )
        rows.append((name, seconds, dave_pair))
    print(f"{'method':<46} {'seconds':>9} {'× floor':>8} {'÷ DAVE':>8}")
    for name, seconds, dave_pair in rows:
        versus_dave = seconds / dave_pair
        print(
            f"{name:<46} {seconds:>9.3f} {versus_dave * dave_seconds / floor_seconds:>8.2f} "
            f"{versus_dave:>8.2f}"
        )
    print("(each row timed side by side with DAVE; ÷ DAVE is that pair's ratio)")
    if captum is None:
        print("(Captum not installed: pip install captum)")

    kind = "CUDA allocated" if args.device == "cuda" else "resident (VmHWM − VmRSS before)"
    print(f"\npeak {kind} memory of one DAVE call, batch_size={args.batch_size}, 2 images")
    small = peak_memory(args.device, 16, args.batch_size)
    large = peak_memory(args.device, 128, args.batch_size)
    print(f"n_samples=16 : {small:8.1f} MiB")
    print(f"n_samples=128: {large:8.1f} MiB  (ratio {large / small:.3f})")


if __name__ == "__main__":
    main()
