"""dmd_core.metrics reproduces MMSA's regression metrics, including the edge cases."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dmd_core.metrics import METRIC_NAMES, regression_metrics

DATA = Path(__file__).parent / "data" / "metrics_reference.pt"


@pytest.mark.parametrize("setting", ["mosi_aligned_features", "mosi_unaligned_features"])
def test_metrics_match_reference_values(setting):
    ref = torch.load(DATA, weights_only=True)[setting]
    got = regression_metrics(ref["pred"], ref["target"])
    want = ref["values"]
    assert got["Non0_acc_2"] == want["Acc_2"]
    assert got["Non0_F1_score"] == want["F1_score"]
    assert got["Mult_acc_7"] == want["Acc_7"]
    assert got["MAE"] == want["MAE"]
    assert set(got) == set(METRIC_NAMES)
    assert all(isinstance(v, float) for v in got.values())


def test_has0_counts_zero_label_as_positive_and_non0_drops_it():
    target = torch.tensor([0.0, 0.0, 1.0, -1.0])
    pred = torch.tensor([0.0, -0.5, 2.0, -2.0])
    m = regression_metrics(pred, target)
    # Has0: pred >= 0 vs y >= 0 -> [T,F,T,F] vs [T,T,T,F]: 3/4 right.
    assert m["Has0_acc_2"] == 0.75
    # Non0: the two zero labels are dropped, the rest are right.
    assert m["Non0_acc_2"] == 1.0 and m["Non0_F1_score"] == 1.0


def test_non0_uses_strict_sign_so_zero_prediction_is_negative():
    m = regression_metrics(torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0]))
    assert m["Non0_acc_2"] == 0.5


def test_multiclass_rounds_half_to_even():
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0 (== 0): like np.round, unlike round-half-up.
    pred = torch.tensor([0.5, 1.5, 2.5, -0.5])
    target = torch.tensor([0.0, 2.0, 2.0, 0.0])
    assert regression_metrics(pred, target)["Mult_acc_7"] == 1.0
    pred_up = torch.tensor([1.0, 2.0, 3.0, -1.0])  # what round-half-up/away would give
    assert regression_metrics(pred_up, target)["Mult_acc_7"] == 0.25  # only 2.0 matches


def test_multiclass_clips_before_rounding_and_mae_does_not_clip():
    pred = torch.tensor([5.0, -9.0, 2.4])
    target = torch.tensor([3.0, -3.0, 2.0])
    m = regression_metrics(pred, target)
    assert m["Mult_acc_7"] == 1.0  # 5 -> 3, -9 -> -3 (unclipped, only 2.4 -> 2 would match)
    assert regression_metrics(pred, torch.tensor([3.0, -2.0, 1.0]))["Mult_acc_5"] == 0.6667  # 5, 3 -> 2; -9, -2 -> -2
    assert m["MAE"] == round((2 + 6 + 0.4) / 3, 4)


def test_constant_prediction_has_zero_corr_not_nan():
    m = regression_metrics(torch.zeros(10), torch.linspace(-3, 3, 10))
    assert m["Corr"] == 0.0
    assert not any(np.isnan(v) for v in m.values())


def test_corr_matches_numpy_and_rounding_can_be_disabled():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(50, generator=g), torch.randn(50, generator=g)
    m = regression_metrics(pred, target, round_to=None)
    assert m["Corr"] == pytest.approx(np.corrcoef(pred.numpy(), target.numpy())[0, 1], abs=1e-12)
    assert regression_metrics(pred, target)["Corr"] == round(m["Corr"], 4)


def test_shapes_are_flattened_and_mismatch_is_an_error():
    m = regression_metrics(torch.ones(4, 1), torch.ones(4))
    assert m["Has0_acc_2"] == 1.0
    with pytest.raises(ValueError, match="pred has 3 values, target has 4"):
        regression_metrics(torch.ones(3), torch.ones(4))


def test_accuracy_and_weighted_f1_equal_scikit_learn_bit_for_bit():
    """MMSA scores with scikit-learn; our numpy versions must return the very same floats."""
    from sklearn.metrics import accuracy_score, f1_score

    from dmd_core.metrics import binary_accuracy, weighted_f1

    rng = np.random.default_rng(0)
    cases = [(np.array([True]), np.array([False])), (np.array([False, False]), np.array([False, False])),
             (np.array([True, True]), np.array([False, True]))]  # fmt: skip
    for _ in range(300):
        n = int(rng.integers(1, 700))
        truth = rng.random(n) < rng.random()
        guess = np.where(rng.random(n) < rng.random(), truth, rng.random(n) < 0.5)
        cases.append((truth, guess))
    for truth, guess in cases:
        assert binary_accuracy(truth, guess) == float(accuracy_score(truth, guess))
        want = float(f1_score(truth, guess, average="weighted", zero_division=0))
        assert weighted_f1(truth, guess) == want, (truth, guess)


def test_scoring_does_not_import_scikit_learn():
    """scikit-learn costs about a second at start-up; the metrics must not need it."""
    import subprocess
    import sys

    code = ("import sys, torch; from dmd_core.metrics import regression_metrics; "
            "regression_metrics(torch.randn(50), torch.randn(50)); print('sklearn' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
