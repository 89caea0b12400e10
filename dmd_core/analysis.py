"""What the book's chapters compute: data summaries, unimodal probes, feature similarity,
attention maps, edge analysis, and the chapter plumbing (data file, runs, "train if absent").

Notebooks stay short by calling these functions; the figures are in :mod:`dmd_core.plots`.

* :class:`BookSettings`: the notebook parameters (device, data file or synthetic, preset,
  sizes, epochs, seeds, work folder) and what follows from them: the data file
  (a synthetic file is written once into ``work_dir/data``), model and train configs,
  and run folders named by a hash of everything that defines them, so a chapter finds
  a run that another chapter trained with the same settings and trains one otherwise.
* :func:`describe_mmsa`, :func:`unimodal_probes`: chapter 1.
* :func:`feature_similarity`: chapter 2 (shared versus private features across modalities).
* :func:`attention_weights`: chapter 3 (the cross-modal attention that feeds HeteroGD).
* :func:`edge_history`, :func:`mean_edges`, :func:`edges_by_class`, :func:`teacher_mass`:
  chapter 5.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import FEATURE_DIMS, MODALITIES, SEQ_LENS, SPLIT_SIZES, BertSpec, DMDConfig, TrainConfig
from .distill import EDGE_NAMES
from .kernels.definition import attention_weights as attention_weights_definition
from .kernels.definition import future_mask

if TYPE_CHECKING:
    from .data import MMSADataset, Split
    from .model import DMD
    from .runs import Run, SeedRuns

log = logging.getLogger(__name__)

BRANCHES = ("homo", "hetero")
BRANCH_TITLES = {"homo": "HomoGD", "hetero": "HeteroGD"}
# DMD's reported results (Acc-7 / Acc-2 / F1 in %, BERT features, aligned; spec section 13).
PAPER_RESULTS = {
    "mosi": {"Mult_acc_7": 45.6, "Non0_acc_2": 86.0, "Non0_F1_score": 86.0},
    "mosei": {"Mult_acc_7": 54.5, "Non0_acc_2": 86.6, "Non0_F1_score": 86.6},
}
PAPER_METRIC_NAMES = {"Mult_acc_7": "Acc-7", "Non0_acc_2": "Acc-2", "Non0_F1_score": "F1"}


# --------------------------------------------------------------------------- chapter plumbing


def _digest(obj: Any, n: int = 8) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class BookSettings:
    """The parameters every chapter shares, and what follows from them.

    ``paper_scale=True`` replaces the CPU defaults by the paper's setting: full split
    sizes (``scale=1``), the official model (``d``, ``heads``, ``nlevels``, ``lr``,
    ``accumulation`` from the preset and recipe), early stopping (``epochs=None``) and
    the five official seeds, and PyTorch's default CPU threads. Give it the real file
    (``data_path``), a BERT folder or hub name (``bert``) and a GPU.
    """

    device: str = "auto"
    data_path: str | None = None
    dataset: str = "mosi"
    aligned: bool = True
    scale: float = 0.5
    bert: str | None = None
    epochs: int | None = 12
    seeds: tuple[int, ...] = (1111, 1112)
    d: int | None = None
    heads: int | None = None
    nlevels: int | None = None
    lr: float | None = None
    accumulation: int | None = None
    work_dir: str = "runs/book"
    paper_scale: bool = False
    threads: int | None = None
    mmap_dir: str | None = None
    synth_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.paper_scale:
            for name, value in dict(scale=1.0, epochs=None, seeds=TrainConfig().seeds, d=None, heads=None,
                                    nlevels=None, lr=None, accumulation=None, threads=None).items():  # fmt: skip
                object.__setattr__(self, name, value)
        if not self.seeds:
            raise ValueError("BookSettings.seeds: expected at least one seed, found none")
        if self.data_path is None and not 0 < self.scale <= 1:
            raise ValueError(f"BookSettings.scale: expected a fraction in (0, 1], found {self.scale!r}")

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> BookSettings:
        """Settings from a notebook's parameters (e.g. ``globals()``); unknown names are ignored."""
        return cls(**{f.name: namespace[f.name] for f in fields(cls) if f.name in namespace})

    def replace(self, **changes: Any) -> BookSettings:
        return replace(self, **changes)

    def configure(self) -> BookSettings:
        """Apply the process-wide settings (PyTorch's CPU threads when ``threads`` is set); returns ``self``.

        One thread avoids the large slow-down of CPU oversubscription when other processes
        share the cores (CI uses it); ``None`` keeps PyTorch's default (all cores).
        """
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        return self

    @property
    def torch_device(self) -> torch.device:
        from .devices import pick_device

        return pick_device(self.device)

    @property
    def work(self) -> Path:
        return Path(self.work_dir)

    @property
    def text_mode(self) -> str:
        return "bert" if self.bert else "features"

    @property
    def synthetic(self) -> bool:
        return self.data_path is None

    # ---- data
    def synth_spec(self, **changes: Any):
        """The :class:`~dmd_core.data.synth.SynthSpec` of the synthetic file (``changes`` e.g. ``strengths``)."""
        from .data.synth import SynthSpec

        return SynthSpec(dataset=self.dataset, aligned=self.aligned, scale=self.scale, seed=self.synth_seed,
                         **changes)  # fmt: skip

    def data_file(self, variant: str = "default", **spec_changes: Any) -> Path:
        """The MMSA file to use: ``data_path``, or a synthetic file written once into ``work_dir/data``.

        ``variant``/``spec_changes`` ask for another synthetic file (e.g. ``"audio"`` with
        ``strengths=(0.2, 0.3, 1.0)``); a real ``data_path`` serves only the default variant.
        """
        if self.data_path is not None and variant == "default" and not spec_changes:
            path = Path(self.data_path)
            if not path.is_file():
                raise FileNotFoundError(f"data_path {str(path)!r} does not exist (expected an MMSA pickle)")
            return path
        from .data.synth import write_mmsa

        spec = self.synth_spec(**spec_changes)
        layout = "aligned" if self.aligned else "unaligned"
        path = self.work / "data" / f"synthetic_{self.dataset}_{layout}_{variant}_{_digest(repr(spec))}.pkl"
        if not path.is_file():
            log.info("writing synthetic data %s", path)
            write_mmsa(path, spec)
        return path

    def load(self, path: str | Path, text: str | None = None) -> MMSADataset:
        """:func:`~dmd_core.data.load_mmsa` of ``path`` (text mode: the settings' unless given), cached.

        With ``mmap_dir`` the file is converted once to memory-mapped arrays there (large files,
        e.g. MOSEI unaligned on a 12 GB machine).
        """
        path = Path(path)
        return _load_cached(str(path.resolve()), text or self.text_mode, path.stat().st_mtime_ns, self.mmap_dir)

    # ---- configs
    def model_config(self, ds: MMSADataset, **overrides: Any) -> DMDConfig:
        """The dataset's official preset with this file's sizes, the size overrides and ``overrides``."""
        sizes = {k: getattr(self, k) for k in ("d", "heads", "nlevels") if getattr(self, k) is not None}
        if self.bert:
            sizes["bert"] = BertSpec(name_or_path=self.bert)
        return ds.suggest_config(**{**sizes, **overrides})

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The official recipe with ``epochs`` as ``max_epochs``, the seeds, and ``lr``/``accumulation`` if set."""
        recipe = {"max_epochs": self.epochs, "seeds": self.seeds}
        recipe.update({k: getattr(self, k) for k in ("lr", "accumulation") if getattr(self, k) is not None})
        return TrainConfig(**{**recipe, **overrides})

    def run_dir(self, name: str, config: DMDConfig, data_file: Path, train_config: TrainConfig) -> Path:
        """``work_dir/<name>-<hash>``: the hash covers the model and train configs and the data file."""
        key = {"model": config.to_dict(), "train": {**train_config.to_dict(), "seeds": None},
               "data": str(Path(data_file).resolve())}  # fmt: skip
        return self.work / f"{name}-{_digest(key)}"

    # ---- runs
    def seed_runs(self, name: str, config: DMDConfig, data_file: Path, train_config: TrainConfig,
                  progress: bool = True) -> SeedRuns:  # fmt: skip
        """Every seed of ``train_config`` trained into one folder; seeds already finished are read back."""
        from .runs import load_seeds
        from .trainer import train_seeds

        folder = self.run_dir(name, config, data_file, train_config)
        if not _seeds_done(folder, train_config.seeds):
            data = self.load(data_file, "bert" if config.use_bert else "features")  # the cached copy
            train_seeds(config, data, train_config, folder, device=self.device, resume=True, progress=progress)
        return load_seeds(folder)

    def single_run(self, name: str, config: DMDConfig, data_file: Path, train_config: TrainConfig,
                   seed: int | None = None, progress: bool = True) -> Run:  # fmt: skip
        """One seed (default: the first) in ``<run_dir>/seed_<seed>``: read back if finished, else trained."""
        from .runs import load_run, seed_dir
        from .trainer import train

        seed = train_config.seeds[0] if seed is None else int(seed)
        folder = seed_dir(self.run_dir(name, config, data_file, train_config), seed)
        if not _seeds_done(folder.parent, (seed,)):
            data = self.load(data_file, "bert" if config.use_bert else "features")  # the cached copy
            train(config, data, train_config, folder, seed=seed, device=self.device, resume=True, progress=progress)
        return load_run(folder)


def _seeds_done(folder: Path, seeds: Sequence[int]) -> bool:
    return all((Path(folder) / f"seed_{s}" / "test_metrics.json").is_file() for s in seeds)


_LOADED: dict[tuple, Any] = {}


def _load_cached(path: str, text: str, mtime: int, mmap_dir: str | None = None) -> MMSADataset:
    from .data import load_mmsa

    key = (path, text, mtime, mmap_dir)
    if key not in _LOADED:
        _LOADED.clear()  # keep one file in memory at a time
        _LOADED[key] = load_mmsa(path, text=text, mmap_dir=mmap_dir)
    return _LOADED[key]


# --------------------------------------------------------------------------- chapter 1: data


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


def unimodal_probes(train: Split, test: Split, modalities: Sequence[str] = MODALITIES,
                    combined: bool = True) -> pd.DataFrame:  # fmt: skip
    """How far each modality gets alone: a ridge regression on time-pooled features, scored on ``test``.

    One row per modality (plus ``"all"`` on the three concatenated when ``combined``)
    with the MMSA metrics; the ridge penalty is chosen by cross-validation on ``train``.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .metrics import regression_metrics

    y_train, y_test = np.asarray(train.labels, dtype=np.float64), np.asarray(test.labels, dtype=np.float64)
    feats = {m: (pooled_features(train, m), pooled_features(test, m)) for m in modalities}
    if combined:
        feats["all"] = (np.concatenate([f[0] for f in feats.values()], 1),
                        np.concatenate([f[1] for f in feats.values()], 1))  # fmt: skip
    rows = {}
    for name, (x_train, x_test) in feats.items():
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
        probe.fit(x_train, y_train)
        rows[name] = regression_metrics(probe.predict(x_test), y_test)
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- chapter 2: decoupling


