"""Validating and cleaning one split of an MMSA file (what :func:`~dmd_core.data.load_mmsa` checks).

Each split's keys are checked for presence, type, shape and agreement with each other;
non-finite audio, vision and text features become 0, as every MMSA loader does for the
``-inf`` of COVAREP (counted in the split's stats). Then the splits are checked against each
other, the text mode and a model config. Every problem raises :class:`DataFormatError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import MODALITIES, DMDConfig
from .dataset import BERT_VOCAB_SIZE, REQUIRED_KEYS, SPLITS, DataFormatError
from .pickles import CHUNK_BYTES

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    arrays: dict[str, np.ndarray]  # text, text_bert, audio, vision (those present), labels, *_lengths
    ids: list[str]
    raw_text: list[str]
    annotations: list[str] | None
    stats: dict[str, Any]


class Allocator:
    """Where converted arrays go: fresh memory, or ``.npy`` files in a cache folder."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def __call__(self, split: str, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if self.folder is None:
            return np.empty(shape, dtype=dtype)
        return np.lib.format.open_memmap(self.folder / f"{split}.{key}.npy", mode="w+", dtype=dtype, shape=shape)

    def adopt(self, split: str, key: str, src: np.ndarray) -> np.ndarray | None:
        """``src`` itself, cleaned in place, when it already has the final layout and may be changed."""
        if src.dtype != np.float32 or not src.flags.c_contiguous:
            return None
        if self.folder is None:
            return src if (src.flags.writeable and not isinstance(src, np.memmap)) else None
        spilled = isinstance(src, np.memmap) and src.filename is not None
        if spilled and Path(src.filename).resolve().parent.parent == self.folder.resolve():
            target = self.folder / f"{split}.{key}.npy"
            os.replace(src.filename, target)
            return np.load(target, mmap_mode="r+")
        return None


