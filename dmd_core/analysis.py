"""Reusable analyses of DMD models and runs (the chapters call them; so can any study).

* :func:`describe_mmsa`, :func:`unimodal_probes`: what a data file holds, what each modality predicts alone.
* :func:`decoupled_features`, :func:`feature_similarity`: shared versus private features across modalities.
* :func:`attention_weights`: the cross-modal attention that feeds HeteroGD.
* :func:`edge_history`, :func:`mean_edges`, :func:`edges_by_class`, :func:`teacher_mass`,
  :class:`EdgeComparison`, :func:`seed_edges`, :func:`teacher_shares`: the GD-Units' edges over training,
  samples, seeds and settings; :func:`planted_incongruent`: a synthetic file's incongruent samples.
* :func:`ablation_table`: test metrics of several multi-seed runs side by side.

Nothing here draws: the book's figures, and the chapters' own plumbing (settings, run reuse, generated
sentences, display tables), live in the book's package ``dmd_book`` (``book/dmd_book/``), so ``dmd_core``
needs no plotting library.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import MODALITIES, DMDConfig
from .distill import EDGE_NAMES
from .kernels.definition import attention_weights as attention_weights_definition
from .kernels.definition import future_mask

if TYPE_CHECKING:
    from .data import Split
    from .model import DMD
    from .runs import Run, SeedRuns

log = logging.getLogger(__name__)


BRANCHES = ("homo", "hetero")


BRANCH_TITLES = {"homo": "HomoGD", "hetero": "HeteroGD"}
MODALITY_NAMES: dict[str, str] = {"L": "language", "V": "vision", "A": "audio"}


def describe_mmsa(path: str | Path) -> pd.DataFrame:
    """One row per (split, key) of an MMSA pickle: shape, dtype and the range of values (or an example string).

    Reads the file with :mod:`dmd_core.data`'s restricted unpickler (data names only).
    """
    from .data import read_pickle

    data = read_pickle(Path(path))
    rows = []
    for split in ("train", "valid", "test"):
        for key, value in data.get(split, {}).items():
            arr = np.asarray(value)
            if arr.dtype.kind in "fiub" and arr.size:
                finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
                values = f"{finite.min():.3g} to {finite.max():.3g}" if finite.size else "no finite value"
                if arr.dtype.kind == "f" and finite.size < arr.size:
                    values += f" ({arr.size - finite.size} non-finite)"
            else:
                values = repr(str(arr.reshape(-1)[0])[:36]) if arr.size else ""
            rows.append({"split": split, "key": key, "shape": tuple(arr.shape), "dtype": str(arr.dtype),
                         "values": values})  # fmt: skip
    return pd.DataFrame(rows)


def pooled_features(split: Split, modality: str) -> np.ndarray:
    """``(N, 2 d_m)``: mean and standard deviation over time of one modality's stored features."""
    x = {"L": split.text, "V": split.vision, "A": split.audio}[modality]
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"pooled_features: modality {modality} holds {x.dtype} (token ids?); load text as features")
    x = x.float()
    return torch.cat([x.mean(1), x.std(1)], dim=1).numpy()


