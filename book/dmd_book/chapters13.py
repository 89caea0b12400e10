"""What chapters 1-3 (data, decoupling, graph distillation) compute, say and draw beyond the shared helpers.

* Chapter 1: :func:`~dmd_core.analysis.probe_predictions` (the test predictions of :func:`dmd_core.analysis.unimodal_probes`'s
  ridge probes), :func:`bootstrap_difference` (a metric difference between two predictors on the same test
  samples, with its paired bootstrap interval), :func:`write_baseline` / :func:`read_baseline` (the
  all-modality probe as the bar DMD must clear, ``<work_dir>/baseline.json``, which chapters 4 and 6 read).
* Chapter 2: :func:`seed_models` (every seed's network before and after training),
  :func:`decoupling_losses`, :func:`similarities`, :func:`planted_factors` and :func:`factor_probes` (the
  synthetic file's planted factors read back from the shared and private features), the sentences
  :func:`loss_sentences` and :func:`factor_sentences`.
* Chapter 3: :func:`edge_terms` (one sample's six distillation terms).

Their figures are in :mod:`dmd_book.plots` with the others.

Every sentence is built from per-seed numbers with :mod:`dmd_book.stats` (effect, 95% interval, seeds), and says
"not established" where the interval contains zero. The method is on the book's method page (book/method.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dmd_core.analysis import (
    MODALITY_NAMES,
    decoupled_features,
    probe_predictions,  # noqa: F401  (chapter 1 calls it from here)
)
from dmd_core.config import MODALITIES
from dmd_core.distill import EDGE_NAMES, STUDENTS, TEACHERS
from dmd_core.metrics import regression_metrics

from . import stats

if TYPE_CHECKING:
    from dmd_core.data import MMSADataset, Split
    from dmd_core.model import DMD
    from dmd_core.runs import SeedRuns

BASELINE_FILE = "baseline.json"
BASELINE_METRICS = ("MAE", "Corr", "Non0_acc_2", "Non0_F1_score", "Mult_acc_7")
METRIC_LABELS = {"MAE": "MAE", "Corr": "Corr", "Non0_acc_2": "Acc-2", "Non0_F1_score": "F1", "Mult_acc_7": "Acc-7"}


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "\u2212")


# --------------------------------------------------------------------------- chapter 1: the probes and the bar


@dataclass(frozen=True)
class SampleDifference:
    """``metric(a) - metric(b)`` on the same test samples, with a 95% paired bootstrap interval over them."""

    metric: str
    effect: float
    lo: float
    hi: float
    n: int

    @property
    def settled(self) -> bool:
        """Whether the interval excludes 0."""
        return self.lo > 0 or self.hi < 0

    def text(self, digits: int = 3, samples: bool = True) -> str:
        """``"−0.105 [−0.131, −0.080], 343 test samples"`` (``samples=False``: without the count)."""
        lo, hi = _signed(self.lo, digits), _signed(self.hi, digits)
        return f"{_signed(self.effect, digits)} [{lo}, {hi}]" + (f", {self.n} test samples" if samples else "")


def _metric(metric: str, p: np.ndarray, t: np.ndarray) -> float:
    """One metric of :func:`~dmd_core.metrics.regression_metrics`, unrounded, without computing the others."""
    from dmd_core import metrics as mm

    if metric == "MAE":
        return float(np.mean(np.abs(p - t)))
    if metric == "Corr":
        return mm.pearson(p, t)
    if metric == "Mult_acc_7":
        return mm.multiclass_acc(np.clip(p, -3.0, 3.0), np.clip(t, -3.0, 3.0))
    if metric in ("Non0_acc_2", "Non0_F1_score"):
        keep = t != 0
        score = mm.binary_accuracy if metric == "Non0_acc_2" else mm.weighted_f1
        return score(t[keep] > 0, p[keep] > 0)
    raise ValueError(f"bootstrap_difference: metric must be one of {BASELINE_METRICS}, found {metric!r}")


def bootstrap_difference(a: np.ndarray, b: np.ndarray, labels: np.ndarray, metric: str = "MAE",
                         resamples: int = 2000, seed: int = 0, scale: float = 1.0) -> SampleDifference:  # fmt: skip
    """How much better or worse predictor ``a`` scores than ``b`` on ``metric`` (``scale`` x the
    :func:`~dmd_core.metrics.regression_metrics` value, e.g. 100 for accuracies in %), with the 2.5 and 97.5
    percentiles of the difference over ``resamples`` resamples of the test samples (both predictors on the same
    resampled samples: a paired bootstrap). The interval is about the test split's size, not about seeds: a
    probe has none."""
    a, b, y = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b, labels))
    if not (a.shape == b.shape == y.shape):
        raise ValueError(f"bootstrap_difference: expected equal lengths, found {a.shape}, {b.shape}, {y.shape}")
    effect = scale * (_metric(metric, a, y) - _metric(metric, b, y))
    package = regression_metrics(a, y, round_to=None)[metric] - regression_metrics(b, y, round_to=None)[metric]
    if not math.isclose(effect, scale * package, rel_tol=1e-9, abs_tol=1e-12):
        raise AssertionError(f"bootstrap_difference: {metric} {effect} differs from regression_metrics' {package}")
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        draws[i] = scale * (_metric(metric, a[idx], y[idx]) - _metric(metric, b[idx], y[idx]))
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return SampleDifference(metric, effect, float(lo), float(hi), len(y))


def ranking_sentence(predictions: Mapping[str, np.ndarray], labels: np.ndarray, order: Sequence[str],
                     metrics: Sequence[str] = ("MAE", "Non0_acc_2")) -> str:  # fmt: skip
    """Whether each modality in ``order`` (best first) beats the next one beyond the test split's noise, on each
    of ``metrics`` (:func:`bootstrap_difference`; accuracies in points of %)."""
    clauses = []
    for better, worse in zip(order[:-1], order[1:]):
        diffs = []
        for metric in metrics:
            scale, digits = (1.0, 3) if metric in ("MAE", "Corr") else (100.0, 1)
            d = bootstrap_difference(predictions[better], predictions[worse], labels, metric, scale=scale)
            lower_better = metric == "MAE"
            ahead = d.settled and (d.effect < 0) == lower_better
            verdict = "ahead" if ahead else "behind" if d.settled else "not separated"
            diffs.append(f"{METRIC_LABELS.get(metric, metric)} {d.text(digits, samples=False)} ({verdict})")
        clauses.append(f"{MODALITY_NAMES[better].capitalize()} minus {MODALITY_NAMES[worse]}: {'; '.join(diffs)}")
    n = len(np.asarray(labels).ravel())
    return ". ".join(clauses) + f" (95% intervals over resamples of the {n} test samples)."


def write_baseline(work_dir: str | Path, metrics: Mapping[str, float], predictions: np.ndarray,
                   data_file: str | Path) -> Path:  # fmt: skip
    """``<work_dir>/baseline.json``: the all-modality ridge probe's test metrics (:data:`BASELINE_METRICS`, as
    :func:`~dmd_core.metrics.regression_metrics` gives them: accuracies and F1 as fractions), ``n_test``, its
    test ``predictions`` (in the split's order, for paired comparisons) and the data file's name."""
    from dmd_core.runs import write_json

    record: dict[str, Any] = {k: float(metrics[k]) for k in BASELINE_METRICS}
    record.update(n_test=int(len(predictions)), predictions=[float(p) for p in np.asarray(predictions).ravel()],
                  data_file=Path(data_file).name,
                  model="ridge regression on the time-pooled features of all three modalities (chapter 1)")  # fmt: skip
    return write_json(Path(work_dir) / BASELINE_FILE, record)


def read_baseline(work_dir: str | Path) -> dict[str, Any]:
    """The record of :func:`write_baseline`; a clear error when chapter 1 has not written it or a key is missing."""
    path = Path(work_dir) / BASELINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; chapter 1 (notebooks/01_data.ipynb) writes it")
    record = json.loads(path.read_text())
    missing = [k for k in (*BASELINE_METRICS, "n_test") if k not in record]
    if missing:
        raise ValueError(f"{path}: expected the fields {list(BASELINE_METRICS) + ['n_test']}, missing {missing}")
    return record


# --------------------------------------------------------------------------- chapter 2: decoupling over seeds


def seed_models(seed_runs: SeedRuns, config: Any) -> dict[int, dict[str, DMD]]:
    """Every seed's network before training (the initial weights its run started from: the trainer seeds
    everything with the run's seed, then builds the model) and after (the best-validation weights)."""
    from dmd_core import DMD, load_model
    from dmd_core.rng import seed_everything

    out = {}
    for seed, run in sorted(seed_runs.runs.items()):
        seed_everything(seed)
        out[seed] = {"untrained": DMD(config).eval(), "trained": load_model(run, "best")}
    return out


@torch.no_grad()
def decoupling_losses(model: DMD, split: Split, batch_size: int = 64) -> dict[str, float]:
    """The four decoupling losses on a whole split (sample-weighted means over its batches), the size of what
    the decoder reconstructs (``x size``: the mean square of :math:`x_m`, summed over modalities) and the
    reconstruction loss relative to it (``relative reconstruction``: 1 for a decoder that outputs zeros)."""
    from dmd_core.losses import cycle_loss, margin_loss, orthogonality_loss, reconstruction_loss

    sums: dict[str, float] = {}
    n = 0
    for batch in split.batches(batch_size):
        d = model.decouple(batch.text, batch.audio, batch.vision)
        sim = torch.stack([d.shared_sim[m] for m in MODALITIES])
        values = {
            "reconstruction": reconstruction_loss(d), "cycle": cycle_loss(d), "margin": margin_loss(sim, batch.labels),
            "orthogonality (published)": orthogonality_loss(d, "batch"),
            "orthogonality (paper)": orthogonality_loss(d, "feature"),
            "x size": sum(d.x[m].float().pow(2).mean() for m in MODALITIES),
        }  # fmt: skip
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(batch.labels)
        n += len(batch.labels)
    out = {key: value / n for key, value in sums.items()}
    out["relative reconstruction"] = out["reconstruction"] / out["x size"]
    return out


def objective_shares(seed_runs: SeedRuns, config: Any) -> pd.DataFrame:
    """Per seed, at its best-validation epoch: the mean training loss parts of that epoch weighted as the
    objective weights them (task, the two GD-Units, the decoupling terms ``w_dec (cycle + recon) +
    w_dec w_sim (margin + ort)``) and each one's share of the total. Checks that they add up to the total the
    trainer logged."""
    rows = {}
    for seed, run in sorted(seed_runs.runs.items()):
        h = run.history.set_index("epoch").loc[int(run.test_metrics["best_epoch"])]
        w_dec, w_sim = config.decouple_weight, config.sim_weight
        parts = {"task": h["train_task"], "graph distillation": h["train_homo_gd"] + h["train_hetero_gd"],
                 "decoupling": w_dec * (h["train_cycle"] + h["train_recon"])
                 + w_dec * w_sim * (h["train_margin"] + h["train_ort"])}  # fmt: skip
        total = float(sum(parts.values()))
        if not math.isclose(total, float(h["train_total"]), rel_tol=1e-4):
            raise AssertionError(f"seed {seed}: the weighted parts add up to {total}, the logged total is "
                                 f"{h['train_total']}")  # fmt: skip
        rows[seed] = {**{k: float(v) for k, v in parts.items()}, **{f"{k} share": float(v) / total
                                                                     for k, v in parts.items()}}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def _cross_modal(features: Mapping[str, torch.Tensor], kind: str) -> float:
    """Mean over the three pairs of modalities of the per-sample cosine between ``<kind>_m`` features."""
    pairs = [(a, b) for i, a in enumerate(MODALITIES) for b in MODALITIES[i + 1 :]]
    return float(np.mean([F.cosine_similarity(features[f"{kind}_{a}"], features[f"{kind}_{b}"], dim=1).mean()
                          for a, b in pairs]))  # fmt: skip


def similarities(model: DMD, split: Split, max_samples: int = 512) -> dict[str, float]:
    """How alike the modalities' features are (mean cosine over samples and the three pairs of modalities):
    the time-averaged shared and private features, and the projection of the shared features that the margin
    loss compares (:func:`dmd_core.analysis.decoupled_features`, ``view="projected"``)."""
    pooled = decoupled_features(model, split, max_samples=max_samples)
    projected = decoupled_features(model, split, max_samples=max_samples, view="projected")
    return {"shared": _cross_modal(pooled, "c"), "private": _cross_modal(pooled, "s"),
            "shared, margin projection": _cross_modal(projected, "c")}  # fmt: skip


def planted_factors(ds: MMSADataset, split: str) -> dict[str, np.ndarray]:
    """The factors the synthetic file planted in ``split`` (:mod:`dmd_core.data.synth`): the sentiment factor
    ``z`` (shared by all modalities) and each modality's private factors ``f_m`` (``(N, K)``, no label
    information). A clear error for a file without them (real data)."""
    info = ds.extra.get("synth")
    if not info or "latent" not in info:
        raise ValueError(f"{ds.path}: no planted factors (key 'synth' -> 'latent'): not a synthetic file")
    latent = info["latent"][split]
    exclusive = np.asarray(latent["exclusive"], dtype=np.float64)
    out = {"sentiment": np.asarray(latent["factor"], dtype=np.float64)}
    out.update({f"private {m}": exclusive[:, i, :] for i, m in enumerate(MODALITIES)})
    return out


def _probe_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out R^2 of a ridge probe (standardised features, cross-validated penalty), averaged over the
    columns of ``y`` (one factor or several)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train, y_test = y_train.reshape(len(y_train), -1), y_test.reshape(len(y_test), -1)
    scores = []
    for k in range(y_train.shape[1]):
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13))).fit(x_train, y_train[:, k])
        residual = y_test[:, k] - probe.predict(x_test)
        scores.append(1 - residual.var() / y_test[:, k].var())
    return float(np.mean(scores))


