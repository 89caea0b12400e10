"""``load_mmsa``: an MMSA pickle read, validated and cleaned into an :class:`MMSADataset`.

Sequence lengths and feature sizes are read from the arrays; with a ``DMDConfig`` they are
checked against it (the model's linear layers fix them). See the book's data-format page.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import DMDConfig
from . import mmap
from .dataset import SPLITS, ArrayLike, DataFormatError, MMSADataset, Split
from .pickles import read_pickle
from .validate import Allocator, check_dataset, find_splits, prepare_split, split_names

log = logging.getLogger(__name__)

KNOWN_DIMS = {(20, 5): "mosi", (35, 74): "mosei", (709, 33): "sims"}  # (d_v, d_a) -> dataset


def load_mmsa(
    path: str | Path,
    text: Literal["auto", "bert", "features"] = "auto",
    config: DMDConfig | None = None,
    mmap_dir: str | Path | None = None,
    splits: Sequence[str] | Literal["all"] = SPLITS,
    labels: Literal["required", "optional"] = "required",
) -> MMSADataset:
    """Read and validate an MMSA pickle (MOSI/MOSEI, aligned or unaligned; CH-SIMS too).

    ``text``: "bert" gives ``(N, 3, L)`` int64 token ids / mask / segments, "features" the
    stored ``(N, L, d_t)`` features; "auto" is "bert" when ``config.bert`` is set, else
    "features". ``config``: check sequence lengths, feature sizes and the BERT vocabulary
    size (``config.bert.config['vocab_size']``, else 30522) against it. ``mmap_dir``: convert
    once to ``.npy`` files there (reused while the source's size and mtime are unchanged)
    and memory-map text/audio/vision. ``splits``: the splits to return; "all": every split the
    file holds, whatever its name (new data may hold one split; not with ``mmap_dir``).
    ``labels``: "optional" accepts splits without ``regression_labels`` (prediction on new data:
    their labels are NaN); every other check is the same.

    Raises :class:`DataFormatError` for every problem with the file's content.
    """
    path = Path(path)
    if text not in ("auto", "bert", "features"):
        raise ValueError(f"load_mmsa: text must be 'auto', 'bert' or 'features', found {text!r}")
    mode = ("bert" if config is not None and config.bert is not None else "features") if text == "auto" else text
    if config is not None and (mode == "bert") != (config.bert is not None):
        raise ValueError(f"load_mmsa: text={mode!r} but config.bert is {config.bert!r}; a DMD with BERT reads token "
                         "ids (text='bert'), one without reads features (text='features')")  # fmt: skip
    if labels not in ("required", "optional"):
        raise ValueError(f"load_mmsa: labels must be 'required' or 'optional', found {labels!r}")
    require_labels = labels == "required"
    every_split = isinstance(splits, str) and splits == "all"
    if every_split and mmap_dir is not None:
        raise ValueError("load_mmsa: splits='all' cannot be combined with mmap_dir; name the splits")
    if not every_split:
        splits = list(splits)
        if not splits or not all(isinstance(s, str) for s in splits):
            raise ValueError(f"load_mmsa: splits must be 'all' or a non-empty sequence of names, found {splits!r}")
    if not path.is_file():
        raise FileNotFoundError(f"load_mmsa: no MMSA file at {path}")
    if mmap_dir is None:
        if path.stat().st_size > 4e9:
            log.warning("%s is %.1f GB; load_mmsa(..., mmap_dir=...) needs far less memory", path,
                        path.stat().st_size / 1e9)  # fmt: skip
        data = read_pickle(path)
        if every_split:
            splits = find_splits(path, data)
        split_names(path, data, splits)
        prepared = {name: prepare_split(path, name, data[name], Allocator(None), require_labels) for name in splits}
        extra = {k: v for k, v in data.items() if k not in SPLITS and k not in splits}
        del data
    else:
        folder = mmap.cache_folder(path, Path(mmap_dir))
        manifest = folder / "manifest.json"
        if not (manifest.is_file() and mmap.is_fresh(json.loads(manifest.read_text(encoding="utf-8")), path, splits)):
            log.info("converting %s to memory-mapped arrays in %s", path, folder)
            mmap.convert(path, folder, splits, require_labels)
        prepared, extra = mmap.open_cached(path, folder, splits)
        for name in splits:  # a cache converted for prediction may hold a split without labels
            if require_labels and not prepared[name].stats.get("labelled", True):
                raise DataFormatError(path, name, "regression_labels", expected="this key (labels; to score a file "
                                      "without labels: dmd predict)", found="no labels in this split")  # fmt: skip
    info = check_dataset(path, {k: prepared[k] for k in splits}, mode, config)
    text_key = "text_bert" if mode == "bert" else "text"
    out = {}
    for name in splits:
        prep = prepared[name]
        a = prep.arrays

        def wrap(x: np.ndarray | None) -> ArrayLike | None:
            if x is None or isinstance(x, np.memmap):
                return x
            return torch.from_numpy(x)

        out[name] = Split(name=name, text=wrap(a[text_key]), audio=wrap(a["audio"]), vision=wrap(a["vision"]),
                          labels=torch.from_numpy(np.asarray(a["labels"])), audio_lengths=wrap(a.get("audio_lengths")),
                          vision_lengths=wrap(a.get("vision_lengths")), ids=prep.ids, raw_text=prep.raw_text,
                          annotations=prep.annotations)  # fmt: skip
    stats = {name: {"n": prepared[name].stats["n"], "nonfinite_replaced": prepared[name].stats["nonfinite"]}
             for name in splits}  # fmt: skip
    return MMSADataset(path=path, splits=out, text_mode=mode, extra=extra, dataset_name=_guess_name(extra, info),
                       stats=stats, mmap_dir=None if mmap_dir is None else Path(mmap_dir), **info)  # fmt: skip


def _guess_name(extra: dict[str, Any], info: dict[str, Any]) -> str | None:
    synth = extra.get("synth")
    if isinstance(synth, dict) and isinstance(synth.get("spec"), dict) and synth.get("generator") == "dmd_core.synth":
        return synth["spec"].get("dataset")
    return KNOWN_DIMS.get(tuple(info["feature_dims"][1:]))


def open_dataset(
    dataset_or_path: MMSADataset | str | Path,
    model_config: DMDConfig | None,
    text: str = "auto",
    mmap_dir: str | None = None,
) -> tuple[MMSADataset, DMDConfig]:
    """A dataset (loaded when given a path) and the model config for it (its suggested preset when None),
    with every split's shapes checked against the config."""
    if isinstance(dataset_or_path, (str, Path)):
        ds = load_mmsa(dataset_or_path, text=text, config=model_config, mmap_dir=mmap_dir)
    else:
        ds = dataset_or_path
    config = model_config if model_config is not None else ds.suggest_config()
    for name in ("train", "valid", "test"):
        check_split(ds[name], config)
    return ds, config


def check_split(split: Split, cfg: DMDConfig) -> None:
    """The split's tensors have the shapes the model was built for (named error otherwise)."""
    L, V, A = cfg.seq_lens
    dl, dv, da = cfg.feature_dims
    if cfg.use_bert:
        want_text = (3, L)
    else:
        want_text = (L, dl)
    for key, want in (("text", want_text), ("audio", (A, da)), ("vision", (V, dv))):
        found = tuple(getattr(split, key).shape[1:])
        if found != want:
            hint = (
                " (BERT token ids expected: load the file with text='bert')" if key == "text" and cfg.use_bert else ""
            )
            raise ValueError(f"split {split.name!r}, {key}: expected per-sample shape {want}, found {found}{hint}")


def data_reference(dataset_or_path: Any) -> str | None:
    """The absolute path of the data file behind ``dataset_or_path`` (recorded in a run's ``config.json``)."""
    if isinstance(dataset_or_path, (str, Path)):
        return str(Path(dataset_or_path).resolve())
    path = getattr(dataset_or_path, "path", None)
    return None if path is None else str(path)
