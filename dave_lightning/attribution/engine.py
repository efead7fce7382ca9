"""The DAVE attribution engine: equivariant, noise-averaged effective gradients (docs/method.md).

Every (image, sample) pair is one item; items of several images and samples share a forward and
backward pass of at most ``batch_size`` items. Transformations come from a generator seeded by
``seed``, each item's noise from a generator seeded by (seed, image, sample), so maps depend
neither on the batch size nor on which other images are attributed with them (``first_index``),
and the global RNG is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dave_lightning.attribution.aggregation import SampleAccumulator, sample_order
from dave_lightning.attribution.gradients import (
    auto_batch_size,
    channel_sum,
    check_inputs,
    chunks,
    gradient_contributions,
    target_gradient,
)
from dave_lightning.attribution.postprocess import postprocess as postprocess_maps
from dave_lightning.attribution.reliability import split_half_reliability
from dave_lightning.attribution.settings import ENGINE, DAVESettings
from dave_lightning.core.transforms import AffineParams, sample_affine
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import InputEncoding, resolve_encoding

COMPONENTS = ("input_x_gradient", "input_x_effective", "input_x_equivariant", "dave")

Maps = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class _Call:
    """One ``attribute`` call: the source images and targets on the model's device, the items
    per pass, the input encoding, and the index of the first image in the larger set."""

    source: torch.Tensor
    target: torch.Tensor
    batch_size: int
    encoding: InputEncoding
    first_index: int


@dataclass
class _Items:
    """A block of (image, sample) items: local image index, sample id and noise level each."""

    image: torch.Tensor
    sample: torch.Tensor
    level: torch.Tensor
    params: AffineParams


class DAVE:
    """DAVE attributions for a classifier: ``DAVE(model).attribute(images, target)``.

    Args:
        model: an ``nn.Module`` mapping normalised images (B, C, H, W) to logits (B, classes),
            or to an output holding them (``.logits``, a tuple's first element).
        n_samples: transformed, noised samples per image.
        noise_alpha: the largest noise level; ``None`` takes the paper's value for the model's
            family (timm and HuggingFace DeiT-III, DeiT and ViT base/small patch 16).
        hflip_prob, rotation, translation, scale: the transformation distribution.
        aggregation: ``"mad"`` (robust mean) or ``"mean"``.
        postprocess: sum channels, smooth and max-normalise the maps to [0, 1].
        batch_size: items (samples of any image) per forward/backward pass, the memory cap;
            ``None`` picks one for the images' size.
        seed: seed of the engine's own generators.
        target_reliability: adaptive sampling: images whose map reliability is below it draw
            more samples, up to ``max_samples`` per image.
        max_samples: the cap of adaptive sampling.
        input_encoding: ``"none"`` or ``"add_inverse"`` (B-cos inputs ``[x, 1 − x]``);
            ``None`` takes the model's own, else detects it from the images.

    Raises:
        TypeError, ValueError: for a setting out of bounds, or ``noise_alpha=None`` on a model
            without a reference value.
    """

    def __init__(
        self,
        model: nn.Module | ModelAdapter,
        *,
        n_samples: int = ENGINE.n_samples,
        noise_alpha: float | None = ENGINE.noise_alpha,
        hflip_prob: float = ENGINE.hflip_prob,
        rotation: float = ENGINE.rotation,
        translation: float = ENGINE.translation,
        scale: tuple[float, float] = ENGINE.scale,
        aggregation: str = ENGINE.aggregation,
        postprocess: bool = ENGINE.postprocess,
        batch_size: int | None = ENGINE.batch_size,
        seed: int = ENGINE.seed,
        target_reliability: float | None = ENGINE.target_reliability,
        max_samples: int | None = ENGINE.max_samples,
        input_encoding: str | None = None,
    ) -> None:
        settings = DAVESettings.from_arguments(locals())
        self._init(model, settings, input_encoding)

    @classmethod
    def from_settings(
        cls,
        model: nn.Module | ModelAdapter,
        settings: DAVESettings,
        input_encoding: str | InputEncoding | None = None,
    ) -> DAVE:
        """The engine for ``model`` with ``settings``; ``input_encoding`` as in the constructor,
        or an encoding resolved before."""
        engine = cls.__new__(cls)
        engine._init(model, settings, input_encoding)
        return engine

    def _init(
        self,
        model: nn.Module | ModelAdapter,
        settings: DAVESettings,
        input_encoding: str | InputEncoding | None,
    ) -> None:
        self.adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        self.settings = settings.for_model(self.adapter.reference_noise_alpha)
        self.input_encoding = input_encoding

    @property
    def model(self) -> nn.Module:
        """The attributed model."""
        return self.adapter.model

    @property
    def passes_per_image(self) -> tuple[int, int]:
        """Model passes per explained image (with gradients, without): ``n_samples``, or with
        adaptive sampling at most ``max_samples``, an upper bound (docs/callback.md, "What it
        costs")."""
        settings = self.settings
        adaptive = settings.target_reliability is not None
        return (settings.max_samples if adaptive else settings.n_samples, 0)

    @property
    def noise_alpha(self) -> float:
        """The noise level in use (the reference value when ``noise_alpha=None`` was given)."""
        return self.settings.noise_alpha

    def attribute(
        self,
        images: torch.Tensor,
        target: torch.Tensor | int,
        return_components: bool = False,
        return_reliability: bool = False,
        *,
        first_index: int = 0,
    ) -> Maps | tuple[Maps, torch.Tensor]:
        """DAVE maps (B, 1, H, W) of ``target`` classes (an int or a (B,) integer tensor).

        Args:
            images: (B, C, H, W) inputs, normalised as the model expects.
            target: the class to explain per image.
            return_components: return a dict with the progressive view (``COMPONENTS``).
            return_reliability: also return each map's split-half reliability, (B,).
            first_index: the index of ``images[0]`` within a larger set whose maps this call
                reproduces (used to attribute a probe in shards).

        Returns:
            Maps in [0, 1] with ``postprocess``, signed channel sums without; with
            ``return_reliability``, a ``(maps, reliability)`` pair.

        Raises:
            TypeError, ValueError: for malformed images or targets, before any model pass.
        """
        images, target = check_inputs(self.adapter, images, target)
        encoding = resolve_encoding(self.input_encoding, self.adapter, images)
        out_device = images.device
        with self.adapter.attribution():
            device = self.adapter.device
            source = images.to(device, torch.float32).clone()
            batch_size = self.settings.batch_size or auto_batch_size(source)
            call = _Call(source, target.to(device), batch_size, encoding, first_index)
            sampled = self._sampled(call, noisy=True)
            contributions = {"dave": sampled[0]}
            if return_components:
                contributions.update(self._components(call))
                if "input_x_equivariant" not in contributions:
                    contributions["input_x_equivariant"] = contributions["dave"]
            finish = postprocess_maps if self.settings.postprocess else channel_sum
            maps = {name: finish(values).to(out_device) for name, values in contributions.items()}
            if return_reliability:
                reliability = split_half_reliability(sampled[1], sampled[2]).to(out_device)
        result = {name: maps[name] for name in COMPONENTS} if return_components else maps["dave"]
        return (result, reliability) if return_reliability else result

    __call__ = attribute

    def _components(self, call: _Call) -> dict[str, torch.Tensor]:
        """Contributions of the progressive view's other stages."""
        parts = {
            name: gradient_contributions(
                self.adapter, call.source, call.target, call.batch_size, effective=effective
            )
            for name, effective in (("input_x_gradient", False), ("input_x_effective", True))
        }
        if self.settings.noise_alpha != 0:
            parts["input_x_equivariant"] = self._sampled(call, noisy=False, adaptive=False)[0]
        return parts

    def _sampled(
        self, call: _Call, *, noisy: bool, adaptive: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Robust) means over samples of effective gradient × input: all, and both halves."""
        settings = self.settings
        count = len(call.source)
        accumulators = [
            SampleAccumulator(robust=settings.aggregation == "mad") for _ in range(count)
        ]
        active = torch.arange(count, device=call.source.device)
        drawn = settings.n_samples
        items = self._first_round(count, call.first_index, call.source.device)
        round_ = 0
        while True:  # ends: every round draws more samples, up to max_samples
            self._run(call, items, noisy, accumulators)
            means = _stack_means(accumulators)
            if not adaptive or settings.target_reliability is None:
                return means
            reliability = split_half_reliability(means[1][active], means[2][active])
            active = active[~(reliability >= settings.target_reliability)]
            if len(active) == 0 or drawn >= settings.max_samples:
                return means
            round_ += 1
            items, drawn = self._next_round(active, drawn, round_, call.first_index)

    def _first_round(self, n_images: int, first_index: int, device: torch.device) -> _Items:
        """All images × ``n_samples`` items, each image's reservoir subset first."""
        n = self.settings.n_samples
        levels = torch.linspace(0.0, self.settings.noise_alpha, n, device=device)
        image = torch.arange(n_images, device=device).repeat_interleave(n)
        sample = sample_order(n).to(device).repeat(n_images)
        table = self._transforms((first_index + n_images) * n, self.settings.seed)
        return _Items(
            image, sample, levels[sample], table.index(((first_index + image) * n + sample).cpu())
        )

    def _next_round(
        self, active: torch.Tensor, drawn: int, round_: int, first_index: int
    ) -> tuple[_Items, int]:
        """More samples for the ``active`` images: the midpoints of the noise schedule so far.

        After ``drawn`` samples on linspace(0, noise_alpha, drawn), the next round adds the
        ``drawn − 1`` midpoints (fewer at the ``max_samples`` cap), so the levels stay evenly
        spread and every sample already drawn is reused.
        """
        count = min(drawn - 1, self.settings.max_samples - drawn)
        fine = torch.linspace(0.0, self.settings.noise_alpha, 2 * drawn - 1, device=active.device)
        levels = fine[1::2][:count]
        n_images = int(active.max()) + 1
        image = active.repeat_interleave(count)
        position = torch.arange(count, device=active.device).repeat(len(active))
        seed = _round_seed(self.settings.seed, round_)
        table = self._transforms((first_index + n_images) * count, seed)
        params = table.index(((first_index + image) * count + position).cpu())
        return _Items(image, drawn + position, levels[position], params), drawn + count

    def _transforms(self, count: int, seed: int) -> AffineParams:
        settings = self.settings
        return sample_affine(
            count,
            generator=torch.Generator().manual_seed(seed),
            hflip_prob=settings.hflip_prob,
            rotation=settings.rotation,
            translation=settings.translation,
            scale=settings.scale,
        )

    def _run(
        self, call: _Call, items: _Items, noisy: bool, accumulators: list[SampleAccumulator]
    ) -> None:
        """Effective gradient × input of every item, added to its image's accumulator."""
        for chunk in chunks(len(items.image), call.batch_size):
            image_idx, sample_idx = items.image[chunk], items.sample[chunk]
            inputs = call.source[image_idx].requires_grad_()
            keep = noise = None
            if noisy:
                keep = (1.0 - items.level[chunk]).view(-1, 1, 1, 1)
                channels = call.encoding.noise_channels(call.source.shape[1])
                noise = self._noise(call.first_index + image_idx, sample_idx, channels, inputs)
            params = items.params.index(_cpu_range(chunk))
            model_input = call.encoding.perturb(inputs, params, keep, noise)
            grad = target_gradient(
                self.adapter, inputs, model_input, call.target[image_idx], effective=True
            )
            contribution = grad * inputs.detach()
            halves = sample_idx % 2
            for image in image_idx.unique().tolist():
                rows = image_idx == image
                accumulators[image].add(contribution[rows], halves[rows])

    def _noise(
        self, image_idx: torch.Tensor, sample_idx: torch.Tensor, channels: int, like: torch.Tensor
    ) -> torch.Tensor:
        """Standard normal noise per item (``channels`` channels, the size of ``like``) from a
        generator seeded by (seed, image, sample)."""
        device = image_idx.device
        noise = torch.empty(len(image_idx), channels, *like.shape[-2:], device=device)
        for row, (image, sample) in enumerate(
            zip(image_idx.tolist(), sample_idx.tolist(), strict=True)
        ):
            generator = torch.Generator(device).manual_seed(
                _item_seed(self.settings.seed, image, sample)
            )
            noise[row].normal_(generator=generator)
        return noise


def _stack_means(
    accumulators: list[SampleAccumulator],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    means = [acc.means() for acc in accumulators]
    return tuple(torch.stack([m[part] for m in means]) for part in range(3))


def _cpu_range(chunk: slice) -> torch.Tensor:
    return torch.arange(chunk.start, chunk.stop)


def _item_seed(seed: int, image: int, sample: int) -> int:
    """A distinct, reproducible seed per (seed, image, sample) item."""
    return ((seed * 1_000_003 + image) * 1_000_033 + sample) % (2**63 - 1)


def _round_seed(seed: int, round_: int) -> int:
    """The seed of adaptive round ``round_``'s transformations."""
    return _item_seed(seed, -1, round_)
