"""DAVE's settings as one frozen, self-validating object shared by the engine, monitor and CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from dave_lightning.core.validation import check_choice, check_int, check_number

AGGREGATIONS = ("mad", "mean")


@dataclass(frozen=True)
class DAVESettings:
    """How DAVE samples, aggregates and post-processes (docs/method.md, "The engine").

    ``noise_alpha=None`` stands for the paper's value for the model's family; resolve it with
    :meth:`for_model` once the model is known. ``target_reliability`` turns on adaptive
    sampling: images whose map is less reliable than that draw more samples, up to
    ``max_samples``.
    """

    n_samples: int = 50
    noise_alpha: float | None = 0.5
    hflip_prob: float = 0.5
    rotation: float = 20.0
    translation: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    aggregation: str = "mad"
    postprocess: bool = True
    batch_size: int | None = None
    seed: int = 0
    target_reliability: float | None = None
    max_samples: int | None = None

    def __post_init__(self) -> None:
        check_int("n_samples", self.n_samples, minimum=1)
        if self.noise_alpha is not None:
            check_number("noise_alpha", self.noise_alpha, 0.0, 1.0)
        check_number("hflip_prob", self.hflip_prob, 0.0, 1.0)
        check_number("rotation", self.rotation, 0.0, 180.0)
        check_number("translation", self.translation, 0.0, 1.0)
        scale = tuple(self.scale)
        if len(scale) != 2 or not all(isinstance(s, (int, float)) for s in scale):
            raise ValueError(f"scale must be (low, high), got {self.scale}")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        if not isinstance(self.postprocess, bool):
            raise TypeError(f"postprocess must be a bool, got {type(self.postprocess).__name__}")
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1)
        check_int("seed", self.seed, minimum=0)
        self._check_adaptive()
        object.__setattr__(self, "scale", (float(scale[0]), float(scale[1])))
        for name in ("hflip_prob", "rotation", "translation"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.noise_alpha is not None:
            object.__setattr__(self, "noise_alpha", float(self.noise_alpha))

    def _check_adaptive(self) -> None:
        if self.target_reliability is None:
            if self.max_samples is not None:
                raise ValueError("max_samples caps adaptive sampling; pass target_reliability too")
            return
        check_number("target_reliability", self.target_reliability, 0.0, 1.0)
        if self.max_samples is None:
            raise ValueError(
                "target_reliability needs max_samples, the cap on samples per image "
                "(e.g. max_samples=64)"
            )
        check_int("max_samples", self.max_samples, minimum=max(2, self.n_samples))
        if self.n_samples < 2:
            raise ValueError("adaptive sampling needs n_samples >= 2 to measure reliability")

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> DAVESettings:
        """The settings among ``arguments`` (a signature that repeats them: ``locals()``);
        those missing keep their defaults."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})

    def for_model(self, reference_noise_alpha: float | None) -> DAVESettings:
        """These settings for a model whose family's reference ``noise_alpha`` is given (None:
        it has none): ``noise_alpha=None`` becomes the reference value.

        Raises:
            ValueError: for ``noise_alpha=None`` on a model without a reference value.
        """
        if self.noise_alpha is not None:
            return self
        if reference_noise_alpha is None:
            raise ValueError(
                "noise_alpha=None needs a model whose family has a reference value (timm or "
                "HuggingFace DeiT-III, DeiT or ViT, base or small, patch 16); pass "
                "noise_alpha explicitly"
            )
        return replace(self, noise_alpha=reference_noise_alpha)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples) for snapshots, reports and state keys."""
        values = asdict(self)
        values["scale"] = list(self.scale)
        return values


#: The engine's own defaults (``DAVE``, ``dave-lightning explain``).
ENGINE = DAVESettings()

#: DAVE's settings where it runs at every evaluation of a fit (``DAVEMonitor`` and
#: ``dave-lightning compare``, whose numbers must be comparable): fewer samples than the
#: engine's own default, so that an evaluation per epoch stays cheap (docs/callback.md).
MONITOR_ENGINE = DAVESettings(n_samples=8)
