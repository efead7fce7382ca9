"""The uncertainty of probe means: confidence intervals, paired tests, Holm's correction.

Every probe-mean metric is a mean over a few items (probe images, or grid cells), so it carries
sampling noise. :func:`mean_interval` gives a Student-t interval for such a mean,
:func:`paired_difference` compares two evaluations of the same items with a sign-flip
permutation test, and :func:`holm` corrects a family of those tests (docs/metrics.md,
"Uncertainty of probe means").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

EXACT_MAX_ITEMS = 24  # up to 2**24 sign patterns are counted exactly; for more items they are drawn
MONTE_CARLO_DRAWS = 20_000
CHUNK_ENTRIES = 1 << 22  # sign-pattern entries per matrix product (32 MiB in float64)


@dataclass(frozen=True)
class PairedDifference:
    """``b − a`` over the items finite in both: the mean difference, its interval, the two-sided
    sign-flip p-value and the number of paired items (NaN where there are too few items)."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def mean_interval(
    values: torch.Tensor | Sequence[float], confidence: float = 0.95
) -> tuple[float, float] | None:
    """A ``confidence`` interval for the mean of the finite values; None for fewer than two.

    The Student-t interval ``mean ± t · s / √n``, intersected with the observed range, which
    keeps bounded metrics in their range and can lose coverage only when every item falls on
    the same side of the true mean (in simulations it changed no coverage by 0.001). It holds
    its coverage at 8–16 items where a percentile bootstrap falls short, and gives zero width
    when all values are equal. It draws no random numbers.

    Args:
        values: per-item values, 1-D; NaN (an item without a value) and ±inf are left out.
        confidence: the interval's coverage probability, in (0, 1).
    """
    _check_confidence(confidence)
    finite = _finite(_vector("values", values))
    if finite.numel() < 2:
        return None
    return _t_interval(finite, confidence)


def paired_difference(
    a: torch.Tensor | Sequence[float],
    b: torch.Tensor | Sequence[float],
    confidence: float = 0.95,
    *,
    seed: int = 0,
) -> PairedDifference:
    """The mean of ``b − a`` over the items finite in both, its interval and p-value.

    The interval is :func:`mean_interval` of the differences. The p-value is that of a two-sided
    sign-flip permutation test of "the differences are symmetric about 0" with the statistic
    ``|Σ (b − a)|``: exact over all ``2**n`` sign patterns up to 24 items, else
    ``(1 + hits) / (1 + 20,000)`` over sign patterns drawn with a generator seeded by ``seed``.
    Identical inputs give p = 1 exactly.

    Args:
        a, b: per-item values of the same items in the same order, 1-D of equal length.
        confidence: the interval's coverage probability, in (0, 1).
        seed: seeds the sign patterns drawn for more than 24 items.
    """
    _check_confidence(confidence)
    first, second = _vector("a", a), _vector("b", b)
    if first.shape != second.shape:
        raise ValueError(
            f"a and b must hold the same items, got {first.numel()} and {second.numel()} "
            "values; pass the per-item values of two evaluations of the same probe"
        )
    both = torch.isfinite(first) & torch.isfinite(second)
    differences = second[both] - first[both]
    n = differences.numel()
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, 0)
    low, high = _t_interval(differences, confidence) if n >= 2 else (math.nan, math.nan)
    p_value = sign_flip_p_value(differences, seed=seed)
    return PairedDifference(float(differences.mean()), low, high, p_value, n)


