"""Evaluations split across DDP ranks: each rank runs its share, every rank gets everything.

Every rank learns whether any rank failed before results are exchanged, so a failure on one
rank skips the evaluation on all of them instead of leaving the others waiting in a collective.
Only Lightning's strategy collectives are used (``reduce_boolean_decision``, ``all_gather``).
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch

from dave_lightning.evaluation import ItemResults, Shard, merge_shards


def run_sharded(
    trainer: pl.Trainer,
    run: Callable[[Shard], ItemResults],
    probe_size: int,
    grid_size: int,
) -> ItemResults:
    """``run`` on this rank's shard, then every rank's results merged (padding dropped).

    Raises this rank's error, or a RuntimeError when another rank failed.
    """
    error: Exception | None = None
    results = ItemResults()
    try:
        results = run(Shard(trainer.global_rank, trainer.world_size))
    except Exception as raised:
        error = raised
    if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
        raise error or RuntimeError("the evaluation failed on another rank")
    if trainer.world_size == 1:
        return results
    items, grids = _gathered(trainer, results.items), _gathered(trainer, results.grid_items)
    parts = [
        ItemResults(items[rank], grids[rank], results.fractions)
        for rank in range(trainer.world_size)
    ]
    return merge_shards(parts, probe_size, grid_size)


def _gathered(
    trainer: pl.Trainer, tensors: dict[str, torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """Every rank's tensors, in rank order, on the CPU (each gathered on the strategy's device)."""
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(trainer.world_size)]
    for key, value in tensors.items():
        stacked = trainer.strategy.all_gather(value.to(trainer.strategy.root_device)).cpu()
        for rank in range(trainer.world_size):
            ranks[rank][key] = stacked[rank]
    return ranks