def probe_predictions(train: Split, test: Split, modalities: Sequence[str] = MODALITIES,
                      combined: bool = True) -> dict[str, np.ndarray]:  # fmt: skip
    """The test predictions of a ridge regression on time-pooled features, one array per modality (plus
    ``"all"`` on the three concatenated when ``combined``); the penalty is chosen by cross-validation on ``train``."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train = np.asarray(train.labels, dtype=np.float64)
    feats = {m: (pooled_features(train, m), pooled_features(test, m)) for m in modalities}
    if combined:
        feats["all"] = (np.concatenate([f[0] for f in feats.values()], 1),
                        np.concatenate([f[1] for f in feats.values()], 1))  # fmt: skip
    out = {}
    for name, (x_train, x_test) in feats.items():
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
        out[name] = probe.fit(x_train, y_train).predict(x_test)
    return out


def unimodal_probes(train: Split, test: Split, modalities: Sequence[str] = MODALITIES,
                    combined: bool = True) -> pd.DataFrame:  # fmt: skip
    """How far each modality gets alone: :func:`probe_predictions` scored on ``test``.

    One row per modality (plus ``"all"`` on the three concatenated when ``combined``)
    with the MMSA metrics.
    """
    from .metrics import regression_metrics

    y_test = np.asarray(test.labels, dtype=np.float64)
    predictions = probe_predictions(train, test, modalities, combined)
    rows = {name: regression_metrics(pred, y_test) for name, pred in predictions.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


@torch.no_grad()
def decoupled_features(model: DMD, split: Split, max_samples: int = 256, batch_size: int = 64,
                       view: str = "pooled") -> dict[str, torch.Tensor]:  # fmt: skip
    """Shared and private features of up to ``max_samples`` samples, one ``(N, d)`` tensor per name.

    Names ``"c_L", "c_V", "c_A"`` (shared) and ``"s_L", "s_V", "s_A"`` (private).
    ``view="pooled"``: the features averaged over time; ``view="projected"``: the
    ``(B, d)`` projections of the shared features that the margin loss sees (``shared_sim``;
    ``c_*`` names only: the private features have no projection, the reference's unused one is not built).
    """
    if view not in ("pooled", "projected"):
        raise ValueError(f"decoupled_features: view must be 'pooled' or 'projected', found {view!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sub = split.subset(torch.arange(min(len(split), max_samples)))
    kinds = ("c", "s") if view == "pooled" else ("c",)
    out: dict[str, list[torch.Tensor]] = {f"{k}_{m}": [] for k in kinds for m in MODALITIES}
    for batch in sub.batches(batch_size, device=device):
        dec = model.decouple(batch.text, batch.audio, batch.vision)
        for m in MODALITIES:
            if view == "pooled":
                out[f"c_{m}"].append(dec.shared[m].mean(-1).float().cpu())
                out[f"s_{m}"].append(dec.private[m].mean(-1).float().cpu())
            else:
                out[f"c_{m}"].append(dec.shared_sim[m].float().cpu())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


def feature_similarity(features: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Mean over samples of the cosine between every two feature sets (same sample), as a square table."""
    names = list(features)
    table = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            table[i, j] = F.cosine_similarity(features[a], features[b], dim=1).mean().item()
    return pd.DataFrame(table, index=names, columns=names)


def cross_modal_similarity(table: pd.DataFrame) -> pd.Series:
    """Mean similarity between different modalities, for the shared (``c_*``) and private (``s_*``) blocks."""
    out = {}
    for kind, label in (("c", "shared"), ("s", "private")):
        names = [f"{kind}_{m}" for m in MODALITIES if f"{kind}_{m}" in table.index]
        pairs = [table.loc[a, b] for i, a in enumerate(names) for b in names[i + 1 :]]
        out[label] = float(np.mean(pairs))
    return pd.Series(out)


@torch.no_grad()
def attention_weights(model: DMD, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor, target: str,
                      source: str, layer: int = 0) -> torch.Tensor:  # fmt: skip
    """Cross-modal attention of ``target <- source`` in one layer, averaged over heads: ``(B, T_target, T_source)``.

    Runs the model once with a hook that records the layer's (normalised) query and
    key inputs, then applies :func:`dmd_core.kernels.definition.attention_weights` with the
    layer's own projection weights and its mask: exactly what the attention computes.
    """
    attn = model.cross[target + source].layers[layer].self_attn
    seen: dict[str, Any] = {}

    def hook(_module, args):
        seen["query"], seen["key"], seen["mask"] = args[0], args[1], args[3]

    handle = attn.register_forward_pre_hook(hook)
    was_training = model.training
    try:
        model.eval()
        model(text, audio, vision)
    finally:
        handle.remove()
        model.train(was_training)
    query, key, mask = seen["query"], seen["key"], seen["mask"]  # (Tq, B, d), (Tk, B, d)
    dim, heads = attn.dim, attn.heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    batch, dh = query.shape[1], dim // heads

    def split(t: torch.Tensor) -> torch.Tensor:  # (T, B, d) -> (B*h, T, d/h), as the attention splits heads
        return t.reshape(t.shape[0], batch * heads, dh).transpose(0, 1)

    q, k = split(F.linear(query, w[:dim], b[:dim])), split(F.linear(key, w[dim : 2 * dim], b[dim : 2 * dim]))
    if isinstance(mask, str):  # "causal": the reference's future mask
        mask = future_mask(q.shape[1], k.shape[1], q.device)
    weights = attention_weights_definition(q.float(), k.float(), mask)  # (B*h, Tq, Tk)
    return weights.reshape(batch, heads, *weights.shape[1:]).mean(1).cpu()


# Prior settings of the edge chapter: the paper's (the config default), uniform (the regulariser pulls every
# edge to 1/6), and none at all (uniform extra weight, no regulariser: the edges are free).
UNIFORM_PRIOR = {"homo_prior": (0.0,) * 6, "hetero_prior": (0.0,) * 6}


NO_PRIOR = {**UNIFORM_PRIOR, "gd_reg_weight": 0.0}


@torch.no_grad()
def edge_discrepancy(model: DMD, split: Split, branch: str = "homo", batch_size: int = 64) -> pd.DataFrame:
    """Per edge: mean normalised weight and mean ``|logit_student - logit_teacher|`` over ``split``.

    The distillation loss of an edge is its weight times this discrepancy, so a GD-Unit trained on
    that loss gains by moving weight to the edges whose two ends already agree.
    """
    from .distill import STUDENTS, TEACHERS

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    weights, gaps = [], []
    for batch in split.batches(batch_size, device=device):
        out = model(batch.text, batch.audio, batch.vision)
        heads, graph = (out.homo, out.homo_graph) if branch == "homo" else (out.hetero, out.hetero_graph)
        weights.append(graph.edges.float().cpu())  # (6, B)
        gaps.append((heads.logits[list(STUDENTS)] - heads.logits[list(TEACHERS)]).abs().squeeze(-1).float().cpu())
    model.train(was_training)
    return pd.DataFrame({"mean weight": torch.cat(weights, 1).mean(1).numpy(),
                         "mean |logit difference|": torch.cat(gaps, 1).mean(1).numpy()}, index=list(EDGE_NAMES))  # fmt: skip


def _edge_columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    columns = [f"{prefix}{edge}" for edge in EDGE_NAMES]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"expected edge columns {missing} (found {list(frame.columns)[:12]}...)")
    return columns


