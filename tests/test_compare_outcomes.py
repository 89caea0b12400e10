"""``benchmarks/compare_outcomes.py``: its statistics against hand-computed values, the run order, the verdict and
the argument checks (the runs themselves take an hour; ``--quick`` is the smoke test)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


outcomes = load("compare_outcomes")


def test_mean_std_uses_the_sample_standard_deviation():
    assert outcomes.mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert outcomes.mean_std([7.0]) == (7.0, 0.0)


def test_welch_matches_the_hand_computed_statistic_and_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    # By hand: means 2.5 and 6; variances 5/3 and 10; se^2 = 5/12 + 2 = 29/12;
    # df = (29/12)^2 / ((5/12)^2 / 3 + 2^2 / 4) = 5.52079; t = 3.5 / sqrt(29/12) = 2.25144.
    w = outcomes.welch(a, b)
    assert w["diff"] == pytest.approx(3.5)
    assert w["t"] == pytest.approx(2.25144, abs=1e-5)
    assert w["df"] == pytest.approx(5.52079, abs=1e-5)
    assert w["p"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-12)
    half = stats.t.ppf(0.975, 5.520788) * math.sqrt(29 / 12)
    assert (w["low"], w["high"]) == pytest.approx((3.5 - half, 3.5 + half), abs=1e-5)
    assert w["p"] > 0.05 and w["low"] < 0 < w["high"]  # the interval and the test agree


def test_welch_of_constant_samples_is_exact():
    assert outcomes.welch([1.0, 1.0], [1.0, 1.0])["p"] == 1.0
    different = outcomes.welch([1.0, 1.0], [2.0, 2.0])
    assert (different["p"], different["low"], different["high"]) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="at least 2 values per side"):
        outcomes.welch([1.0], [1.0, 2.0])


def test_ranks_give_ties_their_mean_rank():
    assert outcomes.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_mann_whitney_matches_the_hand_computed_normal_approximation_and_scipy():
    # No ties: U of b = 9, mean 4.5, variance 3*3*7/12 = 5.25, z = (4.5 - 0.5) / sqrt(5.25) = 1.74574.
    mw = outcomes.mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert (mw["u"], mw["z"]) == (9.0, pytest.approx(1.74574, abs=1e-5))
    assert mw["p"] == pytest.approx(2 * stats.norm.sf(1.74574), abs=1e-5)
    # Ties: ranks 1, 3, 3 | 3, 5, 6; U of b = 14 - 6 = 8; variance 9/12 * (7 - 24/30) = 4.65; z = 3 / sqrt(4.65).
    a, b = [1.0, 2.0, 2.0], [2.0, 3.0, 4.0]
    mw = outcomes.mann_whitney(a, b)
    assert (mw["u"], mw["z"]) == (8.0, pytest.approx(3 / math.sqrt(4.65)))
    assert mw["p"] == pytest.approx(stats.mannwhitneyu(b, a, method="asymptotic").pvalue, rel=1e-12)
    lower = outcomes.mann_whitney(b, a)  # the other direction: same p, z of the other sign
    assert (lower["p"], lower["z"]) == (pytest.approx(mw["p"]), pytest.approx(-mw["z"]))
    assert outcomes.mann_whitney([1.0, 1.0], [1.0, 1.0])["p"] == 1.0


def test_holm_multiplies_the_ordered_p_values_and_keeps_them_monotone():
    # Ordered 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06.
    assert outcomes.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert outcomes.holm([0.5, 0.6]) == [1.0, 1.0]
    assert outcomes.holm([]) == []


def test_runs_alternate_the_sides_seed_by_seed_over_the_files():
    assert outcomes.job_order(2, [1111, 1112]) == [
        (0, 1111, "reference"), (0, 1111, "ours"), (1, 1111, "reference"), (1, 1111, "ours"),
        (0, 1112, "reference"), (0, 1112, "ours"), (1, 1112, "reference"), (1, 1112, "ours"),
    ]  # fmt: skip


def test_best_epoch_is_the_references_choice():
    assert outcomes.best_epoch([0.9, 0.8, 0.8]) == 2  # an equal loss is not better
    assert outcomes.best_epoch([0.9, 0.8, 0.8, 0.7999995, 0.7]) == 5  # nor one less than 1e-6 below


def seed_rows(acc2: list[float], **others: float) -> list[dict[str, float]]:
    return [{**{m: others.get(m, 0.5) for m in outcomes.METRICS}, outcomes.ACC2: a} for a in acc2]


def test_verdict_needs_no_significant_metric_and_a_narrow_acc2_interval_containing_zero():
    same = seed_rows([0.70, 0.72, 0.74, 0.76] * 3)
    alike = {"name": "alike", "stats": outcomes.compare_file({"reference": same, "ours": same})}
    v = outcomes.verdict([alike])
    assert v["ok"] and not v["significant"] and v["acc2"][0]["half_width"] < 3
    shifted = {"name": "shifted", "stats": outcomes.compare_file({"reference": same,
                                                                  "ours": seed_rows([0.80, 0.82, 0.84, 0.86] * 3)})}  # fmt: skip
    v = outcomes.verdict([alike, shifted])
    assert not v["ok"] and ("shifted", outcomes.ACC2, "welch") in v["significant"]
    assert v["acc2"][1] == {"file": "shifted", "contains_0": False, "half_width": pytest.approx(v["acc2"][1]["half_width"]),
                            "ok": False}  # fmt: skip
    wide = {"name": "wide", "stats": outcomes.compare_file({"reference": seed_rows([0.6, 0.9]),
                                                            "ours": seed_rows([0.9, 0.6])})}  # fmt: skip
    v = outcomes.verdict([wide])
    assert not v["significant"] and v["acc2"][0]["contains_0"] and v["acc2"][0]["half_width"] > 3 and not v["ok"]


def test_markdown_names_the_command_the_verdict_and_every_seed():
    rows = seed_rows([0.70, 0.74, 0.72])
    runs = [{"side": side, "seed": 1111 + i, "best_epoch": 2, "metrics": row}
            for side in outcomes.SIDES for i, row in enumerate(rows)]  # fmt: skip
    file = {"name": "file 1 (generator seed 7)", "synth": ["synth", "--seed", "7"], "runs": runs,
            "stats": outcomes.compare_file({"reference": rows, "ours": rows})}  # fmt: skip
    result = {"recipe": {"epochs": 6, "lr": 1e-3, "accumulation": 1, "batch_size": 16}, "workers": 2,
              "machine": {"date": "2026-12-07 12:00", "cpu": "cpu", "cpus": 2, "python": "3.11", "torch": "2"},
              "reference": {"commit": None, "files_sha256": "abc"}, "ours_commit": "1234567", "total_s": 60.0,
              "command": "python benchmarks/compare_outcomes.py --reference R", "seeds": [1111, 1112, 1113],
              "files": [file], "raw_name": "outcomes-x.json"}  # fmt: skip
    result["verdict"] = outcomes.verdict([file])
    text = outcomes.markdown(result)
    assert "Command: `python benchmarks/compare_outcomes.py --reference R`" in text
    # Three seeds of 0.70, 0.74, 0.72 a side: difference 0, half-width t(0.975, 4) * 0.02 * sqrt(2/3) = 4.5 points.
    assert "Verdict: NOT met. Metrics at a Holm-corrected p < 0.05: none." in text
    assert "file 1 (generator seed 7): half-width 4.5 points, contains 0" in text and "`dmd synth --seed 7`" in text
    assert "| Acc-2 (Non0) | 72.0 ± 2.0 | 72.0 ± 2.0 | +0.0 [-4.5, +4.5] | 1.000 | 1.000 | 1.000 | 1.000 |" in text
    assert sum(line.startswith("| 111") for line in text.splitlines()) == 6


@pytest.fixture
def fake_reference(tmp_path) -> Path:
    ref = tmp_path / "DMD"
    (ref / "config").mkdir(parents=True)
    (ref / "run.py").write_text("")
    (ref / "config" / "config.json").write_text("{}")
    return ref


def test_arguments_are_checked_with_the_reason(fake_reference, tmp_path, capsys):
    args = outcomes.parse_args(["--reference", str(fake_reference)])
    assert (args.data_seeds, args.seeds, args.sizes, args.workers) == ([7, 8], 10, [256, 64, 686], 2)
    quick = outcomes.parse_args(["--reference", str(fake_reference), "--quick"])
    assert (quick.seeds, quick.epochs, quick.sizes) == (2, 1, [32, 16, 16])
    for argv, message in [
        (["--data-seeds", "7"], "give at least two different generator seeds"),
        (["--data-seeds", "7", "7"], "give at least two different generator seeds"),
        (["--seeds", "1"], "at least 2 seeds per side"),
        (["--epochs", "0"], "--epochs 0: expected a positive integer"),
        (["--sizes", "32", "1", "16"], "every split needs at least 2 samples"),
    ]:
        with pytest.raises(SystemExit):
            outcomes.parse_args(["--reference", str(fake_reference), *argv])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        outcomes.parse_args(["--reference", str(tmp_path)])
    assert "not a checkout of mdswyz/DMD" in capsys.readouterr().err


def test_score_reads_every_metric_unrounded_from_predictions():
    record = {"prediction": [0.31, -1.2, 2.0, 0.0], "label": [1.0, -1.0, 2.4, -0.6]}
    values = outcomes.score(record)
    assert set(values) == set(outcomes.METRICS)
    assert values["MAE"] == pytest.approx((0.69 + 0.2 + 0.4 + 0.6) / 4, abs=1e-12)
    assert values["Non0_acc_2"] == 1.0 and values["Has0_acc_2"] == 0.75  # a prediction of 0.0 is >= 0, not > 0
