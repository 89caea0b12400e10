"""The comparisons behind chapters 4 and 6: test metrics over seeds against a bar, and their sentences.

A trained number is stated only beside its comparison (book/dmd_book/stats.py): the mean over seeds with
its 95% interval, the difference from what it is compared with (the ridge baseline of chapter 1, the
last epoch, an ablation) with its interval, the seeds and a p-value, on every metric a reader looks at
(Acc-2, F1, Acc-7, MAE, Corr). Where the interval contains no difference, the sentence says "not
established at this size" and what would settle it. Chapter 5's edge comparisons are in
:mod:`dmd_book.edges`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .stats import Difference, Estimate, difference, estimate

if TYPE_CHECKING:
    from dmd_core.data import MMSADataset, Split
    from dmd_core.runs import SeedRuns

    from .settings import BookSettings

log = logging.getLogger(__name__)

# The metrics every comparison shows, with the name a reader knows (accuracies and F1 in %, Non0: without the
# neutral clips, as the paper reports them).
METRICS: dict[str, str] = {"Non0_acc_2": "Acc-2", "Non0_F1_score": "F1", "Mult_acc_7": "Acc-7", "MAE": "MAE",
                           "Corr": "Corr"}  # fmt: skip
PERCENT = ("Non0_acc_2", "Non0_F1_score", "Mult_acc_7")
LOWER_IS_BETTER = ("MAE",)
BASELINE_FILE = "baseline.json"
SETTLE = ("more seeds (`seeds`), more epochs, or the paper's setting (`paper_scale = True`, on the real file with "
          "`data_path`)")  # fmt: skip


def digits(metric: str) -> int:
    """Decimals a metric is printed with: one for percentages, three for MAE and Corr."""
    return 1 if metric in PERCENT else 3


def shown(metric: str, value: float) -> float:
    """A metric as the book prints it (accuracies and F1 in %)."""
    return 100.0 * float(value) if metric in PERCENT else float(value)


def interval(est: Estimate, digits: int = 2) -> str:
    """``"79.1 [77.8, 80.4]"``: a mean and its 95% interval (``"79.1 (1 seed)"`` without one)."""
    if est.n < 2 or not math.isfinite(est.lo):
        return f"{est.mean:.{digits}f} (1 seed)"
    return f"{est.mean:.{digits}f} [{est.lo:.{digits}f}, {est.hi:.{digits}f}]".replace("-", "\u2212")


def per_seed_metrics(seed_runs: SeedRuns) -> pd.DataFrame:
    """Test metrics of the best-validation weights per seed (rows: seeds; columns :data:`METRICS`, in %)."""
    frame = seed_runs.test_metrics.set_index("seed")
    missing = [m for m in METRICS if m not in frame.columns]
    if missing:
        raise KeyError(f"per_seed_metrics: {seed_runs.path}: test metrics lack {missing}")
    return pd.DataFrame({m: [shown(m, v) for v in frame[m]] for m in METRICS}, index=frame.index)


def versus(values: Sequence[float], reference: float) -> Difference:
    """``mean(values) - reference`` for a fixed ``reference`` (one deterministic fit): the t interval of the
    per-seed mean, shifted, and the one-sample t-test's p-value."""
    x = np.asarray(values, dtype=float)
    # The t test of the differences from a constant is the one-sample t test; difference() also reads values
    # that are equal up to rounding as exact, instead of letting scipy warn about them.
    d = difference(x, np.full_like(x, float(reference)), paired=True)
    return replace(d, paired=False)


def judged(d: Difference, metric: str) -> str:
    """``"better"``, ``"worse"`` (the interval excludes 0) or ``"not established"``, for a difference ``a - b`` of
    ``metric`` (lower MAE is better)."""
    if not d.settled:
        return "not established"
    up = d.effect > 0
    return "better" if up != (metric in LOWER_IS_BETTER) else "worse"