def sign_flip_p_value(differences: torch.Tensor, *, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of the paired ``differences`` (1-D, finite).

    The share of sign patterns ``s`` with ``|Σ s·d| ≥ |Σ d|``: all ``2**n`` of them up to
    24 items, else 20,000 drawn ones with the +1 correction (the observed pattern counts once).
    """
    d = differences.double()
    n = d.numel()
    # sums equal to the observed one up to rounding count as reaching it
    threshold = float(d.sum().abs() - 1e-9 * d.abs().sum())
    if n <= EXACT_MAX_ITEMS:
        return _exact_hits(d, threshold) / 2**n
    generator = torch.Generator().manual_seed(seed)
    rows = max(1, CHUNK_ENTRIES // n)
    hits = 0
    for start in range(0, MONTE_CARLO_DRAWS, rows):
        count = min(rows, MONTE_CARLO_DRAWS - start)
        signs = 1 - 2 * torch.randint(0, 2, (count, n), generator=generator)
        hits += int((signs.double() @ d).abs().ge(threshold).sum())
    return (hits + 1) / (MONTE_CARLO_DRAWS + 1)


def _exact_hits(d: torch.Tensor, threshold: float) -> int:
    """How many of the ``2**n`` sign patterns give ``|Σ s·d| ≥ threshold``, counted by meeting
    in the middle: every sum ``l`` of the first half's patterns against the sorted sums ``r``
    of the second half's, ``l + r ≥ threshold`` or ``l + r ≤ −threshold``."""
    n = d.numel()
    if threshold <= 0:  # every |sum| reaches it (identical evaluations)
        return 2**n
    half = n // 2
    left = _all_sign_patterns(half) @ d[:half]
    right = (_all_sign_patterns(n - half) @ d[half:]).sort().values
    above = len(right) - torch.searchsorted(right, threshold - left, side="left")
    below = torch.searchsorted(right, -threshold - left, side="right")
    return int((above + below).sum())


@lru_cache(maxsize=EXACT_MAX_ITEMS // 2 + 2)
def _all_sign_patterns(n: int) -> torch.Tensor:
    """(2**n, n) float64: every pattern of ±1 signs, each once."""
    bits = torch.arange(2**n)[:, None] >> torch.arange(n) & 1
    return (1 - 2 * bits).double()


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down decisions at family-wise error rate ``alpha``: True = significant.

    The p-values are tested from the smallest up, the k-th smallest (from 0) against
    ``alpha / (m − k)``; testing stops at the first that fails, and it and all larger ones are
    not significant.
    """
    _check_open_unit("alpha", alpha)
    p = [float(value) for value in p_values]
    bad = [value for value in p if not 0.0 <= value <= 1.0]
    if bad:
        raise ValueError(
            f"p_values must be in [0, 1], got {bad}; leave untested metrics (NaN) out of the family"
        )
    significant = [False] * len(p)
    for rank, index in enumerate(sorted(range(len(p)), key=p.__getitem__)):
        if p[index] > alpha / (len(p) - rank):
            break
        significant[index] = True
    return significant


@lru_cache(maxsize=256)
def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom, for
    probability in [0.5, 1): the closed-form CDF (Abramowitz & Stegun 26.7.3–4) inverted by
    bisection to double precision."""
    target = 2.0 * probability - 1.0  # P(|T| <= t)
    low, high = 0.0, math.pi / 2  # theta = atan(t / sqrt(df))
    for _ in range(100):
        middle = (low + high) / 2
        if _two_sided_cdf(middle, df) < target:
            low = middle
        else:
            high = middle
    return math.sqrt(df) * math.tan((low + high) / 2)


def _two_sided_cdf(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df) · tan theta) for Student's t with ``df`` degrees of freedom."""
    cos, sin = math.cos(theta), math.sin(theta)
    if df == 1:
        return 2.0 * theta / math.pi
    if df % 2 == 0:  # sin θ · Σ_{k < df/2} (1·3···(2k−1)) / (2·4···2k) · cos^{2k} θ
        k = torch.arange(1, df // 2, dtype=torch.float64)
        ratios = (2 * k - 1) / (2 * k)
        powers = 2 * torch.arange(df // 2, dtype=torch.float64)
        return sin * float((_cumprod_from_one(ratios) * cos**powers).sum())
    # (2/π) (θ + sin θ · Σ_{k < (df−1)/2} (2·4···2k) / (3·5···(2k+1)) · cos^{2k+1} θ)
    k = torch.arange(1, (df - 1) // 2, dtype=torch.float64)
    powers = 2 * torch.arange((df - 1) // 2, dtype=torch.float64) + 1
    series = float((_cumprod_from_one(2 * k / (2 * k + 1)) * cos**powers).sum())
    return 2.0 / math.pi * (theta + sin * series)


def _cumprod_from_one(ratios: torch.Tensor) -> torch.Tensor:
    """1, r₁, r₁r₂, …: the coefficients of the CDF's series."""
    return torch.cat([torch.ones(1, dtype=torch.float64), ratios.cumprod(0)])


def _t_interval(values: torch.Tensor, confidence: float) -> tuple[float, float]:
    """The Student-t interval of the mean of ``values`` (≥ 2, finite), within their range."""
    n = values.numel()
    low, high = float(values.min()), float(values.max())
    mean = min(max(float(values.mean()), low), high)  # rounding must not leave the range
    half = t_quantile((1.0 + confidence) / 2, n - 1) * float(values.std()) / math.sqrt(n)
    return max(mean - half, low), min(mean + half, high)


def _vector(name: str, values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """``values`` as a 1-D float64 tensor, or a clear error."""
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if tensor.dim() != 1:
        raise ValueError(
            f"{name} must be 1-D per-item values, got shape {tuple(tensor.shape)}; pass one "
            "metric's values over the probe items"
        )
    return tensor


def _finite(values: torch.Tensor) -> torch.Tensor:
    return values[torch.isfinite(values)]


def _check_confidence(confidence: float) -> None:
    _check_open_unit("confidence", confidence)


def _check_open_unit(name: str, value: float) -> None:
    """``value`` must be a real number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), e.g. 0.95, got {value}")
