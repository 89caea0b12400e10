"""The sentences the chapters generate from their numbers (verdicts, notes, the takeaway).

Each function reads measured numbers and returns a sentence of prose for the chapter to glue,
so that what the text claims is always what this execution measured.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dmd_core.analysis import BRANCH_TITLES, BRANCHES
from dmd_core.config import DMDConfig, TrainConfig

if TYPE_CHECKING:
    from .settings import BookSettings

    pass

log = logging.getLogger(__name__)


def similarity_verdict(cross: pd.DataFrame, clear_gap: float = 0.1) -> str:
    """One honest sentence on a ``cross_modal_similarity`` table with columns ``untrained`` and ``trained``."""
    d_shared = cross.loc["shared", "trained"] - cross.loc["shared", "untrained"]
    d_private = cross.loc["private", "trained"] - cross.loc["private", "untrained"]
    gap = cross.loc["shared", "trained"] - cross.loc["private", "trained"]
    if d_shared > d_private and gap > clear_gap:
        return ("Training made the shared features of different modalities clearly more alike than the private "
                "ones, which is what the decoupling is meant to do.")  # fmt: skip
    if d_shared > d_private:
        return ("Training moved the shared features of different modalities a little closer together than the "
                "private ones, but on this measure (time-averaged features) they stay far from alike; the margin "
                "loss acts on a learned projection of the shared features, not on these averages, and the "
                "decoupling losses carry small weights (0.1 and 0.01) against the task loss.")  # fmt: skip
    return ("Here training did not make the shared features of different modalities more alike than the private "
            "ones: the decoupling losses carry small weights (0.1 and 0.01) against the task loss, and this "
            "measure (time-averaged features) is not the projection the margin loss acts on.")  # fmt: skip


def recipe_note(settings: BookSettings, config: DMDConfig, train_config: TrainConfig) -> str:
    """A sentence saying whether this run follows the recipe and, if not, how it departs from it."""
    recipe, official = TrainConfig(), None
    from dmd_core.config import preset

    official = preset(config.dataset, config.aligned)
    changes = []
    if (config.d, config.heads, config.nlevels) != (official.d, official.heads, official.nlevels):
        layers = f"{config.nlevels} layer{'s' if config.nlevels != 1 else ''}"
        changes.append(f"a smaller model (d={config.d}, {config.heads} heads, {layers})")
    if train_config.lr != recipe.lr or train_config.accumulation != recipe.accumulation:
        every = (
            "every mini-batch" if train_config.accumulation == 1 else f"every {train_config.accumulation} mini-batches"
        )
        changes.append(f"a learning rate of {train_config.lr:g} with an optimizer step {every}, so that a few epochs "
                       f"make enough steps")  # fmt: skip
    if train_config.max_epochs is not None:
        changes.append(f"at most {train_config.max_epochs} epoch{'s' if train_config.max_epochs != 1 else ''}")
    if len(train_config.seeds) != len(recipe.seeds):
        n = len(train_config.seeds)
        changes.append(f"{n} seed{'s' if n != 1 else ''}")
    data = "the synthetic file" if settings.synthetic else f"`{Path(str(settings.data_path)).name}`"
    if not changes:
        return f"This run follows the published recipe and model on {data}."
    return (f"This run departs from the recipe to finish in minutes on a CPU: {'; '.join(changes)}. Setting "
            f"`paper_scale = True` restores the recipe (see the introduction). Data: {data}.")  # fmt: skip


def honest_note(settings: BookSettings) -> str:
    """What the numbers of this run can and cannot be compared with."""
    if not settings.synthetic:
        return ("These numbers come from the file given as `data_path`; they are comparable to the paper's only "
                "with the full recipe (`paper_scale = True`) and BERT fine-tuning.")  # fmt: skip
    return ("These numbers come from synthetic data, so they say nothing about how DMD compares with the paper or "
            "with other models: the achievable accuracy is whatever the planted signal strengths and noise allow. "
            "What they do show is that the recipe trains, that seeds agree or disagree by this much, and, in "
            "chapter 5, how the graphs behave when we know which modality carries the signal.")  # fmt: skip


def edge_verdict(homo: pd.Series, hetero: pd.Series) -> str:
    """Whether the paper's pattern (HomoGD: L->A, L->V on top; HeteroGD: L->A, L->V, V->A) came out."""
    top_homo = set(homo.sort_values(ascending=False).index[:2])
    top_hetero = set(hetero.sort_values(ascending=False).index[:3])
    homo_ok = top_homo == {"L->A", "L->V"}
    hetero_ok = top_hetero == {"L->A", "L->V", "V->A"}
    if homo_ok and hetero_ok:
        return ("As in the paper, L→A and L→V are HomoGD's two largest edges, and L→A, L→V and V→A "
                "HeteroGD's three largest.")  # fmt: skip
    if homo_ok:
        first = "As in the paper, L→A and L→V are HomoGD's two largest edges"
    else:
        first = f"Unlike the paper, HomoGD's two largest edges are {_and(sorted(top_homo))}"
    second = ("but HeteroGD's three largest are L→A, L→V and V→A, as in the paper" if hetero_ok
              else f"while HeteroGD's three largest are {_and(sorted(top_hetero))}")  # fmt: skip
    return f"{first}, {second}.".replace("->", "→")


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _units(titles: list[str], of: int) -> str:
    """``in both GD-Units`` when ``titles`` are all ``of`` (at least two) units, else ``in A and B``."""
    if len(titles) == of == 2:
        return "in both GD-Units"
    if len(titles) == of > 2:
        return "in every GD-Unit"
    return f"in {_and(titles)}"