def brief(d: Difference, digits: int = 2) -> str:
    """``"+1.2 [−0.3, +2.7], p = 0.11"``: :meth:`~dmd_book.stats.Difference.text` without the number of seeds, for
    a sentence that states it once."""
    return re.sub(r", \d+ (paired )?seeds?", "", d.text(digits))


def _listed(items: Sequence[str]) -> str:
    """Items that hold commas of their own (intervals), joined by semicolons: ``a; b and c``."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{'; '.join(items[:-1])} and {items[-1]}"


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# --------------------------------------------------------------------------- the bar: chapter 1's ridge baseline


def ridge_baseline(settings: BookSettings, ds: MMSADataset, data_file: str | Path | None = None) -> dict[str, Any]:
    """Chapter 1's ridge regression on all three modalities (time-pooled features), scored on the test split.

    Read from ``work_dir/baseline.json`` (written by chapter 1) when it is there and scores this file's test
    split (``n_test``, and the file's name when ``data_file`` is given); otherwise computed here the same way (:func:`dmd_core.analysis.unimodal_probes`, row
    ``all``). Metrics as fractions, as :func:`dmd_core.metrics.regression_metrics` gives them; ``source`` says
    where they came from.
    """
    from dmd_core import analysis

    n_test = len(ds["test"])
    path = Path(settings.work_dir) / BASELINE_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        missing = [k for k in (*METRICS, "n_test") if k not in data]
        if missing:
            raise ValueError(f"{path}: missing fields {missing} (expected {[*METRICS, 'n_test']})")
        for metric in PERCENT:
            if not 0.0 <= float(data[metric]) <= 1.0:
                raise ValueError(f"{path}: field {metric!r} expected a fraction in [0, 1], found {data[metric]!r}")
        same_file = data_file is None or data.get("data_file") in (None, Path(data_file).name)
        if int(data["n_test"]) == n_test and same_file:
            return {**{m: float(data[m]) for m in METRICS}, "n_test": n_test, "source": "chapter 1"}
        log.info("%s scores %s test samples of %s, this file (%s) has %d: computing the baseline again", path,
                 data["n_test"], data.get("data_file"), data_file, n_test)  # fmt: skip
    row = analysis.unimodal_probes(ds["train"], ds["test"], combined=True).loc["all"]
    return {**{m: float(row[m]) for m in METRICS}, "n_test": n_test, "source": "computed here"}


def baseline_comparison(per_seed: pd.DataFrame, baseline: Mapping[str, float]) -> dict[str, Difference]:
    """Per metric: DMD's per-seed values (:func:`per_seed_metrics`) minus the baseline (fractions, as
    :func:`ridge_baseline`), as :func:`versus` gives it."""
    return {m: versus(per_seed[m], shown(m, baseline[m])) for m in METRICS}


def baseline_table(per_seed: pd.DataFrame, baseline: Mapping[str, float]) -> pd.DataFrame:
    """Rows: metrics; DMD's mean with its 95% interval over seeds, the ridge baseline, and the difference."""
    n = len(per_seed)
    diffs = baseline_comparison(per_seed, baseline)
    rows = {}
    for m, name in METRICS.items():
        k = digits(m)
        rows[name + (" (%)" if m in PERCENT else "")] = {
            f"DMD, mean [95% CI], {n} seeds": interval(estimate(per_seed[m]), k),
            "ridge, all modalities (one fit)": f"{shown(m, baseline[m]):.{k}f}",
            "DMD \u2212 ridge, p": brief(diffs[m], k),
            "DMD is": judged(diffs[m], m),
        }
    return pd.DataFrame(rows).T


