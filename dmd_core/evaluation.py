"""Evaluating a trained DMD: predictions, per-sample GD edges, MMSA metrics, missing modalities.

::

    evaluate(model, dataset["test"])                    # metrics + L1 loss, eval mode, no autograd
    evaluate(model, dataset["test"], zero=("A",))       # with audio zeroed at the input
    predict(model, dataset["test"]).rows()              # one dict per sample: prediction, label, 12 edges
    predict_arrays(model, text, audio, vision)          # the same for arrays in memory (new data, no labels)
    missing_modality_table(model, dataset["test"])      # every modality subset, one row each

Predictions are computed under ``torch.inference_mode`` in eval mode (the reference keeps their
autograd graphs), in float32 whatever autocast ran the forward. The metrics are defined in the
book's data-format page ("Metrics").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config import MODALITIES
from .devices import pick_device
from .distill import EDGE_NAMES
from .metrics import regression_metrics
from .model import DMD
from .precision import autocast
from .threads import FittedThreads

if TYPE_CHECKING:
    import pandas as pd

    from .data import Split

__all__ = ["Predictions", "predict", "predict_arrays", "scores", "evaluate", "missing_modality_table"]


@dataclass
class Predictions:
    """Per-sample outputs on one split: ``prediction``, ``labels`` (N,), ``homo_edges``/``hetero_edges`` (N, 6).

    ``labels`` are NaN for data without labels (:attr:`has_labels` False): no metrics then.
    """

    ids: list[str]
    labels: torch.Tensor
    prediction: torch.Tensor
    homo_edges: torch.Tensor
    hetero_edges: torch.Tensor

    @property
    def has_labels(self) -> bool:
        return bool(torch.isfinite(self.labels).all())

    def rows(self) -> list[dict[str, Any]]:
        """One dict per sample: id, label (only when there are labels), prediction, ``homo_<edge>``, ``hetero_<edge>``."""
        out, labelled = [], self.has_labels
        for i, sample_id in enumerate(self.ids):
            row = {"id": sample_id, "label": float(self.labels[i]), "prediction": float(self.prediction[i])}
            if not labelled:
                del row["label"]
            row.update({f"homo_{e}": float(self.homo_edges[i, k]) for k, e in enumerate(EDGE_NAMES)})
            row.update({f"hetero_{e}": float(self.hetero_edges[i, k]) for k, e in enumerate(EDGE_NAMES)})
            out.append(row)
        return out


def _check_zero(zero: Iterable[str]) -> tuple[str, ...]:
    zero = tuple(zero)
    bad = [m for m in zero if m not in MODALITIES]
    if bad:
        raise ValueError(f"zero: unknown modalities {bad}; expected a subset of {MODALITIES}")
    return zero


@contextmanager
def _zero_text_encoder(model: DMD, active: bool):
    """With BERT, "zeroing" language means zero text *features*: BERT's output is replaced by zeros."""
    if not active or model.text_encoder is None:
        yield
        return
    handle = model.text_encoder.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