def edge_history(history: pd.DataFrame, branch: str = "homo", split: str = "train") -> pd.DataFrame:
    """The six mean normalised edges of one GD-Unit per epoch: index epoch, columns :data:`EDGE_NAMES`."""
    if branch not in BRANCHES:
        raise ValueError(f"edge_history: branch must be 'homo' or 'hetero', found {branch!r}")
    columns = _edge_columns(history, f"{split}_{branch}_")
    frame = history[columns].copy()
    frame.columns = list(EDGE_NAMES)
    frame.index = history["epoch"].to_numpy() if "epoch" in history else history.index
    frame.index.name = "epoch"
    return frame


def prediction_edges(predictions: pd.DataFrame, branch: str = "homo") -> pd.DataFrame:
    """Per-sample normalised edges of one GD-Unit from a run's test predictions, columns :data:`EDGE_NAMES`."""
    frame = predictions[_edge_columns(predictions, f"{branch}_")].copy()
    frame.columns = list(EDGE_NAMES)
    return frame


def mean_edges(predictions: pd.DataFrame, branch: str = "homo") -> pd.Series:
    """The mean graph over the test samples (six values indexed by :data:`EDGE_NAMES`)."""
    return prediction_edges(predictions, branch).mean()


def final_edges(run: Run, branch: str = "homo", split: str = "valid") -> pd.Series:
    """The mean edges after the last epoch (``split`` "valid": eval mode, final weights), from the history."""
    return edge_history(run.history, branch, split).iloc[-1]