def baseline_verdict(per_seed: pd.DataFrame, baseline: Mapping[str, float]) -> str:
    """Whether DMD clears the ridge baseline, metric by metric, each with its comparison (DMD minus ridge)."""
    diffs = baseline_comparison(per_seed, baseline)
    groups: dict[str, list[str]] = {"better": [], "worse": [], "not established": []}
    for m, d in diffs.items():
        groups[judged(d, m)].append(f"{METRICS[m]} ({brief(d, digits(m))})")
    parts = []
    if groups["better"]:
        parts.append(f"better than the ridge baseline beyond seed noise on {_listed(groups['better'])}")
    if groups["worse"]:
        parts.append(f"{'worse' if parts else 'worse than the ridge baseline'} beyond seed noise on "
                     f"{_listed(groups['worse'])}")  # fmt: skip
    if groups["not established"]:
        parts.append(f"{'not distinguishable' if parts else 'not distinguishable from the ridge baseline'} on "
                     f"{_listed(groups['not established'])}")  # fmt: skip
    n = len(per_seed)
    return (
        f"Over {n} seed{'s' if n != 1 else ''}, DMD is "
        + "; ".join(parts)
        + f" (DMD minus ridge). {baseline_headline(per_seed, baseline)}"
    )


BAR = "chapter 1's ridge regression on all three modalities"


def baseline_headline(per_seed: pd.DataFrame, baseline: Mapping[str, float]) -> str:
    """One sentence: does DMD clear the ridge baseline at this size (from :func:`baseline_comparison`)."""
    verdicts = {m: judged(d, m) for m, d in baseline_comparison(per_seed, baseline).items()}
    better = [METRICS[m] for m, v in verdicts.items() if v == "better"]
    worse = [METRICS[m] for m, v in verdicts.items() if v == "worse"]
    if better and not worse and len(better) == len(verdicts):
        return f"At this size DMD clears the bar, {BAR}, on every metric."
    if worse and not better:
        return (f"At this size DMD does not clear the bar, {BAR}: it is better on none of the {len(verdicts)} "
                f"metrics and worse on {_and(worse)}.")  # fmt: skip
    if not better and not worse:
        return (f"Whether DMD clears the bar, {BAR}, is not established at this size: no metric differs beyond "
                f"seed noise; {SETTLE} would settle it.")  # fmt: skip
    if better and not worse:
        return (f"At this size DMD clears the bar, {BAR}, on {_and(better)}; the other metrics do not differ "
                "beyond seed noise.")  # fmt: skip
    return f"Against the bar, {BAR}, DMD is better on {_and(better)} and worse on {_and(worse)} at this size."


# --------------------------------------------------------------------------- validation: the best epoch against the last


def validation_summary(seed_runs: SeedRuns) -> pd.DataFrame:
    """Per seed: the best-validation epoch, the epochs run, and the validation L1 loss at both (rows: seeds)."""
    rows = {}
    for seed, run in seed_runs.runs.items():
        history = run.history.set_index("epoch")
        best = int(run.test_metrics["best_epoch"])
        last = int(history.index.max())
        rows[seed] = {"best epoch": best, "epochs": last, "valid loss at best": float(history.loc[best, "valid_loss"]),
                      "valid loss at last": float(history.loc[last, "valid_loss"])}  # fmt: skip
    frame = pd.DataFrame(rows).T
    frame.index.name = "seed"
    return frame.astype({"best epoch": int, "epochs": int})


def last_epoch_metrics(seed_runs: SeedRuns, split: Split) -> pd.DataFrame:
    """Test metrics of each seed's last-epoch weights (rows: seeds; columns :data:`METRICS`, in %).

    The runs store test metrics of the best-validation weights only; these are computed here from
    ``last.pt`` (:func:`dmd_core.load_model`), so the two can be compared seed by seed.
    """
    from dmd_core import load_model
    from dmd_core.evaluation import evaluate

    rows = {}
    for seed, run in seed_runs.runs.items():
        scores = evaluate(load_model(run, "last"), split)
        rows[seed] = {m: shown(m, scores[m]) for m in METRICS}
    frame = pd.DataFrame(rows).T
    frame.index.name = "seed"
    return frame


