"""Tables the chapters display: data sizes, shapes, the recipe, and the paper's published results (quoted apart
from any run's: the comparisons of trained runs are in :mod:`dmd_book.evidence`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from dmd_core.config import FEATURE_DIMS, MODALITIES, SEQ_LENS, SPLIT_SIZES, DMDConfig, TrainConfig
from dmd_core.distill import EDGE_NAMES

if TYPE_CHECKING:
    from dmd_core.data import MMSADataset
    from dmd_core.model import DMD

    from .settings import BookSettings

log = logging.getLogger(__name__)


# DMD's reported results (Acc-7 / Acc-2 / F1 in %, BERT features, aligned; Table 1 of the paper).
PAPER_RESULTS = {
    "mosi": {"Mult_acc_7": 45.6, "Non0_acc_2": 86.0, "Non0_F1_score": 86.0},
    "mosei": {"Mult_acc_7": 54.5, "Non0_acc_2": 86.6, "Non0_F1_score": 86.6},
}


PAPER_METRIC_NAMES = {"Mult_acc_7": "Acc-7", "Non0_acc_2": "Acc-2", "Non0_F1_score": "F1"}


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
    from dmd_core.model import Decoupled

    same = {m: private for m in MODALITIES}
    return Decoupled(x=same, private=same, shared={m: shared for m in MODALITIES}, recon=same,
                     private_cycle=same, shared_sim={})  # fmt: skip


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
    """This run's settings beside the reference code's recipe and model (rows: setting; the second column is the
    reference implementation's configuration and training script, not a result of the paper)."""
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
    return pd.DataFrame(rows, index=["this run", "reference code's recipe"]).T.astype(str)


def published_table(dataset: str | None = None) -> pd.DataFrame:
    """DMD's published results (Table 1 of the paper: real data, BERT fine-tuned, aligned), apart from any run's.

    Rows: datasets (only ``dataset`` when given); columns Acc-7, Acc-2 and F1 in %. These are the paper's
    numbers, quoted; no run of the book produced them.
    """
    rows = {name.upper(): {PAPER_METRIC_NAMES[m]: v for m, v in metrics.items()} for name, metrics in
            PAPER_RESULTS.items() if dataset is None or name == dataset}  # fmt: skip
    if not rows:
        raise ValueError(f"published_table: no published numbers for dataset {dataset!r} (expected mosi or mosei)")
    frame = pd.DataFrame(rows).T[["Acc-7", "Acc-2", "F1"]]
    frame.index.name = "DMD, as published (real data)"
    return frame