def agreement_verdict(rhos: Mapping[str, float]) -> str:
    """What the rank correlations between edge weight and logit disagreement (per unit) say."""
    findings: dict[str, list[str]] = {}  # finding -> units, in the order the units come
    for title, rho in rhos.items():
        if rho <= -0.5:
            finding = "the heavier edges join modalities that agree more"
        elif rho >= 0.5:
            finding = (
                "the heavier edges join modalities that disagree more, the opposite of what the logit loss rewards"
            )
        else:
            finding = "weight and disagreement show no clear relation"
        findings.setdefault(finding, []).append(title)
    clauses = [f"{_units(titles, len(rhos))}, {finding}" for finding, titles in findings.items()]
    joined = clauses[0] if len(clauses) == 1 else ", while ".join(clauses) if len(clauses) == 2 else "; ".join(clauses)
    return (f"So, {joined}. The logit term is not the only force: the representation losses "
            "and the training dynamics of the edge scores also move the weights.")  # fmt: skip


def prior_verdict(left: float, with_prior: float | None = None, margin: float = 0.02) -> str:
    """A sentence on the share of language's excess teacher weight that survives a uniform prior.

    ``with_prior``: language's teacher share under the paper's prior; when its excess over 1/3
    is below ``margin`` the comparison says little, and the sentence says so.
    """
    if with_prior is not None and with_prior - 1 / 3 < margin:
        return (f"With the paper's prior, language's teacher share ({with_prior:.3f}) has hardly left 1/3 in this "
                "run, so this comparison says little; longer runs let the edges move further.")  # fmt: skip
    if not np.isfinite(left):
        return "With the paper's prior, language's teacher share did not exceed 1/3, so there is nothing to compare."
    if left < 0.25:
        return ("Almost all of the pattern in the paper's edge figure comes from the prior: without it, language "
                "hardly stands out as a teacher.")  # fmt: skip
    if left < 0.75:
        return "A part of the pattern survives without the prior, but most of its size comes from the prior."
    return "Most of the pattern survives without the prior: the data, not the prior, makes language the main teacher."


def follow_verdict(summary: pd.DataFrame, margin: float = 0.02) -> str:
    """Whether audio's teacher share rose when audio carries the signal (runs without a prior), and what the prior did."""
    free = ("language signal, no prior", "audio signal, no prior")
    paper = ("language signal, paper prior", "audio signal, paper prior")
    if not set(free + paper) <= set(summary.index):
        return ""
    deltas = {b: summary.loc[free[1], f"{b} A"] - summary.loc[free[0], f"{b} A"] for b in BRANCHES}
    moved = [BRANCH_TITLES[b] for b, v in deltas.items() if v > margin]
    numbers = f"{deltas['homo']:+.3f} in HomoGD and {deltas['hetero']:+.3f} in HeteroGD"
    if len(moved) == 2:
        text = f"Without a prior the graph turns towards audio in both GD-Units: audio's teacher share changes by {numbers}."
    elif moved:
        text = f"Without a prior the graph turns towards audio only in {moved[0]}: audio's teacher share changes by {numbers}."
    else:
        text = (f"Even without a prior the graph does not turn towards audio: audio's teacher share changes by "
                f"{numbers}.")  # fmt: skip
    lang = summary.loc[paper[1], "homo L"]
    if lang > 1 / 3 + margin:
        return text + (f" With the paper's prior, language keeps a HomoGD teacher share of {lang:.3f} on the file "
                       f"where it is the weakest modality: there the prior, not the data, decides.")  # fmt: skip
    return text + f" With the paper's prior, language's HomoGD teacher share on that file is {lang:.3f}."