def paired_table(a: pd.DataFrame, b: pd.DataFrame, a_name: str, b_name: str) -> pd.DataFrame:
    """Rows: metrics; both sides' means with 95% intervals and the paired difference ``a - b`` (same seeds)."""
    seeds = sorted(set(a.index) & set(b.index))
    if len(seeds) != len(a) or len(seeds) != len(b):
        raise ValueError(f"paired_table: {a_name} and {b_name} need the same seeds, found {list(a.index)} and "
                         f"{list(b.index)}")  # fmt: skip
    rows = {}
    for m, name in METRICS.items():
        k = digits(m)
        d = difference(a.loc[seeds, m], b.loc[seeds, m], paired=True)
        rows[name + (" (%)" if m in PERCENT else "")] = {
            a_name: interval(estimate(a.loc[seeds, m]), k), b_name: interval(estimate(b.loc[seeds, m]), k),
            f"{a_name} \u2212 {b_name}, {len(seeds)} paired seeds": brief(d, k), f"{a_name} is": judged(d, m),
        }  # fmt: skip
    return pd.DataFrame(rows).T


def validation_verdict(summary: pd.DataFrame, best: pd.DataFrame, last: pd.DataFrame) -> str:
    """Where the validation loss turns up (seed by seed) and what testing the best epoch changes on the test split
    (paired over the seeds against the last epoch)."""
    n = len(summary)
    epochs = int(summary["epochs"].max())
    early = summary[summary["best epoch"] < summary["epochs"]]
    listed = ", ".join(str(int(e)) for e in summary["best epoch"])
    if early.empty:
        text = (f"No seed's validation loss turned up before the last epoch (best epochs {listed} of {epochs}): "
                "within these epochs there is no sign of overfitting, and the tested weights are the last ones.")  # fmt: skip
    else:
        rises = ", ".join(f"{v:.3f}" for v in early["valid loss at last"] - early["valid loss at best"])
        text = (f"{len(early)} of {n} seeds reach their lowest validation loss before the last epoch (best epochs "
                f"{listed} of {epochs}); for them the last epoch's validation L1 loss lies above that minimum by "
                f"{rises}.")  # fmt: skip
        if 2 * len(early) > n:
            text += (" The training loss keeps falling meanwhile: most seeds begin to fit their training samples "
                     "more closely than the validation samples reward.")  # fmt: skip
        else:
            text += (" For most seeds the validation loss is still at its lowest at the end, so at this length "
                     "overfitting is at most beginning; the validation split is small and its curve noisy.")  # fmt: skip
    diffs = {m: difference(best[m], last.loc[best.index, m], paired=True) for m in METRICS}
    better = [METRICS[m] for m, d in diffs.items() if judged(d, m) == "better"]
    worse = [METRICS[m] for m, d in diffs.items() if judged(d, m) == "worse"]
    n = diffs["MAE"].n
    numbers = f"{n} paired seeds: Acc-2 {brief(diffs['Non0_acc_2'], 1)}; MAE {brief(diffs['MAE'], 3)}"
    if better and not worse:
        effect = f"Testing the best-validation weights instead of the last ones is better on {_and(better)} ({numbers})"
    elif worse and not better:
        effect = f"Testing the best-validation weights is worse on {_and(worse)} here ({numbers})"
    elif better or worse:
        effect = (f"Testing the best-validation weights instead of the last is better on {_and(better)} and worse "
                  f"on {_and(worse)} ({numbers})")  # fmt: skip
    else:
        effect = ("What testing the best-validation weights instead of the last ones changes on the test split is "
                  f"not established at this size ({numbers})")  # fmt: skip
    return (f"{text} Choosing the epoch by the validation loss is the recipe's guard against overfitting. {effect}. "
            "Every trained number of this chapter and the next two comes from the best-validation weights.")  # fmt: skip


# --------------------------------------------------------------------------- missing modalities