def _model_inputs(model: DMD, batch, zero: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(text, audio, vision)`` of a batch with the modalities in ``zero`` replaced by zeros."""
    text, audio, vision = batch.text, batch.audio, batch.vision
    if "L" in zero and model.text_encoder is None:
        text = torch.zeros_like(text)
    if "A" in zero:
        audio = torch.zeros_like(audio)
    if "V" in zero:
        vision = torch.zeros_like(vision)
    return text, audio, vision


@torch.inference_mode()
def predict(
    model: DMD,
    split: Split,
    device: str | torch.device | None = None,
    zero: Iterable[str] = (),
    batch_size: int = 64,
    precision: str = "fp32",
) -> Predictions:
    """Predictions and per-sample GD edges of ``model`` (eval mode) on every sample of ``split``.

    ``zero``: modalities replaced by zeros at the input (``("A",)``, ``("V", "A")``, ...);
    with BERT, language is zeroed at BERT's output. ``precision``: the forward's autocast
    (``TrainConfig.precision``; the outputs are float32 whatever it is). The model's
    train/eval mode is restored. On CPU, PyTorch's thread count follows the cores other
    processes leave free (:class:`dmd_core.threads.FittedThreads`: on a busy machine a team of
    threads waits for its slowest member at every operation).
    """
    zero = _check_zero(zero)
    device = pick_device(device) if device is not None else next(model.parameters()).device
    model = model.to(device)
    was_training = model.training
    model.eval()
    preds, labels, homo, hetero = [], [], [], []
    try:
        with _zero_text_encoder(model, "L" in zero), FittedThreads(active=device.type == "cpu") as threads:
            for batch in split.batches(batch_size, shuffle=False, device=device):
                threads.step()
                with autocast(device, precision):
                    out = model(*_model_inputs(model, batch, zero))
                preds.append(out.prediction.float().reshape(-1))
                labels.append(batch.labels.float().reshape(-1))
                homo.append(out.homo_graph.edges.float().T)  # (B, 6)
                hetero.append(out.hetero_graph.edges.float().T)
    finally:
        model.train(was_training)
    return Predictions(
        ids=list(split.ids),
        labels=torch.cat(labels).cpu(),
        prediction=torch.cat(preds).cpu(),
        homo_edges=torch.cat(homo).cpu(),
        hetero_edges=torch.cat(hetero).cpu(),
    )


def predict_arrays(
    model: DMD,
    text: Any,
    audio: Any,
    vision: Any,
    labels: Any = None,
    ids: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    zero: Iterable[str] = (),
    batch_size: int = 64,
) -> Predictions:
    """:func:`predict` for arrays in memory (numpy arrays or tensors), e.g. new clips without labels.

    ``text``: ``(N, L, d_t)`` features, or ``(N, 3, L)`` token ids / mask / segments for a DMD with
    BERT; ``audio (N, L_a, d_a)``; ``vision (N, L_v, d_v)``; ``labels (N,)`` or None; ``ids`` (default
    ``"0"``, ``"1"``, ...). Shapes are checked against ``model.config``; non-finite features become 0,
    as when an MMSA file is loaded (the book's data-format page).
    """
    from .data import Split, check_split

    def features(x: Any) -> torch.Tensor:
        return torch.nan_to_num(torch.as_tensor(np.asarray(x), dtype=torch.float32), nan=0.0, posinf=0.0, neginf=0.0)

    text_t = torch.as_tensor(np.asarray(text), dtype=torch.long) if model.config.use_bert else features(text)
    arrays = {"text": text_t, "audio": features(audio), "vision": features(vision)}
    n = len(arrays["audio"])
    if labels is None:
        labels_t = torch.full((n,), float("nan"))
    else:
        labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.float32).reshape(-1)
        if not torch.isfinite(labels_t).all():
            raise ValueError("predict_arrays: labels must be finite (give labels=None for data without labels)")
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    for key, value in {**arrays, "labels": labels_t, "ids": ids}.items():
        if len(value) != n:
            raise ValueError(f"predict_arrays: {key} holds {len(value)} samples, audio {n}")
    split = Split(name="arrays", **arrays, labels=labels_t, audio_lengths=None, vision_lengths=None, ids=ids,
                  raw_text=[""] * n)  # fmt: skip
    check_split(split, model.config)
    return predict(model, split, device=device, zero=zero, batch_size=batch_size)


def scores(pred: Predictions) -> dict[str, float]:
    """Metrics + ``loss`` (mean L1, the reference's validation loss) + ``n``."""
    if not pred.has_labels:
        raise ValueError(f"no metrics without labels ({int(pred.labels.isnan().sum())} of {len(pred.labels)} missing)")
    loss = float((pred.prediction.double() - pred.labels.double()).abs().mean())
    return {**regression_metrics(pred.prediction, pred.labels), "loss": loss, "n": len(pred.labels)}


def evaluate(
    model: DMD,
    split: Split,
    device: str | torch.device | None = None,
    zero: Iterable[str] = (),
    batch_size: int = 64,
) -> dict[str, float]:
    """MMSA metrics and the L1 ``loss`` of ``model`` on ``split``, optionally with modalities ``zero``-ed.

    Returns ``{Has0_acc_2, ..., Corr, loss, n}`` (plain numbers).
    """
    return scores(predict(model, split, device=device, zero=zero, batch_size=batch_size))


def missing_modality_table(
    model: DMD, split: Split, device: str | torch.device | None = None, batch_size: int = 64
) -> pd.DataFrame:
    """Metrics with every subset of modalities zeroed at test time (none, one, two): 7 rows.

    Columns: ``present`` (e.g. ``"L+V"``), ``zeroed`` (e.g. ``"A"``, or ``"-"``), the metrics, ``loss``.
    """
    import pandas as pd

    rows = []
    for k in range(3):
        for zero in combinations(MODALITIES, k):
            present = "+".join(m for m in MODALITIES if m not in zero)
            scores = evaluate(model, split, device=device, zero=zero, batch_size=batch_size)
            rows.append({"present": present, "zeroed": "+".join(zero) or "-", **scores})
    return pd.DataFrame(rows)
