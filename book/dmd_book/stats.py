"""The uncertainty behind every data-dependent sentence of the chapters.

A chapter states a result only with its comparison: the effect, its 95% interval over seeds (with
the number of seeds), and a test. These functions compute them from per-seed numbers and write
them the one way the book prints them::

    d = difference(full_runs, ablated_runs, paired=True)   # same seeds on both sides
    d.text(digits=1)        # "+1.2 [-0.3, +2.7], 5 seeds, p = 0.11"
    d.settled               # False: the interval contains 0, the sentence must say "not established"

``paired=True`` when both sides ran the same seeds (same initial weights and batches): the
per-seed differences are then what varies, and their t interval is the honest one. Otherwise
Welch's interval. Correlations over a handful of points come with a permutation p-value and
a check that the quantities moved beyond their noise (:func:`moved`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = ["Estimate", "Difference", "estimate", "difference", "moved", "permutation_spearman"]

LEVEL = 0.95


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "\u2212")


def _plain(value: float, digits: int) -> str:
    return f"{value:.{digits}f}".replace("-", "\u2212")


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2f}" if p >= 0.01 else f"p = {p:.3f}"


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` seeds with its standard deviation and t interval (``lo``, ``hi``)."""

    mean: float
    std: float
    n: int
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def text(self, digits: int = 2) -> str:
        """``"0.82 ± 0.03 (95% CI 0.78 to 0.86, 5 seeds)"``."""
        if self.n < 2:
            return f"{_plain(self.mean, digits)} (1 seed: no interval)"
        return (
            f"{_plain(self.mean, digits)} \u00b1 {self.std:.{digits}f} "
            f"(95% CI {_plain(self.lo, digits)} to {_plain(self.hi, digits)}, {self.n} seeds)"
        )


@dataclass(frozen=True)
class Difference:
    """``a - b`` over seeds: the mean difference, its 95% interval, a two-sided p-value and the design."""

    effect: float
    lo: float
    hi: float
    p: float
    n: int  # seeds per side
    paired: bool

    @property
    def settled(self) -> bool:
        """Whether the interval excludes 0 (the difference is established at this number of seeds)."""
        return self.lo > 0 or self.hi < 0

    def text(self, digits: int = 2) -> str:
        """``"+1.2 [−0.3, +2.7], 5 seeds, p = 0.11"`` (paired: "5 paired seeds")."""
        if not math.isfinite(self.lo):
            return f"{_signed(self.effect, digits)} (too few seeds for an interval)"
        seeds = f"{self.n} {'paired ' if self.paired else ''}seeds"
        return f"{_signed(self.effect, digits)} [{_signed(self.lo, digits)}, {_signed(self.hi, digits)}], {seeds}, {_p(self.p)}"


def estimate(values: Sequence[float]) -> Estimate:
    """Mean, sample standard deviation and 95% t interval of per-seed ``values``."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"estimate: expected a non-empty list of per-seed numbers, found shape {x.shape}")
    n, mean = len(x), float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


def _rounding(x: np.ndarray, y: np.ndarray) -> float:
    """How far apart two computations of the same number can land in float64, at the scale of ``x`` and ``y``."""
    return 1e-9 * max(1.0, float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0)))


def difference(a: Sequence[float], b: Sequence[float], paired: bool = False) -> Difference:
    """``mean(a) - mean(b)`` with its 95% interval and p-value: paired t over per-seed differences when both
    sides ran the same seeds (``paired``, equal lengths required), else Welch's t."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        if x.shape != y.shape:
            raise ValueError(f"difference(paired=True): both sides need the same seeds, found {len(x)} and {len(y)}")
        d = estimate(x - y)
        # Per-seed differences equal up to floating-point rounding (a metric that changed by the same number of
        # test samples in every seed) are a constant difference: the t statistic of rounding noise means nothing.
        rounding = _rounding(x, y)
        if d.n < 2 or d.std <= rounding:
            mean = 0.0 if abs(d.mean) <= rounding else d.mean
            return Difference(mean, mean if d.n > 1 else math.nan, mean if d.n > 1 else math.nan,
                              1.0 if mean == 0 else 0.0 if d.n > 1 else math.nan, d.n, True)  # fmt: skip
        p = float(2 * sps.t.sf(abs(d.mean) / (d.std / math.sqrt(d.n)), d.n - 1))  # the paired t test
        return Difference(d.mean, d.lo, d.hi, p, d.n, True)
    if len(x) < 2 or len(y) < 2:
        return Difference(float(x.mean() - y.mean()), math.nan, math.nan, math.nan, min(len(x), len(y)), False)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    effect = float(x.mean() - y.mean())
    rounding = _rounding(x, y)
    if se <= rounding:  # both sides constant up to rounding
        effect = 0.0 if abs(effect) <= rounding else effect
        return Difference(effect, effect, effect, 1.0 if effect == 0 else 0.0, min(len(x), len(y)), False)
    dof = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = float(sps.t.ppf(0.5 + LEVEL / 2, dof)) * se
    p = float(2 * sps.t.sf(abs(effect) / se, dof))
    return Difference(effect, effect - half, effect + half, p, min(len(x), len(y)), False)


def moved(before: Sequence[float], after: Sequence[float], paired: bool = True) -> Difference:
    """How far a quantity moved between two points (e.g. an edge weight before and after training, per seed):
    the :func:`difference` ``after - before``. Interpret an ordering of such quantities only where they moved
    (``.settled``)."""
    return difference(after, before, paired=paired)


def permutation_spearman(x: Sequence[float], y: Sequence[float], permutations: int = 10_000,
                         seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Spearman's rho of ``x`` and ``y`` and its two-sided permutation p-value (exact in spirit for the
    handful of points a GD-Unit has: six edges give only 720 orderings, ties included)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or len(x) < 3:
        raise ValueError(
            f"permutation_spearman: expected two equal lists of at least 3 numbers, found {x.shape}, {y.shape}"
        )
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # a constant side: no ordering to correlate
        return math.nan, 1.0
    rho = float(sps.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    null = np.array([sps.spearmanr(x, rng.permutation(y)).statistic for _ in range(permutations)])
    null = null[np.isfinite(null)]
    p = float((np.sum(np.abs(null) >= abs(rho) - 1e-12) + 1) / (len(null) + 1))
    return rho, p