def _variance_share(x: np.ndarray, factors: np.ndarray) -> float:
    """The share of the features' total variance (summed over their dimensions) that a least-squares fit on
    ``factors`` explains: how much of the space the factors occupy."""
    x = x - x.mean(0)
    f = factors.reshape(len(factors), -1)
    f = np.column_stack([f - f.mean(0), np.ones(len(f))])
    coef, *_ = np.linalg.lstsq(f, x, rcond=None)
    return float(1 - ((x - f @ coef) ** 2).sum() / (x**2).sum())


def factor_probes(model: DMD, ds: MMSADataset, max_samples: int = 100_000) -> pd.DataFrame:
    """The planted factors read back from each modality's shared ``c_m`` and private ``s_m`` features
    (time-averaged), one row per space (``c_L``, ``s_L``, ...):

    * ``R2 sentiment``, ``R2 private``: held-out R^2 of linear probes trained on the train split and scored on
      the test split (what a linear read-out can recover), for the sentiment factor and the modality's own
      private factors (the mean over them);
    * ``share sentiment``, ``share private``: the share of the space's variance on the test split that the
      factor (the modality's own private factors together) explains (how much of the space it occupies).
    """
    train = decoupled_features(model, ds["train"], max_samples=max_samples)
    test = decoupled_features(model, ds["test"], max_samples=max_samples)
    n_train, n_test = len(train["c_L"]), len(test["c_L"])
    f_train = {k: v[:n_train] for k, v in planted_factors(ds, "train").items()}
    f_test = {k: v[:n_test] for k, v in planted_factors(ds, "test").items()}
    rows = {}
    for m in MODALITIES:
        for kind in ("c", "s"):
            xtr, xte = train[f"{kind}_{m}"].numpy(), test[f"{kind}_{m}"].numpy()
            rows[f"{kind}_{m}"] = {
                "R2 sentiment": _probe_r2(xtr, f_train["sentiment"], xte, f_test["sentiment"]),
                "R2 private": _probe_r2(xtr, f_train[f"private {m}"], xte, f_test[f"private {m}"]),
                "share sentiment": _variance_share(xte, f_test["sentiment"]),
                "share private": _variance_share(xte, f_test[f"private {m}"]),
            }
    return pd.DataFrame.from_dict(rows, orient="index")


