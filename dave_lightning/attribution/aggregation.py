"""Aggregation over attribution samples: the robust mean, streamed, with two interleaved halves.

The robust mean keeps the values within 2.5 scaled MADs of the median (docs/method.md, step 5).
It is exact while an image's samples fit the reservoir; beyond that the median and MAD come
from the first reservoir's worth of samples (an evenly spaced subset, see :func:`sample_order`)
and every later sample is streamed through the keep-rule, so memory stays bounded whatever the
number of samples. Besides the mean over all samples, the accumulator keeps the robust means of
the even- and odd-numbered samples, each with its own median and MAD: the two independent
half-sample estimates whose agreement is the map's reliability.
"""

from __future__ import annotations

import functools

import torch

MAD_SCALE = 1.4826
MAD_THRESHOLD = 2.5
RESERVOIR_SAMPLES = 64


def _median_and_threshold(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower median over the samples (dim 0) and the keep-rule's distance from it."""
    median = lower_median(samples)
    mad = lower_median((samples - median).abs())
    return median, MAD_THRESHOLD * MAD_SCALE * mad


def lower_median(samples: torch.Tensor) -> torch.Tensor:
    """``samples.median(0, keepdim=True).values``, the same values: for up to a reservoir's
    worth of samples by a sorting network of elementwise minima and maxima, several times
    faster than ``torch.median`` over the leading dimension on a CPU (benchmarks/
    bench_engine.py measures it as part of the reliability bookkeeping)."""
    if len(samples) > RESERVOIR_SAMPLES:
        return samples.median(0, keepdim=True).values
    rows = list(samples.unbind(0))
    for i, j in _sorting_network(len(rows)):
        rows[i], rows[j] = torch.minimum(rows[i], rows[j]), torch.maximum(rows[i], rows[j])
    return rows[(len(rows) - 1) // 2][None]


@functools.cache
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd–even merge sort for ``n`` inputs: the compare-exchange pairs (i < j) in
    order, after which input i holds the i-th smallest value."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def sample_order(n_samples: int) -> torch.Tensor:
    """Order in which one image's samples are computed: the reservoir subset first."""
    if n_samples <= RESERVOIR_SAMPLES:
        return torch.arange(n_samples)
    first = torch.linspace(0, n_samples - 1, RESERVOIR_SAMPLES).round().long()
    rest = torch.ones(n_samples, dtype=torch.bool)
    rest[first] = False
    return torch.cat([first, rest.nonzero().squeeze(1)])


class SampleAccumulator:
    """One image's samples → their (robust) mean, and the means of its two halves.

    ``robust=False`` keeps every value (a plain mean). Samples may come in any number of
    blocks; :meth:`means` can be read at any time, and more samples added afterwards.
    """

    def __init__(self, *, robust: bool = True, reservoir_size: int = RESERVOIR_SAMPLES) -> None:
        self.robust = robust
        self.reservoir_size = reservoir_size if robust else 0
        self._reservoir: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._rules: list[tuple[torch.Tensor, torch.Tensor] | None] = []  # all, half 0, half 1
        self._sums: list[torch.Tensor] | None = None  # all samples, then the two halves
        self._counts: list[torch.Tensor] | None = None

    def add(self, samples: torch.Tensor, halves: torch.Tensor) -> None:
        """Add a block of samples (S, ...) and the half (0 or 1) each belongs to, (S,)."""
        if self._sums is None and self.robust:
            room = self.reservoir_size - sum(len(s) for s, _ in self._reservoir)
            self._reservoir.append((samples[:room], halves[:room]))
            samples, halves = samples[room:], halves[room:]
            if room <= len(self._reservoir[-1][0]):
                self._close()
        if samples.shape[0]:
            self._accumulate(samples, halves)

    def means(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mean over all samples and over each half (NaN where a half has no samples)."""
        if self._reservoir:
            pending = SampleAccumulator(robust=self.robust, reservoir_size=0)
            pending._start(*_cat(self._reservoir))
            return pending.means()
        sums, counts = self._sums, self._counts
        return sums[0] / counts[0], sums[1] / counts[1], sums[2] / counts[2]

    def _close(self) -> None:
        self._start(*_cat(self._reservoir))
        self._reservoir = []

    def _start(self, samples: torch.Tensor, halves: torch.Tensor) -> None:
        if self.robust:
            self._rules = [_median_and_threshold(samples)]
            for half in (0, 1):
                rows = samples[halves == half]
                self._rules.append(_median_and_threshold(rows) if len(rows) else None)
        self._accumulate(samples, halves)

    def _accumulate(self, samples: torch.Tensor, halves: torch.Tensor) -> None:
        if self._sums is None:
            self._sums = [torch.zeros_like(samples[0]) for _ in range(3)]
            self._counts = [torch.zeros_like(samples[0]) for _ in range(3)]
        self._add(0, samples)
        for half in (0, 1):
            rows = samples[halves == half]
            if len(rows):
                self._add(1 + half, rows)

    def _add(self, part: int, samples: torch.Tensor) -> None:
        """Add samples to the sums of ``part`` (0: all, 1 and 2: the halves) by its keep-rule."""
        if self.robust:
            median, threshold = self._rules[part]
            keep = (samples - median).abs() <= threshold
            kept = samples * keep
        else:
            keep, kept = torch.ones_like(samples, dtype=torch.bool), samples
        self._sums[part] += kept.sum(0)
        self._counts[part] += keep.sum(0)


def _cat(blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([s for s, _ in blocks]), torch.cat([h for _, h in blocks])