def _strings(path: Path, split: str, key: str, value: Any) -> list[str]:
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise DataFormatError(path, split, key, expected="a 1-D sequence (N,)", found=f"shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            return [repr(float(v)) for v in arr]
        return [str(v) for v in arr.astype(np.int64)]
    if arr.dtype.kind in "iub":
        return [str(v) for v in arr.tolist()]
    out = []
    for v in arr.tolist():
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        elif isinstance(v, float) and v == int(v):
            v = str(int(v))
        out.append(str(v))
    return out


def _numeric(path: Path, split: str, key: str, value: Any, ndim: int, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise DataFormatError(path, split, key, expected=f"a numeric array {what}",
                              found=f"dtype {arr.dtype} ({type(value).__name__})")  # fmt: skip
    if arr.ndim != ndim:
        raise DataFormatError(path, split, key, expected=f"a {ndim}-D array {what}", found=f"shape {arr.shape}")
    return arr


def _clean_features(path: Path, split: str, key: str, src: np.ndarray, alloc: Allocator) -> tuple[np.ndarray, dict]:
    """float32 copy (or the array itself) with non-finite values set to 0; counts of what was replaced."""
    out = alloc.adopt(split, key, src)
    in_place = out is not None
    if out is None:
        out = alloc(split, key, src.shape, np.float32)
    counts = {"nan": 0, "posinf": 0, "neginf": 0}
    step = max(1, CHUNK_BYTES // max(1, int(np.prod(src.shape[1:])) * 4))
    for start in range(0, src.shape[0], step):
        rows = slice(start, start + step)
        block = out[rows] if in_place else np.array(src[rows], dtype=np.float32)
        bad = ~np.isfinite(block)
        if bad.any():
            counts["nan"] += int(np.isnan(block).sum())
            counts["posinf"] += int(np.isposinf(block).sum())
            counts["neginf"] += int(np.isneginf(block).sum())
            block[bad] = 0.0
        if not in_place:
            out[rows] = block
    if isinstance(out, np.memmap):
        out.flush()
    if sum(counts.values()):
        log.info("%s: split %r, key %r: replaced %d -inf, %d +inf and %d NaN values with 0", path, split, key,
                 counts["neginf"], counts["posinf"], counts["nan"])  # fmt: skip
    return out, counts


def _token_stats(tokens: np.ndarray) -> dict[str, Any]:
    ids, mask, seg = tokens[:, 0], tokens[:, 1], tokens[:, 2]
    finite = bool(np.all(np.isfinite(tokens))) if tokens.dtype.kind == "f" else True
    integral = finite and (tokens.dtype.kind != "f" or bool(np.all(tokens == np.round(tokens))))
    bad_ids = ids[(ids != np.round(ids))] if tokens.dtype.kind == "f" and finite else ids[:0]
    return {
        "integral": integral,
        "non_integral_example": float(bad_ids.reshape(-1)[0]) if bad_ids.size else None,
        "finite": finite,
        "id_min": float(np.nanmin(ids)) if ids.size else 0.0,
        "id_max": float(np.nanmax(ids)) if ids.size else 0.0,
        "mask_values": sorted({float(v) for v in np.unique(mask)[:10]}),
        "segment_values": sorted({float(v) for v in np.unique(seg)[:10]}),
    }


def prepare_split(path: Path, name: str, raw: Any, alloc: Allocator, require_labels: bool = True) -> Prepared:
    """Check the structure of one split and convert it (float32 features, int64 tokens, (N,) labels).

    ``require_labels=False`` (prediction on new data): a split without ``regression_labels`` gets NaN
    labels and ``stats["labelled"] = False``; labels that are present are checked as always.
    """
    if not isinstance(raw, dict):
        raise DataFormatError(path, name, expected="a dict of arrays (text, audio, vision, regression_labels, ...)",
                              found=f"a {type(raw).__name__}")  # fmt: skip
    labelled = "regression_labels" in raw or require_labels
    for key in REQUIRED_KEYS:
        if key not in raw and (labelled or key != "regression_labels"):
            hint = " (to score a file without labels: dmd predict)" if key == "regression_labels" else ""
            raise DataFormatError(path, name, key, expected="this key (an MMSA split holds " + ", ".join(REQUIRED_KEYS)
                                  + f" and text or text_bert){hint}", found=f"keys {sorted(map(str, raw))}")  # fmt: skip
    if "text" not in raw and "text_bert" not in raw:
        raise DataFormatError(path, name, "text", expected="'text' (features) or 'text_bert' (token ids)",
                              found=f"keys {sorted(map(str, raw))}")  # fmt: skip
    count_key = "regression_labels" if labelled else "audio"  # what the sample count is read from
    if labelled:
        labels = _numeric(path, name, "regression_labels", raw["regression_labels"],
                          np.ndim(raw["regression_labels"]), "of labels")  # fmt: skip
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels.reshape(-1)
        if labels.ndim != 1:
            raise DataFormatError(path, name, "regression_labels", expected="shape (N,) or (N, 1)",
                                  found=f"shape {labels.shape}")  # fmt: skip
    else:
        labels = np.full(len(_numeric(path, name, "audio", raw["audio"], 3, "(N, T_a, d_a)")), np.nan)
    n = labels.shape[0]
    if n == 0:
        raise DataFormatError(path, name, count_key, expected="at least one sample", found="an empty split")
    labels = labels.astype(np.float32)
    if labelled and not np.all(np.isfinite(labels)):
        bad = np.flatnonzero(~np.isfinite(labels))
        raise DataFormatError(
            path,
            name,
            "regression_labels",
            expected="finite sentiment labels",
            found=f"{len(bad)} NaN/infinite labels (first at index {bad[0]}: {labels[bad[0]]})",
        )
    arrays: dict[str, np.ndarray] = {"labels": labels}
    dims = {"audio": "(N, T_a, d_a)", "vision": "(N, T_v, d_v)", "text": "(N, L, d_t)", "text_bert": "(N, 3, L)"}
    shaped = {k: _numeric(path, name, k, raw[k], 3, dims[k]) for k in dims if k in raw}
    lists = {k: raw[k] for k in ("id", "raw_text", "annotations", "audio_lengths", "vision_lengths") if k in raw}
    for key, value in {**shaped, **lists}.items():
        if len(value) != n:
            raise DataFormatError(path, name, key, expected=f"{n} samples (as {count_key})",
                                  found=f"{len(value)}")  # fmt: skip
    if "text_bert" in shaped and shaped["text_bert"].shape[1] != 3:
        raise DataFormatError(path, name, "text_bert", expected="3 channels (token ids, attention mask, segments): "
                              "shape (N, 3, L)", found=f"shape {shaped['text_bert'].shape}")  # fmt: skip
    stats: dict[str, Any] = {"n": n, "shapes": {k: list(v.shape) for k, v in shaped.items()}, "nonfinite": {},
                             "labelled": labelled}  # fmt: skip
    for key in ("text", "audio", "vision"):
        if key in shaped:
            arrays[key], stats["nonfinite"][key] = _clean_features(path, name, key, shaped[key], alloc)
    if "text_bert" in shaped:
        tokens = np.asarray(shaped["text_bert"])
        stats["tokens"] = _token_stats(tokens)
        out = alloc(name, "text_bert", tokens.shape, np.int64)
        out[...] = np.nan_to_num(tokens, nan=-1, posinf=-1, neginf=-1) if tokens.dtype.kind == "f" else tokens
        arrays["text_bert"] = out
    has = [k in raw for k in ("audio_lengths", "vision_lengths")]
    if any(has) and not all(has):
        missing = "vision_lengths" if has[0] else "audio_lengths"
        raise DataFormatError(path, name, missing, expected="both audio_lengths and vision_lengths (unaligned file)",
                              found="only the other one")  # fmt: skip
    if all(has):
        for key, m in (("audio_lengths", "audio"), ("vision_lengths", "vision")):
            arrays[key] = _lengths(path, name, key, raw[key], shaped[m].shape[1])
    return Prepared(arrays, _strings(path, name, "id", raw["id"]), _strings(path, name, "raw_text", raw["raw_text"]),
                     _strings(path, name, "annotations", raw["annotations"]) if "annotations" in raw else None,
                     stats)  # fmt: skip


def _lengths(path: Path, split: str, key: str, value: Any, total: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind not in "fiu" or arr.ndim != 1:
        raise DataFormatError(path, split, key, expected="a 1-D array of integer lengths",
                              found=f"dtype {arr.dtype}, shape {arr.shape}")  # fmt: skip
    if arr.dtype.kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise DataFormatError(path, split, key, expected="integer lengths", found="non-integer values")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 1) | (arr > total))
    if len(bad):
        raise DataFormatError(
            path,
            split,
            key,
            expected=f"lengths in [1, {total}] (the padded sequence length)",
            found=f"{len(bad)} out of range, e.g. {int(arr[bad[0]])} at index {bad[0]}",
        )
    return arr


# ----------------------------------------------------------------------------- checks against the mode and config


def check_dataset(
    path: Path, prepared: dict[str, Prepared], text_mode: str, config: DMDConfig | None
) -> dict[str, Any]:
    """Checks that depend on the text mode and the config; returns aligned, seq_lens, feature_dims."""
    text_key = "text_bert" if text_mode == "bert" else "text"
    first: dict[str, tuple[str, list[int]]] = {}
    for name, prep in prepared.items():
        shapes = prep.stats["shapes"]
        if text_key not in shapes:
            hint = " (load with text='bert')" if text_key == "text" else " (load with text='features')"
            raise DataFormatError(path, name, text_key, expected=f"this key for text mode {text_mode!r}{hint}",
                                  found="it is missing")  # fmt: skip
        for key in (text_key, "audio", "vision") + (("text",) if text_key == "text_bert" and "text" in shapes else ()):
            if key not in first:
                first[key] = (name, shapes[key])
            elif shapes[key][1:] != first[key][1][1:]:
                ref_split, ref = first[key]
                raise DataFormatError(path, name, key, expected=f"per-sample shape {tuple(ref[1:])} as in split "
                                      f"{ref_split!r}", found=f"{tuple(shapes[key][1:])}")  # fmt: skip
    names = list(prepared)
    unaligned = ["audio_lengths" in prepared[n].arrays for n in names]
    if any(unaligned) and not all(unaligned):
        bad = names[unaligned.index(False)]
        raise DataFormatError(path, bad, "audio_lengths", expected="lengths in every split, as in split "
                              f"{names[unaligned.index(True)]!r}", found="no lengths in this split")  # fmt: skip
    text_len = first[text_key][1][2] if text_mode == "bert" else first["text"][1][1]
    seq_lens = (text_len, first["vision"][1][1], first["audio"][1][1])
    text_dim = first["text"][1][2] if "text" in first else 768
    feature_dims = (text_dim, first["vision"][1][2], first["audio"][1][2])
    if config is not None:
        keys = {"L": text_key, "V": "vision", "A": "audio"}
        for i, m in enumerate(MODALITIES):
            if seq_lens[i] != config.seq_lens[i]:
                raise DataFormatError(
                    path,
                    first[keys[m]][0],
                    keys[m],
                    expected=f"sequence length "
                    f"{config.seq_lens[i]} for {m} (DMDConfig.seq_lens, the model was built for "
                    "it)",
                    found=f"{seq_lens[i]} (per-sample shape {tuple(first[keys[m]][1][1:])})",
                )
            if (m != "L" or text_mode == "features") and feature_dims[i] != config.feature_dims[i]:
                raise DataFormatError(path, first[keys[m]][0], keys[m], expected=f"feature size "
                                      f"{config.feature_dims[i]} for {m} (DMDConfig.feature_dims)",
                                      found=f"{feature_dims[i]}")  # fmt: skip
    aligned = not all(unaligned)
    if aligned and len(set(seq_lens)) != 1:
        raise DataFormatError(path, names[0], "audio_lengths", expected="audio_lengths and vision_lengths in an "
                              f"unaligned file (sequence lengths L, V, A = {seq_lens} differ)",
                              found="no lengths")  # fmt: skip
    if text_mode == "bert":
        vocab = BERT_VOCAB_SIZE
        if config is not None and config.bert is not None and config.bert.config is not None:
            vocab = int(config.bert.config.get("vocab_size", BERT_VOCAB_SIZE))
        for name, prep in prepared.items():
            _check_tokens(path, name, prep.stats["tokens"], vocab)
    return dict(aligned=aligned, seq_lens=seq_lens, feature_dims=feature_dims)


def _check_tokens(path: Path, split: str, tok: dict[str, Any], vocab: int) -> None:
    if not tok["finite"] or not tok["integral"]:
        example = "NaN/infinite values" if not tok["finite"] else f"e.g. {tok['non_integral_example']}"
        raise DataFormatError(path, split, "text_bert", expected="integer token ids, mask and segment ids",
                              found=f"non-integer values ({example})")  # fmt: skip
    if tok["id_min"] < 0 or tok["id_max"] >= vocab:
        raise DataFormatError(path, split, "text_bert", expected=f"token ids in [0, {vocab}) (the BERT vocabulary)",
                              found=f"ids from {int(tok['id_min'])} to {int(tok['id_max'])}")  # fmt: skip
    if not set(tok["mask_values"]) <= {0.0, 1.0}:
        raise DataFormatError(path, split, "text_bert", expected="an attention mask (channel 1) of 0/1",
                              found=f"values {tok['mask_values']}")  # fmt: skip
    if not set(tok["segment_values"]) <= {0.0, 1.0}:
        raise DataFormatError(path, split, "text_bert", expected="segment ids (channel 2) of 0/1",
                              found=f"values {tok['segment_values']}")  # fmt: skip


def split_names(path: Path, data: dict[str, Any], wanted: Sequence[str]) -> list[str]:
    for name in wanted:
        if name not in data:
            raise DataFormatError(path, name, expected=f"split {name!r} at the top level",
                                  found=f"top-level keys {sorted(map(str, data))}")  # fmt: skip
    return list(dict.fromkeys([*wanted, *(s for s in SPLITS if s in data)]))


def find_splits(path: Path, data: dict[str, Any]) -> list[str]:
    """Every top-level key holding a split (a dict with any of a split's keys), in the file's order.

    What ``load_mmsa(..., splits="all")`` reads: a file of new data may hold one split of any name.
    """
    keys = {*REQUIRED_KEYS, "text", "text_bert"}
    names = [str(k) for k, v in data.items() if isinstance(v, dict) and keys & set(map(str, v))]
    if not names:
        raise DataFormatError(path, expected="at least one split at the top level (a dict of arrays: "
                              + ", ".join(REQUIRED_KEYS) + ", text or text_bert)",
                              found=f"top-level keys {sorted(map(str, data))}")  # fmt: skip
    return names