def run_edges(run: Run, branch: str = "homo", source: str = "final") -> pd.Series:
    """Mean edges of a run: ``"final"`` (last epoch, validation split) or ``"test"`` (best weights, test split)."""
    if source == "final":
        return final_edges(run, branch)
    if source == "test":
        return mean_edges(run.test_predictions, branch)
    raise ValueError(f"run_edges: source must be 'final' or 'test', found {source!r}")


def sentiment_class(labels: np.ndarray | pd.Series, classes: int = 3) -> np.ndarray:
    """Class names of sentiment labels: 3 classes (negative < 0, neutral = 0, positive > 0) or the 7 rounded scores."""
    y = np.asarray(labels, dtype=float)
    if classes == 3:
        return np.where(y < 0, "negative", np.where(y > 0, "positive", "neutral"))
    if classes == 7:
        return np.round(np.clip(y, -3, 3)).astype(int).astype(str)
    raise ValueError(f"sentiment_class: classes must be 3 or 7, found {classes!r}")


def edges_by_class(predictions: pd.DataFrame, branch: str = "homo", classes: int = 3) -> pd.DataFrame:
    """Mean edges per sentiment class of the test samples (rows: classes, plus a count column ``n``)."""
    edges = prediction_edges(predictions, branch)
    edges["class"] = sentiment_class(predictions["label"], classes)
    table = edges.groupby("class").mean()
    table["n"] = edges.groupby("class").size()
    order = ["negative", "neutral", "positive"] if classes == 3 else [str(i) for i in range(-3, 4)]
    return table.reindex([c for c in order if c in table.index])


def teacher_mass(edges: pd.Series | Mapping[str, float], teacher: str) -> float:
    """Total weight of the two edges whose teacher is ``teacher`` (1/3 for a uniform graph)."""
    return float(sum(float(edges[e]) for e in EDGE_NAMES if e.split("->")[0] == teacher))


def prior_weights(config: DMDConfig, branch: str = "homo") -> pd.Series:
    """A GD-Unit's prior ``softmax(v / T)`` as six values indexed by :data:`EDGE_NAMES`."""
    v = torch.tensor(config.homo_prior if branch == "homo" else config.hetero_prior, dtype=torch.float64)
    return pd.Series(torch.softmax(v / config.gd_prior_temperature, 0).numpy(), index=list(EDGE_NAMES))


def excess_left(with_prior: float, without_prior: float, baseline: float = 1 / 3) -> float:
    """Share of an excess over ``baseline`` that remains without the prior: ``(without - b) / (with - b)``."""
    denom = with_prior - baseline
    return float("nan") if abs(denom) < 1e-12 else (without_prior - baseline) / denom


@dataclass
class EdgeComparison:
    """Final mean edges of several runs for one GD-Unit (rows: runs, columns: :data:`EDGE_NAMES`)."""

    branch: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def from_runs(cls, runs: Mapping[str, Run], branch: str = "homo", source: str = "final") -> EdgeComparison:
        """Rows: runs; ``source`` as in :func:`run_edges` (default: last epoch, validation split)."""
        return cls(branch, pd.DataFrame({name: run_edges(r, branch, source) for name, r in runs.items()}).T)

    def teacher_mass(self) -> pd.DataFrame:
        """Per run, the weight sent out by each teacher (columns L, V, A; 1/3 each when uniform)."""
        return pd.DataFrame({m: [teacher_mass(row, m) for _, row in self.table.iterrows()] for m in MODALITIES},
                            index=self.table.index)  # fmt: skip


def ranking(scores: pd.Series, higher_is_better: bool = True) -> str:
    """``"language > vision > audio"``: the modalities (index L, V, A) ordered by ``scores``."""
    order = scores.sort_values(ascending=not higher_is_better).index
    return " > ".join(MODALITY_NAMES.get(str(m), str(m)) for m in order)


def class_spread(table: pd.DataFrame) -> float:
    """Largest difference between sentiment classes of any edge's mean (a table of :func:`edges_by_class`)."""
    edges = table[[e for e in EDGE_NAMES if e in table.columns]]
    return float((edges.max() - edges.min()).max())


