"""The comparisons behind chapter 5: the GD-Units' edges over seeds, and the sentences drawn from them.

Each edge weight is read per seed from the tested model (best-validation weights, mean over the test
samples: :func:`dmd_core.analysis.seed_edges`). An edge's ordering or its correlation with anything is
interpreted only where the edges moved beyond their seed noise from the uniform start 1/6
(:func:`dmd_book.stats.moved`); otherwise the sentence reports a null result and says it is not
established at this size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dmd_core.analysis import BRANCH_TITLES, MODALITY_NAMES, edges_by_class, prediction_edges
from dmd_core.config import MODALITIES
from dmd_core.distill import EDGE_NAMES

from .evidence import SETTLE, _and, _listed, brief, interval
from .stats import Difference, difference, estimate, moved, permutation_spearman

if TYPE_CHECKING:
    from dmd_core.runs import SeedRuns

START = 1 / 6  # every edge of a GD-Unit starts near the uniform graph
# Six edges are tested at once against 1/6: an edge counts as moved when its p-value is below 0.05 / 6
# (Bonferroni), so that a unit whose edges only wobble is declared moved by chance at most 5% of the time.
MOVE_LEVEL = 0.05 / 6
UNIFORM_SHARE = 1 / 3  # a modality's teacher share in the uniform graph
# The pattern of the paper's edge figure: the edges that grow in each unit.
PAPER_PATTERN = {"HomoGD": ("L->A", "L->V"), "HeteroGD": ("L->A", "L->V", "V->A")}


def arrow(edge: str) -> str:
    return edge.replace("->", "\u2192")


def edge_moves(edges: pd.DataFrame, start: float = START) -> pd.DataFrame:
    """Per edge (rows): the mean over seeds with its 95% interval, the change from ``start`` (:func:`moved`,
    paired per seed) and its direction: ``"up"``, ``"down"`` or ``"not established"`` (``settled``: p below
    :data:`MOVE_LEVEL`, as six edges are tested at once).

    ``edges``: rows seeds, columns :data:`EDGE_NAMES` (e.g. :func:`dmd_core.analysis.seed_edges`).
    """
    rows = {}
    for edge in EDGE_NAMES:
        values = edges[edge].to_numpy(dtype=float)
        d = moved([start] * len(values), values)
        est = estimate(values)
        settled = bool(d.settled and np.isfinite(d.p) and d.p < MOVE_LEVEL)
        direction = "not established" if not settled else ("up" if d.effect > 0 else "down")
        rows[edge] = {"mean": est.mean, "lo": est.lo, "hi": est.hi, "change": d.effect, "p": d.p,
                      "settled": settled, "direction": direction, "text": d.text(3),
                      "interval": interval(est, 3)}  # fmt: skip
    return pd.DataFrame(rows).T.astype({"mean": float, "lo": float, "hi": float, "change": float, "settled": bool})


def moved_any(moves: pd.DataFrame) -> bool:
    """Whether any edge of the unit left ``START`` beyond its seed noise (p below :data:`MOVE_LEVEL`)."""
    return bool(moves["settled"].any())


def moves_display(moves: Mapping[str, pd.DataFrame], prior: Mapping[str, pd.Series] | None = None) -> pd.DataFrame:
    """Rows: edges; per unit the mean [95% CI] over seeds, whether it moved from 1/6 (with the p-value of the paired
    change, judged against :data:`MOVE_LEVEL`), and the prior."""
    columns = {}
    for title, frame in moves.items():
        columns[(title, "mean [95% CI]")] = [frame.loc[e, "interval"] for e in EDGE_NAMES]
        columns[(title, "moved from 1/6")] = [f"{frame.loc[e, 'direction']} ({_p(float(frame.loc[e, 'p']))})"
                                              for e in EDGE_NAMES]  # fmt: skip
        if prior is not None and title in prior:
            columns[(title, "prior")] = [f"{float(prior[title][e]):.3f}" for e in EDGE_NAMES]
    return pd.DataFrame(columns, index=[arrow(e) for e in EDGE_NAMES])


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "no interval"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def _edge_list(moves: pd.DataFrame, direction: str) -> list[str]:
    return [f"{arrow(e)} {moves.loc[e, 'interval']}" for e in EDGE_NAMES if moves.loc[e, "direction"] == direction]


def pattern_verdict(moves: Mapping[str, pd.DataFrame], n_seeds: int) -> str:
    """Which edges rose above and fell below 1/6 beyond seed noise in each unit, against the paper's pattern."""
    sentences = []
    for title, frame in moves.items():
        up, down = _edge_list(frame, "up"), _edge_list(frame, "down")
        ups = {e for e in EDGE_NAMES if frame.loc[e, "direction"] == "up"}
        paper = set(PAPER_PATTERN[title])
        if not up and not down:
            sentences.append(f"In {title} no edge left 1/6 beyond seed noise.")
            continue
        text = f"In {title}, {_listed(up) if up else 'no edge'} rose above 1/6"
        if down:
            text += f", and {_listed(down)} fell below it"
        if ups == paper:
            text += f": the paper's pattern ({_and([arrow(e) for e in sorted(paper)])} grow)"
        else:
            text += f"; the paper's figure has {_and([arrow(e) for e in sorted(paper)])} growing"
        sentences.append(text + ".")
    return f"Over {n_seeds} seeds (best-validation weights, test split): " + " ".join(sentences)


