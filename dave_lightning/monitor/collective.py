"""How the processes of a run evaluate together: each runs its share, every one gets everything.

A :class:`Collective` is what the monitor needs of a distributed run: the rank, the world size,
an "any rank failed?" vote, a gather of per-item tensors and a broadcast from rank 0. The
Lightning Trainer and Fabric provide it through their strategy (:class:`StrategyCollective`),
other loops through ``torch.distributed`` (:class:`TorchDistributed`); one process needs none
(:data:`SINGLE_PROCESS`). Every rank learns whether any rank failed before results are
exchanged, so a failure on one rank skips the evaluation on all of them instead of leaving the
others waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from dave_lightning.evaluation import ItemResults, Shard, merge_shards


class Collective(Protocol):
    """The collective operations of a run's processes (rank 0 publishes)."""

    rank: int
    world_size: int

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank calls it)."""

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` stacked in rank order, on the CPU (every rank calls it)."""

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (every rank calls it)."""


class SingleProcess:
    """The collective of a run in one process."""

    rank = 0
    world_size = 1

    def any(self, flag: bool) -> bool:
        return flag

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[None].cpu()

    def broadcast(self, value: Any) -> Any:
        return value


SINGLE_PROCESS = SingleProcess()


class StrategyCollective:
    """A Lightning ``Trainer``'s or ``Fabric``'s strategy: ``reduce_boolean_decision``,
    ``all_gather`` (on the strategy's device) and ``broadcast``."""

    def __init__(self, strategy: Any, rank: int, world_size: int) -> None:
        self.strategy = strategy
        self.rank = rank
        self.world_size = world_size

    def any(self, flag: bool) -> bool:
        return bool(self.strategy.reduce_boolean_decision(flag, all=False))

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        gathered = self.strategy.all_gather(tensor.to(self.strategy.root_device))
        return gathered.reshape(self.world_size, *tensor.shape).cpu()

    def broadcast(self, value: Any) -> Any:
        return self.strategy.broadcast(value, src=0)


class TorchDistributed:
    """``torch.distributed``'s default process group (e.g. under the HuggingFace Trainer)."""

    def __init__(self) -> None:
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()

    def _device(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def any(self, flag: bool) -> bool:
        vote = torch.tensor([int(flag)], device=self._device())
        torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
        return bool(vote.item())

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        local = tensor.to(self._device()).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        return torch.stack(parts).cpu()

    def broadcast(self, value: Any) -> Any:
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def default_collective() -> Collective:
    """``torch.distributed``'s group when one is initialised, else a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return TorchDistributed()
    return SINGLE_PROCESS


def run_sharded(
    collective: Collective,
    run: Callable[[Shard], ItemResults],
    probe_size: int,
    grid_size: int,
) -> ItemResults:
    """``run`` on this rank's shard, then every rank's results merged (padding dropped).

    Raises this rank's error, or a RuntimeError when another rank failed.
    """
    error: Exception | None = None
    results: ItemResults | None = None
    try:
        results = run(Shard(collective.rank, collective.world_size))
    except Exception as raised:
        error = raised
    if collective.any(error is not None):
        raise error or RuntimeError("the evaluation failed on another rank")
    if collective.world_size == 1:
        return results
    gathered: dict[str, torch.Tensor] = {}

    def keep(key: str, tensor: torch.Tensor) -> torch.Tensor:
        gathered[key] = collective.gather(tensor)
        return tensor

    results.mapped(keep, keep)
    parts = [
        results.mapped(
            lambda key, _, r=rank: gathered[key][r], lambda key, _, r=rank: gathered[key][r]
        )
        for rank in range(collective.world_size)
    ]
    return merge_shards(parts, probe_size, grid_size)
