"""Robust mean over attribution samples: keep values within 2.5 scaled MADs of the median.

Exact when an image's samples fit the reservoir; beyond that the median and MAD come from an
evenly spaced subset of the samples and every sample is then streamed through the keep-rule,
so memory stays bounded whatever the number of samples (DESIGN §2.2 step 5, issue 2 point 4).
"""

from __future__ import annotations

import torch

MAD_SCALE = 1.4826
MAD_THRESHOLD = 2.5
RESERVOIR_SAMPLES = 64


def robust_mean(samples: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Per-element mean of the values with |x − median| ≤ 2.5 · 1.4826 · MAD along ``dim``.

    The median is the lower median (an actual sample), so at least one value is always kept.
    """
    median, threshold = _median_and_threshold(samples, dim)
    keep = (samples - median).abs() <= threshold
    return (samples * keep).sum(dim) / keep.sum(dim)


def _median_and_threshold(samples: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    median = samples.median(dim, keepdim=True).values
    mad = (samples - median).abs().median(dim, keepdim=True).values
    return median, MAD_THRESHOLD * MAD_SCALE * mad


def sample_order(n_samples: int) -> torch.Tensor:
    """Order in which one image's samples are computed: the reservoir subset first."""
    if n_samples <= RESERVOIR_SAMPLES:
        return torch.arange(n_samples)
    first = torch.linspace(0, n_samples - 1, RESERVOIR_SAMPLES).round().long()
    rest = torch.ones(n_samples, dtype=torch.bool)
    rest[first] = False
    return torch.cat([first, rest.nonzero().squeeze(1)])


class StreamingRobustMean:
    """Accumulates one image's samples (in :func:`sample_order`) into the robust mean."""

    def __init__(self, n_samples: int) -> None:
        self.n_samples = n_samples
        self.reservoir_size = min(n_samples, RESERVOIR_SAMPLES)
        self._reservoir: list[torch.Tensor] = []
        self._seen = 0
        self._median = self._threshold = self._sum = self._count = None

    def add(self, samples: torch.Tensor) -> None:
        """Add a block of samples (S, ...) of this image."""
        self._seen += samples.shape[0]
        if self._sum is None:
            take = min(samples.shape[0], self.reservoir_size - sum(len(r) for r in self._reservoir))
            self._reservoir.append(samples[:take])
            samples = samples[take:]
            if sum(len(r) for r in self._reservoir) == self.reservoir_size:
                self._close_reservoir()
        if samples.shape[0]:
            self._accumulate(samples)

    def result(self) -> torch.Tensor:
        """The robust mean over all ``n_samples`` samples."""
        if self._seen != self.n_samples or self._sum is None:
            raise RuntimeError(f"expected {self.n_samples} samples, got {self._seen}")
        return self._sum / self._count

    def _close_reservoir(self) -> None:
        reservoir = torch.cat(self._reservoir)
        self._reservoir = []
        self._median, self._threshold = _median_and_threshold(reservoir, 0)
        self._sum = torch.zeros_like(reservoir[0])
        self._count = torch.zeros_like(reservoir[0])
        self._accumulate(reservoir)

    def _accumulate(self, samples: torch.Tensor) -> None:
        keep = (samples - self._median).abs() <= self._threshold
        self._sum += (samples * keep).sum(0)
        self._count += keep.sum(0)
