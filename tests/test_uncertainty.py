"""Intervals, paired tests and Holm's correction of dave_lightning.core.uncertainty.

Known answers are hand-computed; coverage and false-positive rates are measured on simulated
probes with a fixed seed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

from dave_lightning.core.uncertainty import (
    PairedDifference,
    holm,
    mean_interval,
    paired_difference,
    sign_flip_p_value,
    t_quantile,
)

PROBES = 2000  # simulated probes per coverage case
NULL_PAIRS = 500
METRICS_PER_PAIR = 4
ALPHA = 0.05


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these tensors are small, and on a shared 2-core machine two threads
    that wait for each other make each test many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def beta_2_5(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Beta(2, 5) draws (mean 2/7, skewed, in [0, 1]): the 2nd smallest of 6 uniforms."""
    return torch.rand(*shape, 6, generator=generator, dtype=torch.float64).sort(-1).values[..., 1]


def normal(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Normal draws with mean 0.5 and standard deviation 0.1."""
    return 0.5 + 0.1 * torch.randn(*shape, generator=generator, dtype=torch.float64)


# ------------------------------------------------------------------------------ intervals


@pytest.mark.parametrize(
    ("probability", "df", "expected"),
    [  # Student-t tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
        (0.975, 1, 12.7062047362),
        (0.975, 2, 4.3026527297),
        (0.975, 7, 2.3646242516),
        (0.975, 15, 2.1314495456),
        (0.9, 3, 1.6377443537),
        (0.9, 4, 1.5332062741),
        (0.9, 15, 1.3406056078),
        (0.5, 9, 0.0),
    ],
)
def test_t_quantile_matches_the_tables(probability: float, df: int, expected: float) -> None:
    assert t_quantile(probability, df) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_t_interval_hand_computed() -> None:
    # 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sample variance 32 / 7; t(0.975, 7) = 2.3646242516
    # half-width = 2.3646242516 · sqrt(32 / 7) / sqrt(8) = 1.787491...
    low, high = mean_interval(torch.tensor([2.0, 4, 4, 4, 5, 5, 7, 9]))
    half = 2.3646242516 * math.sqrt(32 / 7) / math.sqrt(8)
    assert (low, high) == pytest.approx((5 - half, 5 + half), rel=1e-9)
    # confidence 0.8: t(0.9, 7) = 1.4149239277
    low, high = mean_interval([2.0, 4, 4, 4, 5, 5, 7, 9], confidence=0.8)
    assert high - 5 == pytest.approx(1.4149239277 * math.sqrt(32 / 7) / math.sqrt(8), rel=1e-9)


def test_interval_is_cut_at_the_observed_range() -> None:
    # 1 of 16 correct: mean 1/16, s = 0.25, half-width 2.1314495456 · 0.25 / 4 = 0.1332156;
    # the lower end, −0.0707, is cut at the smallest value, 0
    low, high = mean_interval([1.0] + [0.0] * 15)
    assert low == 0.0
    assert high == pytest.approx(1 / 16 + 2.1314495456 * 0.25 / 4, rel=1e-9)


def test_equal_values_give_zero_width() -> None:
    for value in (0.3, 1.0, 0.0, -2.7):
        values = torch.full((16,), value, dtype=torch.float64)
        assert mean_interval(values) == (value, value)
        assert mean_interval(values.float()) == (float(values.float()[0]),) * 2
    # the float64 mean of nineteen 0.1s is 0.09999999999999999: it must not leave the range
    assert mean_interval([0.1] * 19) == (0.1, 0.1)


def test_non_finite_values_are_left_out() -> None:
    values = torch.tensor([2.0, math.nan, 4, 4, 4, 5, math.inf, 5, 7, 9, -math.inf])
    assert mean_interval(values) == mean_interval(torch.tensor([2.0, 4, 4, 4, 5, 5, 7, 9]))
    assert mean_interval(torch.tensor([math.nan, 0.5, math.nan])) is None
    assert mean_interval(torch.tensor([])) is None


def test_interval_is_deterministic() -> None:
    values = torch.rand(16, generator=torch.Generator().manual_seed(3))
    assert mean_interval(values) == mean_interval(values.tolist())


@pytest.mark.parametrize("confidence", [0.95, 0.8])
@pytest.mark.parametrize("items", [8, 16])
@pytest.mark.parametrize(("draw", "mean"), [(beta_2_5, 2 / 7), (normal, 0.5)])
def test_coverage_on_simulated_probes(draw, mean: float, items: int, confidence: float) -> None:
    """Intervals of 2,000 simulated probes cover the true mean at the nominal rate ± 2 %.

    Measured (seed 0), 95 % and 80 %: Beta(2, 5) n = 16: 0.9460, 0.7990; n = 8: 0.9465,
    0.8005. Normal n = 16: 0.9505, 0.7955; n = 8: 0.9525, 0.7930.
    """
    probes = draw((PROBES, items), torch.Generator().manual_seed(0))
    covered = 0
    for values in probes:
        low, high = mean_interval(values, confidence)
        covered += low <= mean <= high
    coverage = covered / PROBES
    print(f"{draw.__name__} n={items} confidence={confidence}: coverage {coverage:.4f}")
    assert confidence - 0.02 <= coverage <= confidence + 0.02


# ------------------------------------------------------------------------- paired tests


def test_identical_evaluations_give_p_one() -> None:
    generator = torch.Generator().manual_seed(0)
    for items in (16, 40):  # exact count, then drawn sign patterns
        values = torch.rand(items, generator=generator)
        result = paired_difference(values, values.clone())
        assert result == PairedDifference(0.0, 0.0, 0.0, 1.0, items)


def test_sign_flip_p_value_hand_computed() -> None:
    # d = 1, 2, 3: |Σ ±d| over the 8 sign patterns is 6, 4, 2, 0, 0, 2, 4, 6; two reach 6
    assert sign_flip_p_value(torch.tensor([1.0, 2.0, 3.0])) == 2 / 8
    # d = 1, 2, 3, −1, observed |Σ| = 5. Σ over ±1 ±2 ±3 is 6, 0, 2, 4, −4, −2, 0, −6; adding
    # +1 gives 7, 1, 3, 5, −3, −1, 1, −5 (three reach 5: 7, 5, −5) and adding −1 gives
    # 5, −1, 1, 3, −5, −3, −1, −7 (three: 5, −5, −7): p = 6 / 16
    result = paired_difference(torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, -1.0]))
    assert result.p_value == 6 / 16
    assert result.difference == 1.25
    assert result.n == 4


def test_planted_shift_is_significant() -> None:
    """Every image's value rises: only the all-plus and all-minus patterns reach |Σ d|."""
    generator = torch.Generator().manual_seed(0)
    before = beta_2_5((16,), generator)
    after = (before + 0.05 + 0.02 * torch.rand(16, generator=generator)).clamp(max=1.0)
    result = paired_difference(before, after)
    assert result.p_value == 2 / 2**16
    assert 0.05 < result.ci_low < result.difference < result.ci_high < 0.07


def test_pairs_only_items_finite_in_both() -> None:
    a = torch.tensor([0.1, math.nan, 0.3, 0.4, 0.5])
    b = torch.tensor([0.2, 0.2, math.inf, 0.6, 0.8])
    result = paired_difference(a, b)
    assert result.n == 3
    assert result.difference == pytest.approx((0.1 + 0.2 + 0.3) / 3)
    assert result.p_value == 2 / 8
    single = paired_difference([0.1, math.nan], [0.3, 0.5])
    assert (single.n, single.p_value, math.isnan(single.ci_low)) == (1, 1.0, True)
    empty = paired_difference([math.nan], [0.5])
    assert empty.n == 0 and math.isnan(empty.p_value) and math.isnan(empty.difference)


def exact_p_value(d: list[int]) -> float:
    """The exact sign-flip p-value of integer differences: the distribution of Σ ±dᵢ built up
    item by item (how many sign patterns give each sum), an independent count."""
    counts = Counter({0: 1})
    for value in d:
        following: Counter[int] = Counter()
        for total, count in counts.items():
            following[total + value] += count
            following[total - value] += count
        counts = following
    observed = abs(sum(d))
    return sum(c for s, c in counts.items() if abs(s) >= observed) / 2 ** len(d)


def test_exact_count_matches_an_independent_count() -> None:
    """Meet-in-the-middle counting against the distribution of integer sums, odd and even n."""
    generator = torch.Generator().manual_seed(2)
    for n in (5, 12, 17, 24):
        d = (torch.randint(-6, 10, (n,), generator=generator)).tolist()
        assert sign_flip_p_value(torch.tensor(d, dtype=torch.float64)) == exact_p_value(d), d
    assert exact_p_value([1, 2, 3, -1]) == 6 / 16  # the hand count above
    assert exact_p_value([0, 1]) == 1.0


def test_monte_carlo_p_value_is_seeded_and_close_to_exact() -> None:
    """30 items: 20,000 drawn sign patterns against the exact count, within 4 standard errors."""
    generator = torch.Generator().manual_seed(5)
    d = torch.randint(-5, 9, (30,), generator=generator).tolist()
    exact = exact_p_value(d)
    drawn = sign_flip_p_value(torch.tensor(d, dtype=torch.float64), seed=0)
    assert drawn == sign_flip_p_value(torch.tensor(d, dtype=torch.float64), seed=0)
    assert drawn != sign_flip_p_value(torch.tensor(d, dtype=torch.float64), seed=1)
    assert abs(drawn - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000)
    assert 0.001 < exact < 0.2, exact  # a p-value where the draws matter
    # +1 correction: a huge shift is never p = 0
    assert sign_flip_p_value(torch.full((30,), 5.0)) == 1 / 20_001


def test_false_positive_rate_under_the_null() -> None:
    """500 pairs of evaluations of the same model (a shared per-image effect, independent
    noise), 4 metrics each: each metric, and each pair after Holm, rejects ≤ α + 0.02.

    Measured (seed 0): per metric 0.042, 0.052, 0.064, 0.044; any metric of a pair after Holm
    0.046.
    """
    generator = torch.Generator().manual_seed(0)
    shape = (NULL_PAIRS, METRICS_PER_PAIR, 16)
    effect = beta_2_5(shape, generator)
    a = (effect + 0.05 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    b = (effect + 0.05 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    raw = torch.zeros(METRICS_PER_PAIR)
    family = 0
    for pair in range(NULL_PAIRS):
        p = [paired_difference(a[pair, m], b[pair, m]).p_value for m in range(METRICS_PER_PAIR)]
        raw += torch.tensor(p) <= ALPHA
        family += any(holm(p, ALPHA))
    rates = raw / NULL_PAIRS
    print(f"per-metric false-positive rates {rates.tolist()}, after Holm {family / NULL_PAIRS}")
    assert (rates <= ALPHA + 0.02).all()
    assert family / NULL_PAIRS <= ALPHA + 0.02
    assert rates.mean() > 0.02  # the test is not merely silent


# ---------------------------------------------------------------------------------- Holm


def test_holm_textbook_example() -> None:
    # Holm (1979) as on Wikipedia, "Holm–Bonferroni method": p = 0.01, 0.04, 0.03, 0.005 at
    # α = 0.05. Sorted: 0.005 ≤ 0.05/4 = 0.0125 reject; 0.01 ≤ 0.05/3 = 0.0167 reject;
    # 0.03 > 0.05/2 = 0.025 stop: H4 and H1 are rejected, H2 and H3 are not.
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]


def test_holm_stops_at_the_first_failure() -> None:
    # 0.02 > 0.05/3: stop, although 0.04 ≤ 0.05/1 would pass on its own
    assert holm([0.04, 0.02, 0.03]) == [False, False, False]
    # 0.01 ≤ 0.05/3, 0.02 ≤ 0.05/2, 0.04 ≤ 0.05/1: all rejected
    assert holm([0.04, 0.01, 0.02]) == [True, True, True]
    assert holm([0.03], alpha=0.05) == [True]
    assert holm([]) == []


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: mean_interval(torch.zeros(2, 8)), ValueError, "must be 1-D per-item values"),
        (lambda: mean_interval([0.1, 0.2], confidence=1.0), ValueError, r"confidence must be in"),
        (lambda: mean_interval([0.1, 0.2], confidence="95%"), TypeError, "confidence must be"),
        (lambda: paired_difference([0.1, 0.2], [0.1]), ValueError, "must hold the same items"),
        (lambda: holm([0.01, math.nan]), ValueError, "leave untested metrics"),
        (lambda: holm([0.01], alpha=0.0), ValueError, "alpha must be in"),
    ],
)
def test_bad_input_is_named(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()