@torch.no_grad()
def decoupled_features(model: DMD, split: Split, max_samples: int = 256, batch_size: int = 64,
                       view: str = "pooled") -> dict[str, torch.Tensor]:  # fmt: skip
    """Shared and private features of up to ``max_samples`` samples, one ``(N, d)`` tensor per name.

    Names ``"c_L", "c_V", "c_A"`` (shared) and ``"s_L", "s_V", "s_A"`` (private).
    ``view="pooled"``: the features averaged over time; ``view="projected"``: the
    ``(B, d)`` projections the model keeps (``shared_sim``, which the margin loss
    sees, and ``private_proj``, which no loss uses).
    """
    if view not in ("pooled", "projected"):
        raise ValueError(f"decoupled_features: view must be 'pooled' or 'projected', found {view!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sub = split.subset(torch.arange(min(len(split), max_samples)))
    out: dict[str, list[torch.Tensor]] = {f"{k}_{m}": [] for k in ("c", "s") for m in MODALITIES}
    for batch in sub.batches(batch_size, device=device):
        dec = model.decouple(batch.text, batch.audio, batch.vision)
        for m in MODALITIES:
            if view == "pooled":
                c, s = dec.shared[m].mean(-1), dec.private[m].mean(-1)
            else:
                c, s = dec.shared_sim[m], dec.private_proj[m]
            out[f"c_{m}"].append(c.float().cpu())
            out[f"s_{m}"].append(s.float().cpu())
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


# --------------------------------------------------------------------------- chapter 3: graph distillation


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


# --------------------------------------------------------------------------- chapter 5: edges


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


# --------------------------------------------------------------------------- sentences and tables for the chapters


def ranking(scores: pd.Series, higher_is_better: bool = True) -> str:
    """``"language > vision > audio"``: the modalities (index L, V, A) ordered by ``scores``."""
    from .plots import MODALITY_NAMES

    order = scores.sort_values(ascending=not higher_is_better).index
    return " > ".join(MODALITY_NAMES.get(str(m), str(m)) for m in order)


def real_data_table() -> pd.DataFrame:
    """Split sizes, sequence lengths and feature sizes of the real MMSA files (the book's data-format page)."""
    rows = []
    for (name, aligned), lens in SEQ_LENS.items():
        rows.append((name.upper(), "aligned_50" if aligned else "unaligned_50", *SPLIT_SIZES[name],
                     " / ".join(map(str, lens)), " / ".join(map(str, FEATURE_DIMS[name]))))  # fmt: skip
    columns = ["dataset", "file", "train", "valid", "test", "steps L / V / A", "features L / V / A"]
    return pd.DataFrame(rows, columns=columns).set_index(["dataset", "file"])


def layout_example(settings: BookSettings, sample: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Feature norms per time step of one training sample in an aligned and an unaligned synthetic file.

    Writes two small synthetic files (2 % of the real sizes) of the settings' dataset.
    """
    out = {}
    for aligned in (True, False):
        small = settings.replace(aligned=aligned, data_path=None, scale=0.02)
        ds = small.load(small.data_file("layout"), text="features")
        split = ds["train"]
        x = {"L": split.text, "V": split.vision, "A": split.audio}
        title = "aligned_50" if aligned else "unaligned_50"
        out[title] = {m: torch.as_tensor(np.asarray(v[sample])).float().norm(dim=-1).numpy() for m, v in x.items()}
    return out


def synth_parameters(ds: MMSADataset) -> pd.DataFrame:
    """The generator parameters stored in a synthetic file (its ``synth`` key), one row each."""
    info = ds.extra.get("synth")
    if not info:
        return pd.DataFrame({"value": ["not a synthetic file (no 'synth' key)"]}, index=["file"])
    spec = dict(info.get("spec", {}))
    rows = {k: (str(tuple(v)) if isinstance(v, (list, tuple)) else str(v)) for k, v in spec.items()}
    for m, r2 in (info.get("linear_r2") or {}).items():
        rows[f"best linear R^2, {m}"] = f"{float(r2):.3f}"
    return pd.DataFrame({"value": rows})


def shape_table(dec: Any, config: DMDConfig) -> pd.DataFrame:
    """Shapes of the decoupled tensors of one batch, per modality (rows) and tensor (columns)."""
    names = {"x": "projection x", "private": "private s", "shared": "shared c", "recon": "reconstruction",
             "shared_sim": "margin projection"}  # fmt: skip
    table = {label: {m: tuple(getattr(dec, key)[m].shape) for m in MODALITIES} for key, label in names.items()}
    frame = pd.DataFrame(table)
    frame.insert(0, "T_m", list(config.conv_lens))
    return frame


def toy_decoupled(private: torch.Tensor, shared: torch.Tensor) -> Any:
    """A :class:`~dmd_core.model.Decoupled` whose three modalities all hold ``private``/``shared`` ``(B, d, T)``."""
    from .model import Decoupled

    same = {m: private for m in MODALITIES}
    return Decoupled(x=same, private=same, shared={m: shared for m in MODALITIES}, recon=same,
                     private_cycle=same, shared_sim={}, private_proj={})  # fmt: skip


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


def gd_unit_table(model: DMD) -> pd.DataFrame:
    """How HomoGD and HeteroGD differ (inputs, sizes, prior, representation distance, weights)."""
    rows = {}
    for title, unit, branch in (("HomoGD", model.homo_gd, "homogeneous: heads on shared c_m"),
                                ("HeteroGD", model.hetero_gd, "heterogeneous: cross-modal heads on private s_m")):  # fmt: skip
        favoured = [e for e, p in zip(EDGE_NAMES, unit.prior.tolist()) if p > 1 / 6]
        rows[title] = {
            "reads": branch,
            "representation size H": unit.W_repr.in_features,
            "embedding size g": unit.W_logit.out_features,
            "prior favours": ", ".join(favoured) or "none (uniform)",
            "representation distance": {"l1": "L1 (summed |difference|)", "cosine": "cosine, target -1"}[
                unit.repr_distance
            ],
            "representation loss in total": bool(unit.repr_in_total),
            "unit weight": unit.weight,
        }
    return pd.DataFrame(rows)


def recipe_table(config: DMDConfig, train_config: TrainConfig, official: DMDConfig) -> pd.DataFrame:
    """This run's settings beside the published recipe and model (rows: setting)."""
    recipe = TrainConfig()
    rows = {
        "model width d": (config.d, official.d), "heads": (config.heads, official.heads),
        "Transformer layers": (config.nlevels, official.nlevels),
        "text": ("BERT, fine-tuned" if config.use_bert else "stored BERT features", "BERT, fine-tuned"),
        "batch size": (train_config.batch_size, recipe.batch_size), "learning rate": (train_config.lr, recipe.lr),
        "mini-batches per step": (train_config.accumulation, recipe.accumulation),
        "gradient clip (value)": (train_config.grad_clip, recipe.grad_clip),
        "epochs": (train_config.max_epochs or "early stopping", "early stopping (patience 10)"),
        "seeds": (", ".join(map(str, train_config.seeds)), ", ".join(map(str, recipe.seeds))),
    }  # fmt: skip
    return pd.DataFrame(rows, index=["this run", "paper"]).T.astype(str)


def recipe_note(settings: BookSettings, config: DMDConfig, train_config: TrainConfig) -> str:
    """A sentence saying whether this run follows the recipe and, if not, how it departs from it."""
    recipe, official = TrainConfig(), None
    from .config import preset

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


def results_table(seed_runs: SeedRuns, dataset: str) -> pd.DataFrame:
    """Mean and std over seeds of the test metrics (accuracies and F1 in %), beside the paper's numbers."""
    per_seed = seed_runs.test_metrics
    rows = {}
    for metric in ("Non0_acc_2", "Non0_F1_score", "Mult_acc_7", "Has0_acc_2", "MAE", "Corr"):
        scale = 100.0 if metric not in ("MAE", "Corr") else 1.0
        values = per_seed[metric].astype(float) * scale
        rows[metric] = {
            "name": PAPER_METRIC_NAMES.get(metric, metric),
            "mean": float(values.mean()),
            "std": float(values.std(ddof=0)),
            "paper": PAPER_RESULTS.get(dataset, {}).get(metric, float("nan")),
        }
    return pd.DataFrame(rows).T.astype({"mean": float, "std": float, "paper": float})


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
    parts = []
    parts.append("As in the paper, L→A and L→V are HomoGD's two largest edges" if homo_ok
                 else f"Unlike the paper, HomoGD's two largest edges are {' and '.join(sorted(top_homo))}")  # fmt: skip
    parts.append("and HeteroGD's three largest are L→A, L→V and V→A as well." if hetero_ok
                 else f"while HeteroGD's three largest are {', '.join(sorted(top_hetero))}.")  # fmt: skip
    return " ".join(parts).replace("->", "→")


def class_spread(table: pd.DataFrame) -> float:
    """Largest difference between sentiment classes of any edge's mean (a table of :func:`edges_by_class`)."""
    edges = table[[e for e in EDGE_NAMES if e in table.columns]]
    return float((edges.max() - edges.min()).max())


def agreement_verdict(rhos: Mapping[str, float]) -> str:
    """What the rank correlations between edge weight and logit disagreement (per unit) say."""
    parts = []
    for title, rho in rhos.items():
        if rho <= -0.5:
            parts.append(f"in {title} the heavier edges do join modalities that agree more")
        elif rho >= 0.5:
            parts.append(f"in {title} the heavier edges join modalities that disagree more, the opposite")
        else:
            parts.append(f"in {title} weight and disagreement show no clear relation")
    return ("So " + "; ".join(parts) + ". The logit term is not the only force: the representation losses "
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
        text = f"Without a prior the graph does turn towards audio: audio's teacher share changes by {numbers}."
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


# --------------------------------------------------------------------------- chapter 6: ablations

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


def ablation_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`ablation_table` as readable ``"mean ± std"`` strings (accuracies and F1 in %)."""
    names = {"Non0_acc_2": "Acc-2 (%)", "Non0_F1_score": "F1 (%)", "Mult_acc_7": "Acc-7 (%)", "MAE": "MAE",
             "Corr": "Corr"}  # fmt: skip
    out = pd.DataFrame(index=table.index)
    for metric, label in names.items():
        digits = 3 if metric in ("MAE", "Corr") else 1
        out[label] = [
            f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(table[f"{metric} mean"], table[f"{metric} std"])
        ]
    out["seeds"] = table["seeds"].astype(int)
    return out


def ablation_verdict(table: pd.DataFrame, reference: str | None = None, metric: str = "Non0_acc_2") -> str:
    """Which ablations differ from the full model by more than the seeds' spread (two standard deviations)."""
    reference = reference or str(table.index[0])
    base, std = table.loc[reference, f"{metric} mean"], table.loc[reference, f"{metric} std"]
    parts = []
    for name in table.index:
        if name == reference:
            continue
        delta = table.loc[name, f"{metric} mean"] - base
        spread = 2 * max(std, table.loc[name, f"{metric} std"])
        if int(table.loc[name, "seeds"]) < 2 or spread == 0:
            parts.append(f"{name}: {delta:+.1f} points (one seed: no spread to compare with)")
        elif abs(delta) <= spread:
            parts.append(f"{name}: {delta:+.1f} points, within two standard deviations of seed noise")
        else:
            parts.append(f"{name}: {delta:+.1f} points, beyond two standard deviations of seed noise")
    return "In Acc-2, " + "; ".join(parts) + "." if parts else ""
