"""dmd_book.stats: the intervals and tests behind the chapters' verdicts, against hand computations and scipy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from dmd_book import stats


def test_estimate_is_the_t_interval_of_the_mean():
    values = [0.80, 0.84, 0.79, 0.83, 0.81]
    e = stats.estimate(values)
    half = sps.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert e.mean == pytest.approx(0.814)
    assert (e.lo, e.hi) == pytest.approx((0.814 - half, 0.814 + half))
    assert e.n == 5 and "5 seeds" in e.text()


def test_one_seed_gives_no_interval_and_says_so():
    e = stats.estimate([0.5])
    assert math.isnan(e.lo) and "no interval" in e.text()


def test_welch_difference_matches_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.5, 3.1, 4.2, 5.9, 6.0]
    d = stats.difference(a, b)
    assert d.p == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert d.effect == pytest.approx(np.mean(a) - np.mean(b))
    assert d.lo < d.effect < d.hi and not d.paired


def test_paired_difference_uses_per_seed_differences():
    a = [0.70, 0.74, 0.68, 0.77]
    b = [0.69, 0.72, 0.67, 0.75]  # always a little lower: paired, the difference is settled
    d = stats.difference(a, b, paired=True)
    assert d.p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert d.settled and "paired" in d.text()
    assert not stats.difference(a, b).settled  # unpaired, the seed spread hides it


def test_a_difference_constant_up_to_rounding_is_exact_and_raises_no_warning():
    # Two seeds whose metric changed by the same number of test samples: the per-seed differences differ only in
    # the last bits, which scipy's t test flags as catastrophic cancellation (a warning a chapter must not print).
    a, b = [0.4123, 0.3988], [0.4065, 0.3930]
    assert np.std(np.subtract(a, b)) > 0  # not exactly constant in floating point
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = stats.difference(a, b, paired=True)
        same = stats.difference([0.5, 0.5 + 1e-15], [0.5, 0.5], paired=True)
        flat = stats.difference([0.3, 0.3, 0.3], [0.3 + 1e-15, 0.3, 0.3 - 1e-15])
    assert d.effect == pytest.approx(0.0058) and d.lo == d.hi == d.effect and d.p == 0.0 and d.settled
    assert same.effect == 0.0 and same.p == 1.0 and not same.settled
    assert flat.effect == 0.0 and flat.p == 1.0 and not flat.settled


def test_paired_needs_the_same_seeds():
    with pytest.raises(ValueError, match="same seeds"):
        stats.difference([1, 2, 3], [1, 2], paired=True)


def test_an_interval_containing_zero_is_not_settled():
    d = stats.difference([0.1, -0.2, 0.3, 0.0], [0.0, 0.1, 0.1, 0.05])
    assert d.lo < 0 < d.hi and not d.settled


def test_permutation_spearman_finds_a_perfect_order_and_not_noise():
    rho, p = stats.permutation_spearman([1, 2, 3, 4, 5, 6, 7, 8], [2, 4, 6, 8, 10, 12, 14, 16], permutations=2000)
    assert rho == pytest.approx(1.0) and p < 0.01
    rng = np.random.default_rng(3)
    rho, p = stats.permutation_spearman(rng.normal(size=6), rng.normal(size=6), permutations=2000)
    assert p > 0.05 or abs(rho) > 0.8  # six random points rarely look ordered
    assert stats.permutation_spearman([1, 1, 1], [1, 2, 3])[1] == 1.0