def takeaway(
    left: float, summary: pd.DataFrame, agreement: Mapping[str, pd.DataFrame], with_prior: float | None = None
) -> str:
    """The edge chapter's conclusion, assembled from its numbers (nothing in it is typed by hand).

    ``left``: :func:`excess_left` of the uniform-prior run; ``summary``: :func:`edge_summary`
    of the chapter's runs; ``agreement``: :func:`edge_discrepancy` tables of the no-prior run by unit title.
    """
    parts = []
    if with_prior is not None and with_prior - 1 / 3 < 0.02:
        parts.append("In these runs the edges hardly moved from the uniform graph even under the paper's prior, so "
                     "the comparisons are weak; longer runs (the CPU defaults or paper scale) let them move.")  # fmt: skip
    elif np.isfinite(left) and left < 0.25:
        parts.append("In these runs the paper's edge figure is mostly a picture of its prior: the regulariser pins "
                     "the mean edges to the prior, and with a uniform prior almost none of language's lead remains.")  # fmt: skip
    elif np.isfinite(left) and left < 0.75:
        parts.append("In these runs part of language's lead survives a uniform prior, but most of its size comes "
                     "from the prior.")  # fmt: skip
    elif np.isfinite(left):
        parts.append("In these runs most of language's lead survives a uniform prior: the data, not only the prior, "
                     "make language the main teacher.")  # fmt: skip
    rhos = {t: float(a.corr(method="spearman").iloc[0, 1]) for t, a in agreement.items()}
    if rhos and all(r < 0 for r in rhos.values()):
        parts.append("Without any prior, the GD-Units put their weight on edges whose two ends already agree "
                     "(negative rank correlation between weight and disagreement in both units), which need not "
                     "be the direction in which information should flow.")  # fmt: skip
    elif rhos:
        parts.append("Without any prior, the edge weights are not simply ordered by how much the two ends agree "
                     f"(rank correlations {', '.join(f'{t} {r:+.2f}' for t, r in rhos.items())}).")  # fmt: skip
    verdict = follow_verdict(summary)
    if verdict:
        parts.append(verdict.split(":")[0] + ".")
    parts.append("None of this says the distillation is useless: the weighted losses still pass information along "
                 "every edge, and a prior can encode sound knowledge. But the learned graph should not be read as "
                 "the model's own discovery of which modality teaches best without the comparison runs above. These "
                 "conclusions come from synthetic data and short CPU runs; the same notebook with "
                 "`paper_scale = True` on the real files answers the question for MOSI and MOSEI.")  # fmt: skip
    return " ".join(parts)


def ablation_verdict(table: pd.DataFrame, reference: str | None = None, metric: str = "Non0_acc_2") -> str:
    """Which ablations differ from the full model by more than the seeds' spread (two standard deviations)."""
    reference = reference or str(table.index[0])
    base, std = table.loc[reference, f"{metric} mean"], table.loc[reference, f"{metric} std"]
    groups: dict[str, list[str]] = {"within": [], "beyond": [], "one seed": []}
    for name in table.index:
        if name == reference:
            continue
        delta = table.loc[name, f"{metric} mean"] - base
        spread = 2 * max(std, table.loc[name, f"{metric} std"])
        kind = "one seed" if int(table.loc[name, "seeds"]) < 2 or spread == 0 else (
            "within" if abs(delta) <= spread else "beyond")  # fmt: skip
        groups[kind].append(f"{name} ({delta:+.1f} points)")
    ends = {"within": "within two standard deviations of seed noise",
            "beyond": "beyond two standard deviations of seed noise",
            "one seed": "from one seed, with no spread to compare with"}  # fmt: skip
    parts = [
        f"{_and(names)} {'is' if len(names) == 1 else 'are'} {ends[kind]}" for kind, names in groups.items() if names
    ]
    return f"In Acc-2, against {reference}: " + "; ".join(parts) + "." if parts else ""
