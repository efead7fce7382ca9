"""Wall-clock timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from dave_lightning import DAVEMonitor


def timed_side_by_side(
    fns: Sequence[Callable[[], object]], device: str, repeats: int
) -> list[float]:
    """Median wall time of each function over ``repeats`` rounds, after one warm-up each.

    The functions run in turn within every round, in reverse order every other round, so a
    change in machine load during the run affects all of them alike and their ratios stay
    comparable. CUDA work is synchronised.
    """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(repeats):
        order = list(zip(fns, times, strict=True))
        for fn, fn_times in order if round_ % 2 == 0 else reversed(order):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(fn_times) for fn_times in times]


class TimedMonitor(DAVEMonitor):
    """DAVEMonitor that adds up the wall time spent in its own hooks, the end-of-fit one
    included: a direct, low-noise measure of its cost, next to the fit-time difference that
    machine noise blurs."""

    seconds = 0.0

    def _timed(self, name: str, *args: object, **kwargs: object) -> None:
        start = time.perf_counter()
        getattr(super(), name)(*args, **kwargs)
        self.seconds += time.perf_counter() - start

    def setup(self, *args: object, **kwargs: object) -> None:
        self._timed("setup", *args, **kwargs)

    def on_train_start(self, *args: object, **kwargs: object) -> None:
        self._timed("on_train_start", *args, **kwargs)

    def on_train_batch_end(self, *args: object, **kwargs: object) -> None:
        self._timed("on_train_batch_end", *args, **kwargs)

    def on_train_epoch_end(self, *args: object, **kwargs: object) -> None:
        self._timed("on_train_epoch_end", *args, **kwargs)

    def on_train_end(self, *args: object, **kwargs: object) -> None:
        self._timed("on_train_end", *args, **kwargs)

    def _close(self, *args: object, **kwargs: object) -> None:
        self._timed("_close", *args, **kwargs)