# --------------------------------------------------------------------------- teacher shares


def share_table(shares: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """Rows: runs; per unit and teacher, the share's mean [95% CI] over seeds (1/3 each in a uniform graph).

    ``shares``: run -> unit title -> :func:`dmd_core.analysis.teacher_shares` of its seeds.
    """
    rows = {}
    for run, units in shares.items():
        rows[run] = {(title, m): interval(estimate(frame[m]), 3) for title, frame in units.items() for m in MODALITIES}
    return pd.DataFrame(rows).T


def share_estimates(shares: Mapping[str, pd.DataFrame], teacher: str) -> pd.DataFrame:
    """Rows: the keys of ``shares`` (e.g. runs); columns ``mean``, ``lo``, ``hi`` of ``teacher``'s share over
    seeds (the input of :func:`dmd_book.plots.interval_panels`)."""
    rows = {}
    for name, frame in shares.items():
        est = estimate(frame[teacher])
        rows[name] = {"mean": est.mean, "lo": est.lo, "hi": est.hi}
    return pd.DataFrame(rows).T


def _share(values: Sequence[float]) -> str:
    return interval(estimate(values), 3)


def prior_verdict(paper: pd.Series, uniform: pd.Series, free: pd.Series, homo_free_moved: bool) -> str:
    """How much of language's HomoGD teacher share is the prior's: per-seed shares with the paper's prior, a
    uniform prior and none (same seeds, so the differences are paired)."""
    lead = moved([UNIFORM_SHARE] * len(paper), paper)
    if not (lead.settled and lead.effect > 0):
        return (f"With the paper's prior, language's HomoGD teacher share ({_share(paper)}) is not above 1/3 beyond "
                "seed noise, so there is no lead whose origin to ask about.")  # fmt: skip
    left = moved([UNIFORM_SHARE] * len(uniform), uniform)
    drop = difference(uniform, paper, paired=True)
    text = (f"Language's HomoGD teacher share is {_share(paper)} with the paper's prior and {_share(uniform)} with a "
            f"uniform prior (change {drop.text(3)}).")  # fmt: skip
    if not left.settled:
        text += (f" With a uniform prior it is not distinguishable from 1/3 (difference {brief(left, 3)}): none of "
                 "language's lead is established without the paper's prior, so at this size the pattern of the "
                 "edge figure is the prior's.")  # fmt: skip
    elif left.effect > 0:
        share = (float(np.mean(uniform)) - UNIFORM_SHARE) / (float(np.mean(paper)) - UNIFORM_SHARE)
        text += (f" A part of the lead survives a uniform prior ({brief(left, 3)} above 1/3, about {100 * share:.0f}% "
                 "of the excess the paper's prior gives).")  # fmt: skip
    else:
        text += f" With a uniform prior language's share falls below 1/3 (difference {brief(left, 3)})."
    if homo_free_moved:
        text += f" With no prior at all it is {_share(free)}."
    else:
        text += (f" With no prior at all HomoGD's edges do not leave 1/6 beyond seed noise (language's share "
                 f"{_share(free)}): nothing but the distillation losses moves them then, and in these runs that "
                 "is not enough to move them measurably.")  # fmt: skip
    return text


def collapse_verdict(language_share: Mapping[str, pd.Series], unit: str = "HeteroGD") -> str:
    """Language's teacher share in a unit without a prior, on each file (``{file label: per-seed shares}``):
    whether the unit drops language as a teacher (share below 1/3 beyond seed noise)."""
    parts, below = [], []
    for label, values in language_share.items():
        d = moved([UNIFORM_SHARE] * len(values), values)
        parts.append(f"{_share(values)} on the {label}")
        below.append(d.settled and d.effect < 0)
    numbers = _and(parts)
    if all(below):
        low = max(float(np.mean(v)) for v in language_share.values()) < 0.1
        shape = "collapses onto the vision\u2013audio pair" if low else "turns away from language"
        return (f"Without a prior, {unit} {shape}: language's teacher share is {numbers} (1/3 in the uniform "
                "graph), below 1/3 beyond seed noise on every file, whichever modality carries the signal. The "
                "unit then distils mostly between vision and audio.")  # fmt: skip
    if any(below):
        return (f"Without a prior, language's {unit} teacher share is {numbers}; it falls below 1/3 beyond seed "
                "noise on some files only.")  # fmt: skip
    return (f"Without a prior, language's {unit} teacher share is {numbers}: not below 1/3 beyond seed noise, so a "
            f"collapse of {unit} onto a vision\u2013audio pair is not established at this size ({SETTLE} would "
            "show whether it comes with longer training).")  # fmt: skip


# --------------------------------------------------------------------------- correlation with disagreement


def agreement_verdict(tables: Mapping[str, pd.DataFrame], moved_units: Mapping[str, bool], seeds: int,
                      permutations: int = 10_000) -> tuple[str, dict[str, tuple[float, float]]]:  # fmt: skip
    """The rank correlation between edge weight and logit disagreement per unit, tested only where the edges moved.

    ``tables``: unit -> the six edges' ``mean weight`` and ``mean |logit difference|`` (means over seeds).
    Returns the sentence and ``{unit: (rho, p)}`` for the units that were tested.
    """
    tested, clauses = {}, []
    for title, table in tables.items():
        if not moved_units.get(title, False):
            clauses.append(f"in {title} the edges did not leave 1/6 beyond seed noise, so their ordering, and any "
                           "correlation with it, is not established at this size")  # fmt: skip
            continue
        rho, p = permutation_spearman(table["mean weight"], table["mean |logit difference|"], permutations)
        tested[title] = (rho, p)
        if not np.isfinite(rho):
            clauses.append(f"in {title} the weights or the disagreements are all equal: no ordering to correlate")
        elif p < 0.05:
            sense = "agree more" if rho < 0 else "disagree more"
            clauses.append(f"in {title} the heavier edges join modalities that {sense} (Spearman's rho {rho:+.2f}, "
                           f"permutation p = {p:.3f}, 6 edges)")  # fmt: skip
        else:
            clauses.append(f"in {title} a relation is not established (Spearman's rho {rho:+.2f}, permutation "
                           f"p = {p:.2f}, 6 edges)")  # fmt: skip
    if not tested and len(tables) > 1:  # no unit moved: say it once
        clauses = ["in neither unit did the edges leave 1/6 beyond seed noise, so their ordering, and any correlation "
                   "with it, is not established at this size"]  # fmt: skip
    return f"Over {seeds} seeds without a prior: " + "; ".join(clauses) + ".", tested


# --------------------------------------------------------------------------- edges per group of samples


def seed_group_edges(seed_runs: SeedRuns, groups: pd.Series, branch: str) -> dict[object, pd.DataFrame]:
    """Per group value (e.g. sentiment class, or incongruent / congruent), the mean edges per seed (rows: seeds).

    ``groups``: a label per test sample id (index ``id``) or ``"class"`` for the three sentiment classes.
    """
    out: dict[object, dict[int, pd.Series]] = {}
    for seed, run in seed_runs.runs.items():
        preds = run.test_predictions
        if isinstance(groups, str):
            table = edges_by_class(preds, branch)[list(EDGE_NAMES)]
            for name, row in table.iterrows():
                out.setdefault(name, {})[seed] = row
            continue
        edges = prediction_edges(preds, branch)
        labels = groups.reindex(preds["id"].astype(str)).to_numpy()
        if pd.isna(labels).any():
            raise KeyError(f"seed_group_edges: {int(pd.isna(labels).sum())} test ids of seed {seed} have no group")
        for name in pd.unique(labels):
            out.setdefault(name, {})[seed] = edges[labels == name].mean()
    return {name: pd.DataFrame(rows).T[list(EDGE_NAMES)] for name, rows in out.items()}


def contrast(a: pd.DataFrame, b: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Per column (rows): the paired difference ``a - b`` over the seeds both hold: mean, interval, text, settled."""
    seeds = sorted(set(a.index) & set(b.index))
    rows = {}
    for c in columns:
        d: Difference = difference(a.loc[seeds, c], b.loc[seeds, c], paired=True)
        rows[c] = {
            "mean": d.effect,
            "lo": d.lo,
            "hi": d.hi,
            "settled": d.settled,
            "text": d.text(3),
            "brief": brief(d, 3),
        }
    return pd.DataFrame(rows).T.astype({"mean": float, "lo": float, "hi": float, "settled": bool})


def class_verdict(contrasts: Mapping[str, pd.DataFrame], seeds: int) -> str:
    """Which edges differ between positive and negative clips beyond seed noise (``contrasts``: unit -> the
    :func:`contrast` positive minus negative per edge)."""
    clauses = []
    for title, frame in contrasts.items():
        found = [f"{arrow(e)} {frame.loc[e, 'brief']}" for e in EDGE_NAMES if frame.loc[e, "settled"]]
        if found:
            clauses.append(f"in {title}, {_listed(found)} (positive minus negative)")
        else:
            widest = max(abs(float(frame.loc[e, "lo"])) if math.isfinite(float(frame.loc[e, "lo"])) else 0.0
                         for e in EDGE_NAMES)  # fmt: skip
            clauses.append(f"in {title} no edge (intervals reach \u00b1{widest:.3f})")
    text = f"Over {seeds} paired seeds, the edges that differ between positive and negative clips beyond seed noise: "
    text += "; ".join(clauses) + "."
    if not any(frame["settled"].any() for frame in contrasts.values()):
        text += f" Whether the graph depends on the sentiment is not established at this size ({SETTLE} would tell)."
    return text


def incongruent_verdict(contrasts: Mapping[str, pd.DataFrame], carrier: str, seeds: int) -> str:
    """Whether the teacher shares move on the incongruent samples (``contrasts``: label -> the :func:`contrast`
    incongruent minus the others per teacher), where the words mislead and ``carrier`` carries the sentiment."""
    clauses, any_settled = [], False
    for label, frame in contrasts.items():
        found = [f"{MODALITY_NAMES[m]} {frame.loc[m, 'brief']}" for m in MODALITIES if frame.loc[m, "settled"]]
        any_settled |= bool(found)
        if found:
            clauses.append(f"{label}: {_listed(found)}")
        else:
            clauses.append(f"{label}: no teacher share moves beyond seed noise")
    if not any_settled:  # one sentence for all settings instead of the same clause repeated
        clauses = [f"in none of the {len(contrasts)} settings ({_listed(list(contrasts))}) does a teacher share move "
                   "beyond seed noise"]  # fmt: skip
    text = (f"On the incongruent test samples, where the words express an unrelated sentiment and "
            f"{MODALITY_NAMES[carrier]} carries the true one, against the other samples (incongruent minus others, "
            f"{seeds} paired seeds): " + "; ".join(clauses) + ".")  # fmt: skip
    if not any_settled:
        text += (" A graph that routes knowledge per sample would give language less weight there; at this size "
                 f"that is not established ({SETTLE} would tell).")  # fmt: skip
    return text


# --------------------------------------------------------------------------- does the graph follow the data?


def follow_verdict(audio_share: Mapping[str, pd.Series], moved_units: Mapping[str, Mapping[str, bool]],
                   language_share_paper: pd.Series) -> str:  # fmt: skip
    """Whether audio's teacher share rises without a prior when audio carries the signal.

    ``audio_share``: ``"<unit>, language file"`` / ``"<unit>, audio file"`` -> per-seed audio shares (no prior);
    ``moved_units``: file -> unit -> whether the edges moved; ``language_share_paper``: language's HomoGD share
    per seed with the paper's prior on the audio file.
    """
    clauses, null = [], []
    for unit in BRANCH_TITLES.values():
        lang, audio = audio_share[f"{unit}, language file"], audio_share[f"{unit}, audio file"]
        if not moved_units["language file"][unit] and not moved_units["audio file"][unit]:
            null.append(f"{unit} {_share(lang)} and {_share(audio)}")
            clauses.append(f"in {unit} the free edges do not leave 1/6 beyond seed noise on either file (audio's "
                           f"share {_share(lang)} and {_share(audio)}): a null result, so this unit cannot say "
                           "whether the graph follows the data at this size")  # fmt: skip
            continue
        d = difference(audio, lang, paired=False)
        if d.settled:
            sense = "rises" if d.effect > 0 else "falls"
            clauses.append(f"in {unit} audio's teacher share {sense} when audio carries the signal ({_share(lang)} "
                           f"on the language file, {_share(audio)} on the audio file; difference {d.text(3)})")  # fmt: skip
        else:
            clauses.append(f"in {unit} a change of audio's teacher share is not established ({_share(lang)} on the "
                           f"language file, {_share(audio)} on the audio file; difference {d.text(3)})")  # fmt: skip
    if len(null) == len(clauses) > 1:  # every unit null: say it once
        clauses = [f"in neither unit do the free edges leave 1/6 beyond seed noise on either file (audio's share on "
                   f"the language and the audio file: {'; '.join(null)}): a null result, so neither unit can say "
                   "whether the graph follows the data at this size"]  # fmt: skip
    text = "Without a prior: " + "; ".join(clauses) + "."
    lead = moved([UNIFORM_SHARE] * len(language_share_paper), language_share_paper)
    if lead.settled and lead.effect > 0:
        text += (f" With the paper's prior, language keeps a HomoGD teacher share of {_share(language_share_paper)} "
                 "on the file where it is the weakest modality: there the prior, not the data, decides.")  # fmt: skip
    else:
        text += (f" With the paper's prior, language's HomoGD teacher share on that file is "
                 f"{_share(language_share_paper)}.")  # fmt: skip
    return text


def paper_lead(paper: pd.Series) -> bool:
    """Whether language's teacher share under the paper's prior is above 1/3 beyond seed noise."""
    d = moved([UNIFORM_SHARE] * len(paper), paper)
    return bool(d.settled and d.effect > 0)


def error_verdict(errors: pd.DataFrame, group: str = "incongruent", others: str = "others",
                  model: str = "the model") -> str:  # fmt: skip
    """Whether ``model``'s mean absolute error on ``group`` differs from the ``others`` (paired over seeds)."""
    d = difference(errors[group], errors[others], paired=True)
    numbers = (f"mean absolute error {interval(estimate(errors[group]), 3)} on the {group} samples and "
               f"{interval(estimate(errors[others]), 3)} on the {others} (difference {d.text(3)})")  # fmt: skip
    if not d.settled:
        return f"Whether these samples are harder for {model} is not established at this size: {numbers}."
    return f"These samples are {'harder' if d.effect > 0 else 'easier'} for {model}: {numbers}."


def lead_survives(paper: pd.Series, uniform: pd.Series) -> bool | None:
    """Whether language's teacher share stays above 1/3 beyond seed noise with a uniform prior (None: its change from
    1/3 is not established, or the paper's prior gave it no lead to begin with)."""
    lead = moved([UNIFORM_SHARE] * len(paper), paper)
    left = moved([UNIFORM_SHARE] * len(uniform), uniform)
    if not (lead.settled and lead.effect > 0) or not left.settled:
        return None
    return left.effect > 0


def collapsed(language_share: Mapping[str, pd.Series]) -> bool:
    """Whether language's teacher share is below 1/3 beyond seed noise on every file (see :func:`collapse_verdict`)."""
    return all((d := moved([UNIFORM_SHARE] * len(v), v)).settled and d.effect < 0 for v in language_share.values())


def follows(audio_share: Mapping[str, pd.Series], moved_units: Mapping[str, Mapping[str, bool]]) -> bool | None:
    """Whether audio's free teacher share rises on the audio file in some unit whose edges moved (None: no unit
    settles it; False: it falls), as :func:`follow_verdict` words it."""
    found: list[bool] = []
    for unit in BRANCH_TITLES.values():
        if not (moved_units["language file"][unit] or moved_units["audio file"][unit]):
            continue
        d = difference(audio_share[f"{unit}, audio file"], audio_share[f"{unit}, language file"], paired=False)
        if d.settled:
            found.append(d.effect > 0)
    if not found:
        return None
    return any(found)


def group_errors(seed_runs: SeedRuns, groups: pd.Series) -> pd.DataFrame:
    """Per seed (rows) and group (columns), the mean absolute error of the tested model's test predictions."""
    rows = {}
    for seed, run in seed_runs.runs.items():
        preds = run.test_predictions
        labels = groups.reindex(preds["id"].astype(str)).to_numpy()
        error = (preds["prediction"] - preds["label"]).abs().to_numpy()
        rows[seed] = {name: float(error[labels == name].mean()) for name in pd.unique(labels)}
    return pd.DataFrame(rows).T


# The sentence for each answer of :func:`follows`, in the summary and the takeaway alike.
FOLLOWS = {None: "Whether a free graph turns towards the modality that carries the signal is not established at this "
                 "size.",
           True: "A free graph turns towards audio when audio carries the signal.",
           False: "A free graph does not turn towards audio when audio carries the signal."}  # fmt: skip


def summary(paper: pd.Series, uniform: pd.Series, collapse: bool, follows: bool | None) -> tuple[str, ...]:
    """The chapter's summary, one short sentence per bullet, each with the comparison it rests on
    (language's HomoGD teacher share per seed with the paper's and a uniform prior; :func:`collapsed`;
    :func:`follows`). The full sentences, with every interval, stand in the sections above."""
    n = len(paper)
    if paper_lead(paper):
        first = (f"With the paper's prior, language leads as a teacher: its HomoGD share is {_share(paper)} against "
                 f"1/3 in the uniform graph ({n} seeds).")  # fmt: skip
        second = {None: f"With a uniform prior that lead is gone ({_share(uniform)}): at this size the edge figure "
                        "shows the prior.",
                  True: f"Part of the lead survives a uniform prior ({_share(uniform)}): the data favour language too.",
                  False: f"With a uniform prior language's share falls below 1/3 ({_share(uniform)})."
                  }[lead_survives(paper, uniform)]  # fmt: skip
    else:
        first = (f"Even with the paper's prior, language's HomoGD share ({_share(paper)}, {n} seeds) is not above 1/3 "
                 "beyond seed noise.")  # fmt: skip
        second = "So the comparison of priors says nothing at this size."
    third = ("Without a prior, HeteroGD drops language as a teacher on both files." if collapse else
             "Without a prior, a collapse of HeteroGD onto vision and audio is not established at this size.")  # fmt: skip
    return first, second, third, FOLLOWS[follows]


def takeaway(paper_lead: bool, prior_lead_survives: bool | None, collapse: bool, agreement_tested: bool,
             follows: bool | None) -> str:  # fmt: skip
    """The chapter's conclusion from its verdicts: ``paper_lead``, whether the paper's prior gave language a HomoGD
    lead beyond seed noise; then :func:`lead_survives`, :func:`collapsed`, whether any agreement correlation was
    tested, and :func:`follows` (None where the comparison was not established)."""
    parts = []
    if not paper_lead:
        parts.append("In these runs even the paper's prior did not give language a lead beyond seed noise, so the "
                     "comparison of priors says nothing at this size.")  # fmt: skip
    elif prior_lead_survives is None:
        parts.append("In these runs the paper's edge pattern is the prior's: with a uniform prior no lead of "
                     "language is established, so the edge figure shows what the regulariser imposes.")  # fmt: skip
    elif prior_lead_survives:
        parts.append("In these runs part of language's lead survives a uniform prior, so the data, not only the "
                     "prior, favour language as a teacher.")  # fmt: skip
    else:
        parts.append("In these runs language does not lead without the paper's prior.")
    if collapse:
        parts.append("Left without a prior, HeteroGD drops language as a teacher on both files and distils between "
                     "vision and audio: a free graph need not send knowledge from the strongest modality.")  # fmt: skip
    if not agreement_tested:
        parts.append("Where the free edges did not move, their ordering is not interpreted.")
    parts.append(FOLLOWS[follows])
    parts.append("None of this says the distillation is useless: the weighted losses still pass information along "
                 "every edge, and a prior can encode sound knowledge. But the learned graph should not be read as "
                 "the model's own discovery of which modality teaches best without the comparison runs above. These "
                 "conclusions come from synthetic data and short CPU runs; the same notebook with "
                 "`paper_scale = True` on the real files answers the question for MOSI and MOSEI.")  # fmt: skip
    return " ".join(parts)