def missing_modality_seeds(seed_runs: SeedRuns, split: Split) -> pd.DataFrame:
    """Test metrics with modalities zeroed at the input, per seed (best weights): columns ``seed``, ``present``
    and :data:`METRICS` (in %), one row per seed and subset of modalities."""
    from dmd_core import load_model
    from dmd_core.evaluation import missing_modality_table

    frames = []
    for seed, run in seed_runs.runs.items():
        table = missing_modality_table(load_model(run, "best"), split)
        frame = pd.DataFrame({m: [shown(m, v) for v in table[m]] for m in METRICS})
        frame.insert(0, "present", table["present"].to_numpy())
        frame.insert(0, "seed", seed)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def missing_modality_summary(long: pd.DataFrame, metrics: Sequence[str] = ("Non0_acc_2", "MAE")) -> pd.DataFrame:
    """Rows: the modalities present; per metric the mean [95% CI] over seeds and the paired change from all three."""
    full = long[long["present"] == "L+V+A"].set_index("seed")
    rows = {}
    for present, group in long.groupby("present", sort=False):
        group = group.set_index("seed").loc[full.index]
        row = {}
        for m in metrics:
            k = digits(m)
            row[METRICS[m]] = interval(estimate(group[m]), k)
            if present != "L+V+A":
                row[f"{METRICS[m]} change, paired"] = brief(difference(group[m], full[m], paired=True), k)
            else:
                row[f"{METRICS[m]} change, paired"] = ""
        rows[present] = row
    return pd.DataFrame(rows).T


def missing_modality_verdict(long: pd.DataFrame, metrics: Sequence[str] = ("Non0_acc_2", "MAE")) -> str:
    """For each single missing modality, its paired change from all three modalities on every metric of the
    table (:func:`missing_modality_summary`), each said to be beyond seed noise or not established."""
    full = long[long["present"] == "L+V+A"].set_index("seed")
    names = {"V+A": "language", "L+A": "vision", "L+V": "audio"}
    clauses = []
    for present, missing in names.items():
        group = long[long["present"] == present].set_index("seed").loc[full.index]
        changes = [(METRICS[m], difference(group[m], full[m], paired=True), digits(m)) for m in metrics]
        settled = [f"{name} by {brief(d, k)}" for name, d, k in changes if d.settled]
        unclear = [f"{name} ({brief(d, k)})" for name, d, k in changes if not d.settled]
        if settled and unclear:
            clauses.append(f"zeroing {missing} changes {_listed(settled)}, beyond seed noise, while its change in "
                           f"{_listed(unclear)} is not established at this size")  # fmt: skip
        elif settled:
            clauses.append(f"zeroing {missing} changes {_listed(settled)}, beyond seed noise")
        else:
            clauses.append(f"zeroing {missing} changes neither {' nor '.join(unclear)} beyond seed noise")
    text = "; ".join(clauses)
    return f"Paired over {len(full)} seeds with all three modalities (accuracy in points): {text}."


# --------------------------------------------------------------------------- chapter 6: ablations


def ablation_estimates(results: Mapping[str, SeedRuns]) -> pd.DataFrame:
    """Per variant (rows) and metric: the mean and its 95% interval over seeds (columns ``"<metric> mean"``,
    ``"<metric> lo"``, ``"<metric> hi"``; accuracies in %) and the number of ``seeds``."""
    rows = {}
    for name, runs in results.items():
        per_seed = per_seed_metrics(runs)
        row: dict[str, float] = {}
        for m in METRICS:
            est = estimate(per_seed[m])
            row[f"{m} mean"], row[f"{m} lo"], row[f"{m} hi"] = est.mean, est.lo, est.hi
        row["seeds"] = len(per_seed)
        rows[name] = row
    return pd.DataFrame(rows).T