def seed_edges(seed_runs: SeedRuns, branch: str = "homo") -> pd.DataFrame:
    """Per seed, the mean graph of the tested model (best-validation weights) over the test samples.

    Rows: seeds; columns :data:`EDGE_NAMES` (each row sums to 1). The per-seed numbers that an interval over
    seeds needs (book/dmd_book/stats.py); :func:`mean_edges` is one seed's row.
    """
    rows = {seed: mean_edges(run.test_predictions, branch) for seed, run in seed_runs.runs.items()}
    frame = pd.DataFrame(rows).T[list(EDGE_NAMES)]
    frame.index.name = "seed"
    return frame


def teacher_shares(edges: pd.DataFrame) -> pd.DataFrame:
    """Each row's teacher shares (columns ``L``, ``V``, ``A``: the weight each modality sends out; 1/3 when
    uniform) from a table whose columns are :data:`EDGE_NAMES` (e.g. :func:`seed_edges`)."""
    return pd.DataFrame({m: [teacher_mass(row, m) for _, row in edges.iterrows()] for m in MODALITIES},
                        index=edges.index)  # fmt: skip


def planted_incongruent(ds: Any, split: str = "test") -> pd.Series:
    """Whether each sample of ``split`` of a synthetic file is incongruent (its words express an unrelated
    sentiment and vision or audio carries the true one; :mod:`dmd_core.data.synth`), indexed by sample id.

    Read from the file's ``synth`` key (the generator's latent variables); a real file has none.
    """
    synth = getattr(ds, "extra", {}).get("synth") or {}
    latent = (synth.get("latent") or {}).get(split) or {}
    if "incongruent" not in latent:
        raise ValueError(f"planted_incongruent: the file has no synth.latent.{split}.incongruent (not a synthetic "
                         "file written by dmd_core.data.synth)")  # fmt: skip
    flags = np.asarray(latent["incongruent"], dtype=bool)
    ids = [str(i) for i in ds[split].ids]
    if len(ids) != len(flags):
        raise ValueError(f"planted_incongruent: synth.latent.{split}.incongruent holds {len(flags)} flags, the "
                         f"split {len(ids)} samples")  # fmt: skip
    return pd.Series(flags, index=pd.Index(ids, name="id"), name="incongruent")


def edge_summary(runs: Mapping[str, Run], source: str = "final") -> pd.DataFrame:
    """Per run: teacher shares in both GD-Units and the test Non0 Acc-2 (%) and MAE.

    Columns ``homo L``, ``homo V``, ``homo A``, ``hetero L``, ... hold the weight each modality
    sends out as a teacher in the run's mean graph (``source`` as in :func:`run_edges`; 1/3 each in a
    uniform graph).
    """
    rows = {}
    for name, run in runs.items():
        metrics = run.test_metrics or {}
        row = {}
        for branch in BRANCHES:
            mean = run_edges(run, branch, source)
            for m in MODALITIES:
                row[f"{branch} {m}"] = teacher_mass(mean, m)
        row["Acc-2 (%)"] = 100 * float(metrics.get("Non0_acc_2", float("nan")))
        row["MAE"] = float(metrics.get("MAE", float("nan")))
        rows[name] = row
    return pd.DataFrame(rows).T


ABLATION_METRICS = ("Non0_acc_2", "Non0_F1_score", "Mult_acc_7", "MAE", "Corr")


def ablation_table(results: Mapping[str, SeedRuns]) -> pd.DataFrame:
    """Mean and std (ddof=0) over seeds of the test metrics of each variant; accuracies and F1 in %.

    Rows: variants (in the given order); columns ``"<metric> mean"``, ``"<metric> std"``, ``seeds``.
    """
    rows = {}
    for name, runs in results.items():
        metrics = runs.test_metrics
        row: dict[str, float] = {}
        for metric in ABLATION_METRICS:
            scale = 1.0 if metric in ("MAE", "Corr") else 100.0
            values = metrics[metric].astype(float) * scale
            row[f"{metric} mean"], row[f"{metric} std"] = float(values.mean()), float(values.std(ddof=0))
        row["seeds"] = len(metrics)
        rows[name] = row
    return pd.DataFrame(rows).T
