"""Every option of a monitor, declared once with its default (docs/callback.md, "Options").

DAVE's own settings are declared by :class:`~dave_lightning.attribution.DAVESettings` (the
monitor's defaults: ``MONITOR_ENGINE``), what an evaluation computes by
:class:`~dave_lightning.evaluation.EvaluationOptions`, when it runs by :class:`Schedule`, and
the rest here. Every front door (``DAVEMonitor``, the Fabric and HuggingFace ones,
``ProbeMonitor``) takes the same flat keyword options and builds them with
:meth:`MonitorSettings.from_options`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from dave_lightning.attribution.settings import MONITOR_ENGINE, DAVESettings
from dave_lightning.core.validation import check_choice, check_int, check_number
from dave_lightning.evaluation import EvaluationOptions
from dave_lightning.models.adapter import ForwardFn, requested_normalization
from dave_lightning.monitor.schedule import Schedule


@dataclass(frozen=True)
class MonitorSettings:
    """A monitor's options: the engine's, the evaluation's, the schedule's, and its own.

    Own options: ``num_probe`` probe images; ``regions`` tracked; pictures (``log_images``,
    ``max_images``) and their display normalisation (``mean``, ``std``); ``forward_fn`` and
    ``input_encoding`` for models that need them; where snapshots go (``snapshot_dir``); the
    tag prefix (``name``); what a failure does (``on_error``); the region alarm's
    ``alert_ratio``; the opt-in overhead budget ``max_overhead``, the largest share of the
    training time the monitor may take (evaluations that would exceed it are skipped).
    """

    engine: DAVESettings = MONITOR_ENGINE
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    schedule: Schedule = field(default_factory=Schedule)
    num_probe: int = 16
    regions: Mapping[str, torch.Tensor] | None = None
    log_images: bool = True
    max_images: int = 8
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    forward_fn: ForwardFn | None = None
    input_encoding: str | None = None
    snapshot_dir: Path | None = None
    name: str = "dave"
    on_error: str = "warn"
    alert_ratio: float = 1.0
    max_overhead: float | None = None

    def __post_init__(self) -> None:
        check_int("num_probe", self.num_probe, minimum=1)
        check_int("max_images", self.max_images, minimum=0)
        check_choice("on_error", self.on_error, ("warn", "raise"))
        check_number("alert_ratio", self.alert_ratio, 1.0, float("inf"))
        if self.max_overhead is not None:
            check_number("max_overhead", self.max_overhead, 0.0, 1.0)
            if self.max_overhead == 0:
                raise ValueError(
                    "max_overhead must be > 0, a share of the training time (e.g. 0.05); pass "
                    "None for no budget"
                )
        if self.regions is not None and not isinstance(self.regions, Mapping):
            raise TypeError(
                "regions must map a name to (N, H, W) bool masks, got "
                f"{type(self.regions).__name__}"
            )
        if self.forward_fn is not None and not callable(self.forward_fn):
            raise TypeError("forward_fn must be callable as forward_fn(module, images)")
        name = self.name
        if not isinstance(name, str) or not name or any(c.isspace() or c == "/" for c in name):
            raise ValueError(
                f"name must be a non-empty tag prefix without spaces or '/', got {name!r}"
            )
        if self.snapshot_dir is not None:
            object.__setattr__(self, "snapshot_dir", Path(self.snapshot_dir))

    @classmethod
    def from_options(cls, **options: Any) -> MonitorSettings:
        """Settings from flat keyword options (``n_samples=16, every_n_epochs=2, ...``), each
        routed to the declaration that owns it; ``image_processor`` gives ``mean``/``std``.

        Raises:
            TypeError: for an unknown option, listing the valid ones.
        """
        options = dict(options)
        processor = options.pop("image_processor", None)
        mean, std = requested_normalization(
            options.pop("mean", None), options.pop("std", None), processor
        )
        parts: dict[str, dict[str, Any]] = {part: {} for part in _PARTS}
        own: dict[str, Any] = {"mean": _floats(mean), "std": _floats(std)}
        for key, value in options.items():
            part = _OWNER.get(key)
            if part is None:
                raise TypeError(
                    f"unknown option {key!r}; the options are {sorted(option_defaults())}"
                )
            (own if part == "own" else parts[part])[key] = value
        if "metrics" in parts["evaluation"] and parts["evaluation"]["metrics"] is not None:
            parts["evaluation"]["metrics"] = tuple(parts["evaluation"]["metrics"])
        if "compare_methods" in parts["evaluation"]:
            methods = parts["evaluation"]["compare_methods"]
            parts["evaluation"]["compare_methods"] = (
                methods if isinstance(methods, str) else tuple(methods)
            )
        return cls(
            engine=replace(MONITOR_ENGINE, **parts["engine"]),
            evaluation=EvaluationOptions(**parts["evaluation"]),
            schedule=Schedule(**parts["schedule"]),
            **own,
        )


#: The declarations of the flat options, by the settings field that holds them.
_PARTS: dict[str, type] = {
    "engine": DAVESettings,
    "evaluation": EvaluationOptions,
    "schedule": Schedule,
}
#: DAVE settings the monitor fixes: its metrics read post-processed maps in [0, 1].
_FIXED = frozenset({"postprocess"})
_OWN = tuple(f.name for f in fields(MonitorSettings) if f.name not in _PARTS)
_OWNER: dict[str, str] = {
    **{f.name: part for part, cls in _PARTS.items() for f in fields(cls) if f.name not in _FIXED},
    **{name: "own" for name in _OWN},
    "image_processor": "own",
}


def option_defaults() -> dict[str, Any]:
    """Every flat option with its declared default (the monitor's engine defaults)."""
    declared = {"engine": MONITOR_ENGINE, "evaluation": EvaluationOptions(), "schedule": Schedule()}
    own = MonitorSettings()
    defaults = {}
    for name, part in _OWNER.items():
        if name == "image_processor":
            defaults[name] = None
        else:
            defaults[name] = getattr(own if part == "own" else declared[part], name)
    return defaults


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)
