"""Regression metrics exactly as MMSA defines them (the book's data-format page, "Metrics").

On the whole split, predictions and labels flattened:

* ``MAE``: mean ``|pred - y|``, unclipped. ``Corr``: Pearson correlation, unclipped.
* ``Mult_acc_7`` / ``Mult_acc_5``: clip both to ``[-3, 3]`` / ``[-2, 2]``, round half to
  even (``np.round``), exact-match accuracy.
* ``Non0_acc_2`` / ``Non0_F1_score``: drop samples whose label is exactly 0; compare
  ``pred > 0`` with ``y > 0``; F1 weighted by support (``average="weighted"``).
  DMD's tables call these "Acc-2" and "F1".
* ``Has0_acc_2`` / ``Has0_F1_score``: compare ``pred >= 0`` with ``y >= 0``; weighted F1.

Every value is rounded to 4 decimals, as MMSA does (``round_to=None`` keeps full precision).

Two cases MMSA leaves undefined, and what we return:

* ``Corr`` of a constant prediction (or constant labels): numpy gives NaN (0/0) and a
  warning. We return ``0.0``: a constant carries no linear information about the labels,
  and 0 is a number a table can show, average over seeds and compare (a model that has
  collapsed to the mean should not make a whole seed summary NaN).
* Non0 metrics when every label is 0: there is nothing to score; we return NaN and log a
  warning (real splits always hold non-zero labels).

F1 uses ``zero_division=0``, the value scikit-learn's default ``"warn"`` also returns (MMSA's
setting), without the warning.

MMSA calls scikit-learn's ``accuracy_score`` and ``f1_score``; :func:`binary_accuracy` and
:func:`weighted_f1` compute the same numbers, bit for bit (the same float operations in the same
order; the tests compare them with scikit-learn on many random splits), in plain numpy, so that
scoring does not import scikit-learn (about a second at every start).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

log = logging.getLogger(__name__)

METRIC_NAMES = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)


def _flat(x: torch.Tensor | np.ndarray | list) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def multiclass_acc(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of samples whose rounded (half to even) prediction equals the rounded label."""
    return float(np.mean(np.round(pred) == np.round(target)))


def pearson(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant (see the module docstring)."""
    p, t = pred - pred.mean(), target - target.mean()
    denom = math.sqrt(float(np.dot(p, p)) * float(np.dot(t, t)))
    if denom == 0.0:
        return 0.0
    return float(np.corrcoef(pred, target)[0, 1])


def binary_accuracy(truth: np.ndarray, guess: np.ndarray) -> float:
    """Share of samples where the boolean arrays agree (scikit-learn's ``accuracy_score``)."""
    return float(np.mean(truth == guess))


def weighted_f1(truth: np.ndarray, guess: np.ndarray) -> float:
    """F1 of each class present in ``truth`` or ``guess``, averaged with weights = the class's support.

    scikit-learn's ``f1_score(truth, guess, average="weighted", zero_division=0)``: per class,
    ``2 tp / (n_true + n_pred)`` in float64 (0 where both counts are 0), then ``np.average`` with
    the true counts as weights (a plain mean if they are all 0).
    """
    classes = np.union1d(truth, guess)
    scores, support = np.zeros(len(classes)), np.zeros(len(classes), dtype=np.int64)
    for i, c in enumerate(classes):
        is_true, is_pred = truth == c, guess == c
        tp, n_true, n_pred = np.sum(is_true & is_pred), np.sum(is_true), np.sum(is_pred)
        denom = 1.0 * float(n_true) + float(n_pred)
        scores[i] = 2.0 * float(tp) / denom if denom else 0.0
        support[i] = n_true
    if support.sum() == 0:
        return float(np.mean(scores))
    return float(np.average(scores, weights=support))


def regression_metrics(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, round_to: int | None = 4
) -> dict[str, float]:
    """MMSA's regression metrics for predictions ``pred`` and labels ``target`` (any shape, N values each).

    Returns a dict with the keys of :data:`METRIC_NAMES`, plain Python floats.
    """
    p, t = _flat(pred), _flat(target)
    if p.shape != t.shape:
        raise ValueError(f"regression_metrics: pred has {p.size} values, target has {t.size}")
    if p.size == 0:
        raise ValueError("regression_metrics: empty prediction")
    non0 = t != 0
    if non0.any():
        truth, guess = t[non0] > 0, p[non0] > 0
        non0_acc = binary_accuracy(truth, guess)
        non0_f1 = weighted_f1(truth, guess)
    else:
        log.warning("regression_metrics: every label is 0, Non0 metrics are undefined (NaN)")
        non0_acc = non0_f1 = float("nan")
    truth, guess = t >= 0, p >= 0
    values = {
        "Has0_acc_2": binary_accuracy(truth, guess),
        "Has0_F1_score": weighted_f1(truth, guess),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": multiclass_acc(np.clip(p, -2.0, 2.0), np.clip(t, -2.0, 2.0)),
        "Mult_acc_7": multiclass_acc(np.clip(p, -3.0, 3.0), np.clip(t, -3.0, 3.0)),
        "MAE": float(np.mean(np.abs(p - t))),
        "Corr": pearson(p, t),
    }
    if round_to is not None:
        values = {k: round(v, round_to) for k, v in values.items()}
    return values