def ablation_differences(
    results: Mapping[str, SeedRuns], reference: str | None = None
) -> dict[str, dict[str, Difference]]:
    """Per ablation, per metric: the paired difference ablation minus ``reference`` (default: the first variant)
    over the seeds both ran."""
    names = list(results)
    reference = reference or names[0]
    base = per_seed_metrics(results[reference])
    out = {}
    for name in names:
        if name == reference:
            continue
        other = per_seed_metrics(results[name])
        seeds = sorted(set(base.index) & set(other.index))
        out[name] = {m: difference(other.loc[seeds, m], base.loc[seeds, m], paired=True) for m in METRICS}
    return out


def ablation_table(results: Mapping[str, SeedRuns], reference: str | None = None) -> pd.DataFrame:
    """Rows: metrics; per variant (top column level) the mean [95% CI] over seeds and, for each ablation, the paired
    difference from ``reference`` with its p-value and whether the ablation is better, worse or not established."""
    names = list(results)
    reference = reference or names[0]
    diffs = ablation_differences(results, reference)
    per_seed = {name: per_seed_metrics(runs) for name, runs in results.items()}
    rows = {}
    for m, label in METRICS.items():
        k = digits(m)
        row = {}
        for name in names:
            row[(name, "mean [95% CI]")] = interval(estimate(per_seed[name][m]), k)
            if name in diffs:
                row[(name, f"minus {reference}, p")] = brief(diffs[name][m], k)
                row[(name, "is")] = judged(diffs[name][m], m)
        rows[label + (" (%)" if m in PERCENT else "")] = row
    return pd.DataFrame(rows).T


def ablation_headline(results: Mapping[str, SeedRuns], reference: str | None = None) -> str:
    """One sentence per ablation: the metrics on which it differs from ``reference`` beyond seed noise, or none."""
    names = list(results)
    reference = reference or names[0]
    sentences = []
    for name, diffs in ablation_differences(results, reference).items():
        better = [METRICS[m] for m, d in diffs.items() if judged(d, m) == "better"]
        worse = [METRICS[m] for m, d in diffs.items() if judged(d, m) == "worse"]
        n = next(iter(diffs.values())).n
        subject = f"The model {name}" if name.startswith("without") else name
        if not better and not worse:
            sentences.append(f"{subject} differs from {reference} on none of the {len(diffs)} metrics beyond seed "
                             f"noise ({n} paired seeds).")  # fmt: skip
        else:
            found = ([f"better on {_and(better)}"] if better else []) + ([f"worse on {_and(worse)}"] if worse else [])
            sentences.append(f"{subject} is {' and '.join(found)} than {reference} beyond seed noise ({n} paired "
                             "seeds).")  # fmt: skip
    return " ".join(sentences)


def ablation_verdict(results: Mapping[str, SeedRuns], reference: str | None = None) -> str:
    """For each ablation: the metrics on which it is better or worse than ``reference`` beyond seed noise
    (paired over the same seeds), and those on which the difference is not established."""
    names = list(results)
    reference = reference or names[0]
    sentences = []
    for name, diffs in ablation_differences(results, reference).items():
        groups: dict[str, list[str]] = {"better": [], "worse": [], "not established": []}
        for m, d in diffs.items():
            groups[judged(d, m)].append(f"{METRICS[m]} {brief(d, digits(m))}")
        n = next(iter(diffs.values())).n
        parts = []
        if groups["worse"]:
            parts.append(f"worse than {reference} on {_listed(groups['worse'])}")
        if groups["better"]:
            parts.append(f"better on {_listed(groups['better'])}")
        if groups["not established"]:
            lead = "not distinguishable from it" if parts else f"not distinguishable from {reference}"
            parts.append(f"{lead} on {_listed(groups['not established'])}")
        subject = f"the model {name}" if name.startswith("without") else name
        sentences.append(f"Over {n} paired seeds, {subject} is " + "; ".join(parts) + ".")
    established = any(d.settled for diffs in ablation_differences(results, reference).values() for d in diffs.values())
    if not established:
        sentences.append(f"No ablation's effect is established at this size on any metric; {SETTLE} would tell "
                         "whether these losses matter here.")  # fmt: skip
    return " ".join(sentences)
