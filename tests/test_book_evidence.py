"""The comparisons behind chapters 4-6 (dmd_book.evidence, dmd_book.edges): every verdict follows its interval."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import dmd_book as book
from dmd_book import edges, evidence
from dmd_core import analysis
from dmd_core.distill import EDGE_NAMES

SEEDS = [1111, 1112, 1113, 1114, 1115]


def _seed_runs(**metrics: list[float]) -> SimpleNamespace:
    """A stand-in for SeedRuns: test metrics per seed (fractions, as the runs store them)."""
    n = len(next(iter(metrics.values())))
    frame = pd.DataFrame({"seed": SEEDS[:n], **metrics})
    for m in evidence.METRICS:
        if m not in frame:
            frame[m] = 0.5
    return SimpleNamespace(test_metrics=frame, path=Path("runs/x"))


# --------------------------------------------------------------------------- chapter 4: against a fixed bar


def test_versus_a_fixed_baseline_is_the_one_sample_t_interval_shifted():
    values = [78.0, 80.0, 79.5, 81.0, 77.5]
    d = evidence.versus(values, 80.6)
    x = np.asarray(values)
    half = sps.t.ppf(0.975, 4) * x.std(ddof=1) / np.sqrt(5)
    assert d.effect == pytest.approx(x.mean() - 80.6)
    assert (d.lo, d.hi) == pytest.approx((x.mean() - half - 80.6, x.mean() + half - 80.6))
    assert d.p == pytest.approx(sps.ttest_1samp(x, 80.6).pvalue)
    assert "5 seeds" in d.text(1) and "paired" not in d.text(1)
    with warnings.catch_warnings():  # two seeds with the same score, reached along different float paths
        warnings.simplefilter("error")
        same = evidence.versus([100 * (0.1 + 0.2), 30.0], 29.5)  # 30.000000000000004 and 30.0
    assert same.lo == same.hi == same.effect == pytest.approx(0.5) and same.settled


def test_judged_reads_the_interval_and_knows_that_a_lower_mae_is_better():
    up = evidence.versus([2.0, 2.1, 1.9, 2.0], 0.0)
    assert evidence.judged(up, "Non0_acc_2") == "better" and evidence.judged(up, "MAE") == "worse"
    noise = evidence.versus([1.0, -1.0, 0.5, -0.4], 0.0)
    assert evidence.judged(noise, "Non0_acc_2") == "not established"


def test_baseline_verdict_names_every_metric_and_does_not_claim_what_two_noisy_seeds_cannot_show():
    runs = _seed_runs(Non0_acc_2=[0.70, 0.90], Non0_F1_score=[0.70, 0.90], Mult_acc_7=[0.30, 0.40],
                      MAE=[0.9, 0.7], Corr=[0.6, 0.8])  # fmt: skip
    per_seed = evidence.per_seed_metrics(runs)
    assert per_seed.loc[1111, "Non0_acc_2"] == pytest.approx(70.0) and per_seed.loc[1111, "MAE"] == 0.9
    baseline = {"Non0_acc_2": 0.806, "Non0_F1_score": 0.806, "Mult_acc_7": 0.359, "MAE": 0.771, "Corr": 0.733}
    text = evidence.baseline_verdict(per_seed, baseline)
    for name in ("Acc-2", "F1", "Acc-7", "MAE", "Corr"):
        assert name in text
    assert "2 seeds" in text and "not established at this size" in text and "clears" not in text.split(".")[0]
    table = evidence.baseline_table(per_seed, baseline)
    assert list(table.index) == ["Acc-2 (%)", "F1 (%)", "Acc-7 (%)", "MAE", "Corr"]
    assert set(table["DMD is"]) == {"not established"}


def test_baseline_headline_says_dmd_does_not_clear_the_bar_when_it_is_worse_and_never_better():
    per_seed = pd.DataFrame({"Non0_acc_2": [70.0, 70.5, 69.5, 70.2, 69.8], "Non0_F1_score": [80.0, 81, 79, 80, 80],
                             "Mult_acc_7": [35.0, 36, 34, 35, 35], "MAE": [0.9, 0.91, 0.89, 0.9, 0.9],
                             "Corr": [0.73, 0.74, 0.72, 0.73, 0.73]}, index=SEEDS)  # fmt: skip
    baseline = {"Non0_acc_2": 0.806, "Non0_F1_score": 0.80, "Mult_acc_7": 0.35, "MAE": 0.771, "Corr": 0.733}
    headline = evidence.baseline_headline(per_seed, baseline)
    assert headline.startswith("At this size DMD does not clear the bar, chapter 1's ridge regression")
    assert headline.endswith("worse on Acc-2 and MAE.")


def test_ridge_baseline_reads_chapter_1s_file_and_recomputes_it_for_another_test_split(tmp_path):
    settings = book.BookSettings(work_dir=str(tmp_path), scale=0.02, d=8, heads=2, nlevels=1)
    data_file = settings.data_file()
    ds = settings.load(data_file)
    n_test = len(ds["test"])
    record = {"MAE": 0.5, "Corr": 0.7, "Non0_acc_2": 0.8, "Non0_F1_score": 0.8, "Mult_acc_7": 0.4, "n_test": n_test,
              "data_file": data_file.name}  # fmt: skip
    (tmp_path / "baseline.json").write_text(json.dumps(record))
    read = evidence.ridge_baseline(settings, ds, data_file)
    assert read["source"] == "chapter 1" and read["MAE"] == 0.5
    record["n_test"] = n_test + 1  # another file's baseline: computed again from this one
    (tmp_path / "baseline.json").write_text(json.dumps(record))
    again = evidence.ridge_baseline(settings, ds, data_file)
    probe = analysis.unimodal_probes(ds["train"], ds["test"]).loc["all"]
    assert again["source"] == "computed here" and again["MAE"] == pytest.approx(probe["MAE"])
    record.update(n_test=n_test, Non0_acc_2=80.6)  # a percentage where a fraction belongs
    (tmp_path / "baseline.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="Non0_acc_2.*fraction"):
        evidence.ridge_baseline(settings, ds, data_file)


def test_validation_verdict_reports_early_best_epochs_and_the_paired_best_versus_last_test():
    summary = pd.DataFrame({"best epoch": [4, 5, 4, 8, 3], "epochs": [8] * 5,
                            "valid loss at best": [0.70] * 5, "valid loss at last": [0.75, 0.72, 0.8, 0.7, 0.74]},
                           index=SEEDS)  # fmt: skip
    best = pd.DataFrame({m: [80.0, 81.0, 79.0, 80.5, 80.2] for m in evidence.METRICS}, index=SEEDS)
    last = best - 0.0
    last["MAE"] = best["MAE"] + np.array([0.5, 0.6, 0.55, 0.0, 0.52])
    text = evidence.validation_verdict(summary, best, last)
    assert text.startswith("4 of 5 seeds reach their lowest validation loss before the last epoch")
    assert "most seeds begin to fit" in text and "better on MAE" in text
    assert "best-validation weights" in text.split(".")[-2]
    calm = summary.assign(**{"best epoch": [8, 8, 7, 8, 8]})
    assert "overfitting is at most beginning" in evidence.validation_verdict(calm, best, best)
    assert "not established at this size" in evidence.validation_verdict(calm, best, best)


# --------------------------------------------------------------------------- chapter 6: paired ablations


def test_ablations_are_judged_on_every_metric_over_paired_seeds():
    full = _seed_runs(Non0_acc_2=[0.80, 0.82, 0.78, 0.81, 0.79], MAE=[0.80, 0.78, 0.82, 0.79, 0.81])
    # the same seeds shifted: a paired design sees the shift although the seeds spread more than it
    worse = _seed_runs(Non0_acc_2=[0.79, 0.81, 0.77, 0.80, 0.78], MAE=[0.80, 0.78, 0.82, 0.79, 0.81])
    results = {"DMD (full)": full, "without x": worse}
    diffs = evidence.ablation_differences(results)["without x"]
    assert diffs["Non0_acc_2"].paired and diffs["Non0_acc_2"].n == 5
    assert diffs["Non0_acc_2"].effect == pytest.approx(-1.0) and diffs["Non0_acc_2"].settled
    assert not diffs["MAE"].settled
    text = evidence.ablation_verdict(results)
    assert text.startswith("Over 5 paired seeds, the model without x is worse than DMD (full) on Acc-2 −1.0")
    assert "not distinguishable from it on" in text and "MAE" in text and "Corr" in text
    table = evidence.ablation_table(results)
    assert table.loc["Acc-2 (%)", ("without x", "is")] == "worse"
    assert table.loc["MAE", ("without x", "minus DMD (full), p")].startswith("+0.000 [")
    assert evidence.ablation_headline(results) == ("The model without x is worse on Acc-2 than DMD (full) beyond seed "
                                                   "noise (5 paired seeds).")  # fmt: skip
    estimates = evidence.ablation_estimates(results)
    assert estimates.loc["DMD (full)", "Non0_acc_2 mean"] == pytest.approx(80.0)
    assert estimates.loc["DMD (full)", "Non0_acc_2 lo"] < 80.0 < estimates.loc["DMD (full)", "Non0_acc_2 hi"]


def test_two_noisy_seeds_settle_no_ablation_and_the_verdict_says_so():
    results = {"DMD (full)": _seed_runs(Non0_acc_2=[0.80, 0.70]), "without x": _seed_runs(Non0_acc_2=[0.71, 0.81])}
    text = evidence.ablation_verdict(results)
    assert "2 paired seeds" in text and "No ablation's effect is established at this size" in text


def test_dmd_core_ablation_table_gives_mean_and_population_std():
    results = {"a": _seed_runs(Non0_acc_2=[0.80, 0.82], MAE=[0.7, 0.8]), "b": _seed_runs(Non0_acc_2=[0.7, 0.7])}
    table = analysis.ablation_table(results)
    assert table.loc["a", "Non0_acc_2 mean"] == pytest.approx(81.0) and table.loc["a", "Non0_acc_2 std"] == 1.0
    assert table.loc["a", "MAE mean"] == pytest.approx(0.75) and table.loc["b", "seeds"] == 2


# --------------------------------------------------------------------------- chapter 5: edges over seeds


def _edges(rows: list[list[float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(EDGE_NAMES), index=SEEDS[: len(rows)])


def test_edge_moves_separate_edges_that_left_one_sixth_from_seed_noise():
    rng = np.random.default_rng(21)
    noise = _edges([list(1 / 6 + rng.normal(0, 0.002, 6)) for _ in range(5)])
    wobble = edges.edge_moves(noise)
    # one of the six edges has p = 0.017 by chance: below 0.05, not below 0.05 / 6 (six edges tested at once)
    assert 0.05 / 6 < wobble["p"].astype(float).min() < 0.05
    assert not edges.moved_any(wobble) and set(wobble["direction"]) == {"not established"}
    pattern = _edges([[0.03, 0.03, 0.40 + d, 0.07, 0.40 - d, 0.07] for d in (0.0, 0.01, -0.01, 0.02, 0.005)])
    moves = edges.edge_moves(pattern)
    assert edges.moved_any(moves)
    assert moves.loc["L->V", "direction"] == "up" and moves.loc["V->L", "direction"] == "down"
    text = edges.pattern_verdict({"HomoGD": moves}, 5)
    assert "L\u2192V" in text and "rose above 1/6" in text and "the paper's pattern" in text
    assert "no edge left 1/6" in edges.pattern_verdict({"HomoGD": edges.edge_moves(noise)}, 5)


def test_the_correlation_is_tested_only_where_the_edges_moved():
    table = pd.DataFrame({"mean weight": [0.05, 0.1, 0.15, 0.2, 0.22, 0.28],
                          "mean |logit difference|": [3.0, 2.5, 2.0, 1.5, 1.0, 0.5]}, index=list(EDGE_NAMES))  # fmt: skip
    text, tested = edges.agreement_verdict({"HomoGD": table, "HeteroGD": table}, {"HomoGD": True, "HeteroGD": False},
                                           seeds=5, permutations=2000)  # fmt: skip
    assert list(tested) == ["HomoGD"] and tested["HomoGD"][0] == pytest.approx(-1.0) and tested["HomoGD"][1] < 0.05
    assert "agree more" in text and "6 edges" in text
    assert "in HeteroGD the edges did not leave 1/6 beyond seed noise" in text and "not established" in text
    text, tested = edges.agreement_verdict({"HomoGD": table, "HeteroGD": table}, {"HomoGD": False, "HeteroGD": False},
                                           seeds=5)  # fmt: skip
    assert not tested and text.count("beyond seed noise") == 1 and "in neither unit did the edges leave 1/6" in text


def test_prior_verdict_reads_a_uniform_share_within_noise_as_none_of_the_lead_established():
    paper = pd.Series([0.78, 0.80, 0.75, 0.82, 0.79])
    uniform = pd.Series([0.333, 0.336, 0.330, 0.334, 0.332])
    text = edges.prior_verdict(paper, uniform, uniform, homo_free_moved=False)
    assert "none of language's lead is established" in text and "a null" not in text
    assert "do not leave 1/6 beyond seed noise" in text
    assert edges.lead_survives(paper, uniform) is None
    survived = pd.Series([0.45, 0.47, 0.44, 0.46, 0.45])
    assert "A part of the lead survives" in edges.prior_verdict(paper, survived, survived, True)
    assert edges.lead_survives(paper, survived) is True


def test_collapse_and_follow_verdicts_report_null_results_as_null_results():
    low = {"language file": pd.Series([0.02, 0.03, 0.01, 0.02, 0.02]),
           "audio file": pd.Series([0.03, 0.02, 0.02, 0.01, 0.03])}  # fmt: skip
    assert "collapses onto the vision\u2013audio pair" in edges.collapse_verdict(low) and edges.collapsed(low)
    flat = {k: pd.Series([0.30, 0.36, 0.33, 0.31, 0.35]) for k in low}
    assert "not established at this size" in edges.collapse_verdict(flat) and not edges.collapsed(flat)
    share = pd.Series([0.33, 0.334, 0.332, 0.335, 0.331])
    audio = {f"{u}, {f} file": share for u in ("HomoGD", "HeteroGD") for f in ("language", "audio")}
    still = {f: {"HomoGD": False, "HeteroGD": False} for f in ("language file", "audio file")}
    text = edges.follow_verdict(audio, still, pd.Series([0.8, 0.78, 0.82, 0.79, 0.8]))
    assert text.count("a null result") == 1 and "in neither unit do the free edges leave 1/6" in text
    assert text.count("0.332 [") == 4 and "the prior, not the data, decides" in text  # both units' shares, said once
    assert edges.follows(audio, still) is None
    audio["HeteroGD, audio file"] = pd.Series([0.45, 0.47, 0.44, 0.46, 0.45])
    moved = {f: {"HomoGD": False, "HeteroGD": True} for f in ("language file", "audio file")}
    assert "in HeteroGD audio's teacher share rises" in edges.follow_verdict(audio, moved, share)
    assert edges.follows(audio, moved) is True
    takeaway = edges.takeaway(True, None, False, False, None)
    assert "the prior's" in takeaway and "not established" in takeaway
    assert "even the paper's prior did not give language a lead" in edges.takeaway(False, None, False, False, None)
    assert edges.paper_lead(pd.Series([0.78, 0.80, 0.75, 0.82, 0.79]))
    assert not edges.paper_lead(pd.Series([0.30, 0.36, 0.33, 0.31, 0.35]))


def test_summary_sentences_follow_the_same_comparisons_as_the_verdicts():
    paper = pd.Series([0.78, 0.80, 0.75, 0.82, 0.79])
    flat = pd.Series([0.33, 0.334, 0.332, 0.335, 0.331])
    first, second, third, fourth = edges.summary(paper, flat, collapse=False, follows=None)
    assert "language leads" in first and "5 seeds" in first and "0.788 [" in first
    assert "that lead is gone" in second and "shows the prior" in second
    assert "not established" in third and "not established" in fourth
    survived = pd.Series([0.45, 0.47, 0.44, 0.46, 0.45])
    assert "survives a uniform prior" in edges.summary(paper, survived, True, True)[1]
    assert "drops language" in edges.summary(paper, survived, True, True)[2]
    assert "turns towards audio" in edges.summary(paper, survived, True, True)[3]
    first, second, *_ = edges.summary(flat, flat, collapse=False, follows=False)
    assert "is not above 1/3" in first and "says nothing" in second


def test_group_edges_contrasts_and_the_planted_incongruent_samples(tmp_path):
    settings = book.BookSettings(work_dir=str(tmp_path), scale=0.05)
    ds = settings.load(settings.data_file())
    flags = analysis.planted_incongruent(ds, "test")
    assert len(flags) == len(ds["test"]) and flags.index[0] == ds["test"].ids[0]
    assert flags.to_numpy().tolist() == np.asarray(ds.extra["synth"]["latent"]["test"]["incongruent"]).tolist()
    with pytest.raises(ValueError, match="synth.latent"):
        analysis.planted_incongruent(SimpleNamespace(extra={}), "test")
    ids = [str(i) for i in range(6)]
    rng = np.random.default_rng(1)

    def run(shift: float) -> SimpleNamespace:
        frame = pd.DataFrame({"id": ids, "label": [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0], "prediction": [0.0] * 6})
        for branch in analysis.BRANCHES:
            w = rng.dirichlet(np.ones(6) * 50, 6)
            w[:3, 2] += shift  # L->V heavier on the first three samples
            w /= w.sum(1, keepdims=True)
            for k, edge in enumerate(EDGE_NAMES):
                frame[f"{branch}_{edge}"] = w[:, k]
        return SimpleNamespace(test_predictions=frame)

    seed_runs = SimpleNamespace(runs={s: run(0.5) for s in SEEDS})
    groups = pd.Series(["a"] * 3 + ["b"] * 3, index=ids)
    by_group = edges.seed_group_edges(seed_runs, groups, "homo")
    assert set(by_group) == {"a", "b"} and list(by_group["a"].index) == SEEDS
    shares = {k: analysis.teacher_shares(v) for k, v in by_group.items()}
    np.testing.assert_allclose(shares["a"].sum(axis=1), 1.0)
    contrast = edges.contrast(shares["a"], shares["b"], list("LVA"))
    assert contrast.loc["L", "settled"] and contrast.loc["L", "mean"] > 0
    assert "language +" in edges.incongruent_verdict({"HomoGD, paper prior": contrast}, "V", 5)
    flat = edges.contrast(shares["a"], shares["a"], list("LVA"))  # no difference at all: nothing settled
    both = edges.incongruent_verdict({"HomoGD, paper prior": flat, "HomoGD, no prior": flat}, "V", 5)
    assert "in none of the 2 settings (HomoGD, paper prior and HomoGD, no prior) does a teacher share move" in both
    assert both.count("beyond seed noise") == 1 and "not established" in both
    errors = edges.group_errors(seed_runs, groups)
    assert errors.loc[SEEDS[0], "a"] == pytest.approx(np.mean([2.0, 1.0, 0.0]))
    noisy = pd.DataFrame({"a": [1.0, 1.2, 0.9, 1.1, 1.0], "b": [1.1, 1.0, 1.0, 1.0, 1.1]}, index=SEEDS)
    assert edges.error_verdict(noisy, "a", "b").startswith("Whether these samples are harder")
    noisy["a"] += [0.5, 0.6, 0.4, 0.5, 0.55]
    assert edges.error_verdict(noisy, "a", "b").startswith("These samples are harder for the model")
    assert "harder for DMD with the paper's prior:" in edges.error_verdict(
        noisy, "a", "b", "DMD with the paper's prior"
    )


def test_seed_edges_read_each_seeds_tested_graph():
    preds = {s: pd.DataFrame({"id": ["0", "1"], "label": [1.0, -1.0],
                              **{f"{b}_{e}": [1 / 6 + 0.01 * k * i, 1 / 6 - 0.01 * k * i] for b in analysis.BRANCHES
                                 for k, e in enumerate(EDGE_NAMES)}}) for i, s in enumerate(SEEDS)}  # fmt: skip
    seed_runs = SimpleNamespace(runs={s: SimpleNamespace(test_predictions=p) for s, p in preds.items()})
    frame = analysis.seed_edges(seed_runs, "hetero")
    assert list(frame.index) == SEEDS and list(frame.columns) == list(EDGE_NAMES)
    np.testing.assert_allclose(frame.to_numpy(), 1 / 6)
    shares = analysis.teacher_shares(frame)
    np.testing.assert_allclose(shares.to_numpy(), 1 / 3)


def test_configure_shows_every_interval_cell_of_a_chapter_table_in_full():
    cell = "\N{MINUS SIGN}0.081 [\N{MINUS SIGN}0.099, \N{MINUS SIGN}0.064], 5 paired seeds, p < 0.001"
    table = pd.DataFrame({"change [95% interval], seeds": [cell + " and more text past sixty characters"]})
    with pd.option_context("display.max_colwidth", 50):  # pandas' default, restored on leaving
        assert "p &lt; 0.001" not in table._repr_html_()
        book.BookSettings().configure()
        assert "p &lt; 0.001 and more text past sixty characters" in table._repr_html_()


def test_missing_modality_verdict_judges_every_metric_of_its_table_for_each_missing_modality():
    rows = []
    for seed, noise in zip((1, 2, 3, 4), (1.0, -1.0, 2.0, -2.0)):
        rows += [
            {"seed": seed, "present": "L+V+A", "Non0_acc_2": 80.0, "MAE": 0.70},
            {"seed": seed, "present": "V+A", "Non0_acc_2": 70.0 + 0.1 * noise, "MAE": 1.00 + 0.001 * noise},
            {"seed": seed, "present": "L+A", "Non0_acc_2": 80.0 + noise, "MAE": 0.75 + 0.001 * noise},
            {"seed": seed, "present": "L+V", "Non0_acc_2": 80.0 + noise, "MAE": 0.70 + 0.01 * noise},
        ]
    text = evidence.missing_modality_verdict(pd.DataFrame(rows))
    assert text.startswith("Paired over 4 seeds with all three modalities")
    language, vision, audio = text.split("; zeroing ")
    assert "Acc-2 by \N{MINUS SIGN}10.0" in language and "MAE by +0.300" in language and "beyond seed noise" in language
    assert "not established" not in language
    assert vision.startswith("vision changes MAE by +0.050") and "while its change in Acc-2 (+0.0" in vision
    assert audio.startswith("audio changes neither Acc-2 (") and " nor MAE (" in audio
