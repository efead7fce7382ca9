"""Per-item results of (a shard of) an evaluation, and how the shards of several ranks merge.

An evaluation can run in shards, one per DDP rank: each rank evaluates an equal part of the
probe (and of the grid items), and the per-item results of every rank are gathered and merged
in rank order before they are averaged (docs/callback.md, "DDP and other strategies").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Shard:
    """This process's share of the probe: ``rank`` of ``world_size`` equal, contiguous parts.

    Every part has ``ceil(total / world_size)`` items; the last parts are padded with copies of
    the last item (their results are dropped), so that every rank runs the same passes.
    """

    rank: int = 0
    world_size: int = 1

    def size(self, total: int) -> int:
        return math.ceil(total / self.world_size)

    def start(self, total: int) -> int:
        return min(self.rank * self.size(total), total)

    def indices(self, total: int) -> torch.Tensor:
        start = self.start(total)
        return torch.arange(start, start + self.size(total)).clamp(max=total - 1)

    def real(self, total: int, rank: int) -> int:
        """How many items of ``rank``'s part are real (not padding)."""
        other = Shard(rank, self.world_size)
        return min(other.start(total) + self.size(total), total) - other.start(total)


@dataclass(frozen=True)
class CurveInfo:
    """What a curve is, the same on every rank: x-axis (S,), legend label, metric, method, and
    whether it is a control independent of the maps."""

    fractions: torch.Tensor
    label: str
    metric: str
    method: str
    control: bool = False


@dataclass
class ItemResults:
    """Per-item results of one shard (padding included), before merging and averaging.

    Probe items: ``targets``, ``predictions``, ``probabilities``, ``reliability`` (n,), ``maps``
    (method → (n, 1, H, W)), ``values`` (metric key → (n,)) and ``curves`` (curve key → (n, S)).
    Grid items: ``grid_values`` (metric key → (g,)). ``curve_info`` describes each curve.
    """

    targets: torch.Tensor
    predictions: torch.Tensor
    probabilities: torch.Tensor
    reliability: torch.Tensor
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    curves: dict[str, torch.Tensor] = field(default_factory=dict)
    grid_values: dict[str, torch.Tensor] = field(default_factory=dict)
    curve_info: dict[str, CurveInfo] = field(default_factory=dict)

    def probe_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every per-probe-item tensor, by group and key (for gathering across ranks)."""
        single = {
            "targets": self.targets,
            "predictions": self.predictions,
            "probabilities": self.probabilities,
            "reliability": self.reliability,
        }
        return {"single": single, "maps": self.maps, "values": self.values, "curves": self.curves}

    def mapped(
        self,
        probe: Callable[[str, torch.Tensor], torch.Tensor],
        grid: Callable[[str, torch.Tensor], torch.Tensor],
    ) -> ItemResults:
        """These results with ``probe(key, tensor)`` applied to every probe-item tensor and
        ``grid(key, tensor)`` to every grid-item tensor."""
        groups = {
            name: {key: probe(f"{name}/{key}", value) for key, value in tensors.items()}
            for name, tensors in self.probe_tensors().items()
        }
        return ItemResults(
            **groups.pop("single"),
            **groups,
            grid_values={k: grid(f"grid/{k}", v) for k, v in self.grid_values.items()},
            curve_info=dict(self.curve_info),
        )


def merge_shards(results: Sequence[ItemResults], probe_size: int, grid_size: int) -> ItemResults:
    """One :class:`ItemResults` from every rank's (in rank order), padding dropped."""
    world = len(results)
    sizes = [Shard(0, world).real(probe_size, rank) for rank in range(world)]
    grid_sizes = [Shard(0, world).real(grid_size, rank) for rank in range(world)]
    parts = [
        result.mapped(
            lambda _, tensor, n=sizes[rank]: tensor[:n],
            lambda _, tensor, n=grid_sizes[rank]: tensor[:n],
        )
        for rank, result in enumerate(results)
    ]

    def cat(group: str, key: str) -> torch.Tensor:
        return torch.cat([part.probe_tensors()[group][key] for part in parts])

    first = parts[0].probe_tensors()
    groups = {name: {key: cat(name, key) for key in tensors} for name, tensors in first.items()}
    return ItemResults(
        **groups.pop("single"),
        **groups,
        grid_values={
            key: torch.cat([part.grid_values[key] for part in parts])
            for key in parts[0].grid_values
        },
        curve_info=dict(results[0].curve_info),
    )