def per_seed(frames: Mapping[int, Mapping[str, Any]]) -> pd.DataFrame:
    """``{seed: {state: record}}`` (records: dicts or one-row-per-space frames) as one frame indexed by seed,
    with columns ``(state, name)`` (frames are flattened to ``"<row> <column>"``)."""
    rows = {}
    for seed, states in frames.items():
        row = {}
        for state, record in states.items():
            if isinstance(record, pd.DataFrame):
                record = {f"{i} {c}": record.loc[i, c] for i in record.index for c in record.columns}
            row.update({(state, k): float(v) for k, v in record.items()})
        rows[seed] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def interval_table(frame: pd.DataFrame, names: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """For each name: the untrained and trained means over seeds and the paired change with its 95% interval
    (:func:`dmd_book.stats.moved`), as text."""
    rows = {}
    for name in names:
        before, after = frame[("untrained", name)].to_numpy(), frame[("trained", name)].to_numpy()
        rows[name] = {"untrained": f"{before.mean():.{digits}f}", "trained": f"{after.mean():.{digits}f}",
                      "change [95% interval], seeds": stats.moved(before, after).text(digits)}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def _change(d: stats.Difference, digits: int, up: str = "rose", down: str = "fell") -> str:
    if not math.isfinite(d.lo):
        return f"changed by {d.text(digits)} (too few seeds to tell)"
    if not d.settled:
        return f"did not move beyond its noise ({d.text(digits)})"
    return f"{up if d.effect > 0 else down} ({d.text(digits)})"


def _verdict(d: stats.Difference) -> str:
    return "rose" if d.settled and d.effect > 0 else "fell" if d.settled else "did not move beyond their noise"


def loss_sentences(frame: pd.DataFrame, digits: int = 3) -> str:
    """What training did to each decoupling loss on the test split, grouped by verdict, and to the size of
    :math:`x_m` and the relative reconstruction error."""
    groups: dict[str, list[str]] = {}
    for name in ("reconstruction", "cycle", "orthogonality (published)", "orthogonality (paper)", "margin"):
        d = stats.moved(frame[("untrained", name)], frame[("trained", name)])
        groups.setdefault(_verdict(d), []).append(f"{name} ({d.text(digits)})")
    text = "From the untrained to the trained networks, " + "; ".join(
        f"these losses {verdict}: {', '.join(items)}" if len(items) > 1 else f"this loss {verdict}: {items[0]}"
        for verdict, items in groups.items()
    ) + ". "  # fmt: skip
    size = stats.moved(frame[("untrained", "x size")], frame[("trained", "x size")])
    rel = stats.moved(frame[("untrained", "relative reconstruction")], frame[("trained", "relative reconstruction")])
    ratio = frame[("trained", "x size")].mean() / frame[("untrained", "x size")].mean()
    text += (f"The mean square of the projection $x_m$, which the decoder must give back, "
             f"{_change(size, digits)}, ending at {ratio:.1f} times its initial value; the reconstruction error "
             f"relative to it {_change(rel, digits)}.")  # fmt: skip
    return text


def similarity_sentences(frame: pd.DataFrame, digits: int = 3) -> str:
    """Whether training brought the modalities' shared features closer together than their private ones."""
    moved = {k: stats.moved(frame[("untrained", k)], frame[("trained", k)])
             for k in ("shared", "private", "shared, margin projection")}  # fmt: skip
    gap = stats.difference(frame[("trained", "shared")] - frame[("untrained", "shared")],
                           frame[("trained", "private")] - frame[("untrained", "private")], paired=True)  # fmt: skip
    text = (f"Averaged over time, the similarity of different modalities' shared features "
            f"{_change(moved['shared'], digits)}, that of their private features {_change(moved['private'], digits)};"
            f" the shared minus the private change is {gap.text(digits)}")  # fmt: skip
    text += (": that the shared features moved closer together than the private ones is not established at this "
             "size (more seeds, `seeds`, or paper scale would settle it). " if not gap.settled else
             (". The shared features moved closer together than the private ones. " if gap.effect > 0 else
              ". The private features moved closer together than the shared ones. "))  # fmt: skip
    proj = moved["shared, margin projection"]
    text += f"In the projection that the margin loss compares, the similarity {_change(proj, digits)}"
    text += (": that is where the margin loss makes the shared space shared." if proj.settled and proj.effect > 0
             else ".")  # fmt: skip
    return text


def factor_sentences(frame: pd.DataFrame, digits: int = 2) -> str:
    """What decoupling recovered of the planted factors and what it did not (columns of :func:`per_seed` of
    :func:`factor_probes`)."""

    def col(state: str, space: str, name: str) -> pd.Series:
        return frame[(state, f"{space} {name}")]

    same = stats.difference(col("trained", "c_L", "R2 sentiment"), col("trained", "s_L", "R2 sentiment"), paired=True)
    grew_c = stats.moved(col("untrained", "c_L", "share sentiment"), col("trained", "c_L", "share sentiment"))
    grew_s = stats.moved(col("untrained", "s_L", "share sentiment"), col("trained", "s_L", "share sentiment"))
    gap = stats.difference(col("trained", "c_L", "share sentiment"), col("trained", "s_L", "share sentiment"),
                           paired=True)  # fmt: skip
    r2 = (
        f"held-out R² {col('trained', 'c_L', 'R2 sentiment').mean():.{digits}f} from $c_L$, "
        f"{col('trained', 's_L', 'R2 sentiment').mean():.{digits}f} from $s_L$; difference {same.text(digits)}"
    )
    text = (f"A linear probe reads the sentiment factor as well from language's private features as from its "
            f"shared ones ({r2}). " if not same.settled else
            f"A linear probe reads the sentiment factor {'better' if same.effect > 0 else 'worse'} from language's "
            f"shared features than from its private ones ({r2}). ")  # fmt: skip
    text += (f"How much of each space the factor occupies is another matter: from the untrained to the trained "
             f"networks its share of the variance of $c_L$ {_change(grew_c, digits)}, and of $s_L$ "
             f"{_change(grew_s, digits)}. After training, the share in $c_L$ minus the share in $s_L$ is "
             f"{gap.text(digits)}")  # fmt: skip
    shares = (
        f"{col('trained', 'c_L', 'share sentiment').mean():.{digits}f} against "
        f"{col('trained', 's_L', 'share sentiment').mean():.{digits}f}"
    )
    text += (f" ({shares}): a preference of the shared space for sentiment is not established at this size. "
             if not gap.settled else f" ({shares}): the {'shared' if gap.effect > 0 else 'private'} space holds more "
             "of it. ")  # fmt: skip
    private, routed = [], []
    for m in ("V", "A"):
        d = stats.difference(col("trained", f"s_{m}", "share private"), col("trained", f"c_{m}", "share private"),
                             paired=True)  # fmt: skip
        private.append(f"{MODALITY_NAMES[m]} {d.text(digits)}")
        routed.append(d.settled and d.effect > 0)
    text += (f"And the private factors of vision and audio: their share of $s_m$ minus their share of $c_m$ is "
             f"{' and '.join(private)}, ")  # fmt: skip
    text += ("so decoupling routed them to the private features in both." if all(routed) else
             "so neither was routed to the private features beyond the seeds' noise." if not any(routed) else
             f"so only {MODALITY_NAMES['VA'[routed.index(True)]]}'s were routed to the private features.")  # fmt: skip
    return text


def decoupling_takeaway(similarity: pd.DataFrame, factors: pd.DataFrame) -> dict[str, str]:
    """What decoupling recovered at this size and what it did not, from :func:`similarities` and
    :func:`factor_probes` over seeds (:func:`per_seed` frames): ``{"paragraph", "similarity", "factors"}``, the
    chapter's closing paragraph and its two summary bullets. Only changes whose interval excludes 0 count."""

    def moved(frame: pd.DataFrame, name: str) -> stats.Difference:
        return stats.moved(frame[("untrained", name)], frame[("trained", name)])

    projection = moved(similarity, "shared, margin projection")
    pooled = stats.difference(similarity[("trained", "shared")] - similarity[("untrained", "shared")],
                              similarity[("trained", "private")] - similarity[("untrained", "private")],
                              paired=True)  # fmt: skip
    grew = moved(factors, "c_L share sentiment")
    gap = stats.difference(factors[("trained", "c_L share sentiment")], factors[("trained", "s_L share sentiment")],
                           paired=True)  # fmt: skip
    routed = {m: stats.difference(factors[("trained", f"s_{m} share private")],
                                  factors[("trained", f"c_{m} share private")], paired=True) for m in ("V", "A")}  # fmt: skip
    recovered, missed = [], []
    if projection.settled and projection.effect > 0:
        recovered.append("in the projection that the margin loss compares, the modalities' shared features came "
                         "together")  # fmt: skip
    else:
        missed.append("the modalities' shared features did not come together beyond their noise, not even in the "
                      "projection that the margin loss compares")  # fmt: skip
    if not (pooled.settled and pooled.effect > 0):
        missed.append("averaged over time, the shared features did not move closer together than the private ones")
    if grew.settled and grew.effect > 0:
        recovered.append(f"training made the sentiment factor occupy more of language's shared features (its share "
                         f"of their variance changed by {grew.text(2)})")  # fmt: skip
    if gap.settled and gap.effect > 0:
        recovered.append("language's shared features hold more of the sentiment factor than its private ones")
    else:
        missed.append(f"language's private features hold about as much of the sentiment factor as its shared ones "
                      f"(share in $c_L$ minus share in $s_L$: {gap.text(2)})")  # fmt: skip
    sent = [MODALITY_NAMES[m] for m, d in routed.items() if d.settled and d.effect > 0]
    kept = [MODALITY_NAMES[m] for m, d in routed.items() if not (d.settled and d.effect > 0)]
    if sent:
        recovered.append(f"the private factors of {' and '.join(sent)} occupy more of the private than of the shared "
                         "features")  # fmt: skip
    if kept:
        missed.append(f"the private factors of {' and '.join(kept)} were not sent to the private features beyond the "
                      "seeds' noise")  # fmt: skip
    paragraph = "At this size, decoupling recovered this much of what the paper asks of it: "
    paragraph += ("; ".join(recovered) if recovered else "nothing that stands out of the seeds' noise") + ". "
    if missed:
        paragraph += "It did not achieve the rest: " + "; ".join(missed) + "."
    similarity_bullet = (f"The similarity of different modalities' shared features in the margin loss's projection "
                         f"changed by {projection.text(3)}; averaged over time, the shared minus the private change "
                         f"is {pooled.text(3)}.")  # fmt: skip
    factors_bullet = (f"The sentiment factor's share of $c_L$ minus its share of $s_L$ is {gap.text(2)}; the private "
                      "factors' share of $s_m$ minus that of $c_m$ is "
                      + " and ".join(f"{MODALITY_NAMES[m]} {d.text(2)}" for m, d in routed.items()) + ".")  # fmt: skip
    return {"paragraph": paragraph, "similarity": similarity_bullet, "factors": factors_bullet}


# --------------------------------------------------------------------------- chapter 3: one sample's GD-Unit


def edge_terms(logits: torch.Tensor, edges: torch.Tensor, prior: torch.Tensor, sample: int = 0) -> pd.DataFrame:
    """One sample's six logit-distillation terms by hand: for edge ``k = i -> j`` the weight ``w + pi`` times
    the distance ``|logit_j - logit_i|`` (``logits (3, B, 1)``, ``edges (6, B)``, ``prior (6,)``)."""
    rows = {}
    for k, name in enumerate(EDGE_NAMES):
        teacher, student = TEACHERS[k], STUDENTS[k]
        w, p = float(edges[k, sample]), float(prior[k])
        gap = abs(float(logits[student, sample, 0]) - float(logits[teacher, sample, 0]))
        rows[name] = {"teacher": MODALITIES[teacher], "student": MODALITIES[student], "w": w, "prior": p,
                      "w + prior": w + p, "|logit gap|": gap, "term": (w + p) * gap}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")
