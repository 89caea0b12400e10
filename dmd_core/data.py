"""Reading the MMSA pickles of CMU-MOSI / CMU-MOSEI (and CH-SIMS): validation, cleaning, batches.

``load_mmsa(path)`` reads an ``aligned_50.pkl`` / ``unaligned_50.pkl`` once and returns an
:class:`MMSADataset` whose :class:`Split` objects yield :class:`Batch` tuples of tensors
ready for ``DMD(config)(text, audio, vision)``. The layout is ``mmsa-format.md``'s:
a dict with ``train`` / ``valid`` / ``test``, each a dict of arrays; unknown top-level keys
are kept in ``MMSADataset.extra``; unknown split keys are ignored.

* Sequence lengths and feature sizes are read from the arrays; with a ``DMDConfig`` they
  are checked against it (the model's linear layers fix them).
* Every problem raises :class:`DataFormatError` naming the file, the split and the key,
  with what was expected and what was found.
* Non-finite audio, vision and text features become 0, as every MMSA loader does for the
  ``-inf`` of COVAREP; the counts are logged and kept in ``MMSADataset.stats``.
* ``mmap_dir``: the file is converted once to ``.npy`` files there (large arrays are
  streamed out of the pickle one at a time, so the conversion needs about the memory of the
  largest array, not of the file) and memory-mapped afterwards; MOSEI unaligned then
  trains within a 12 GB machine. Without it everything is held in memory as tensors.
* The user's file is only ever opened for reading. Pickles can run code when loaded: the
  reader only resolves the NumPy, PyTorch and builtin names that data files use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from .config import MODALITIES, BertSpec, DMDConfig, preset

log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
BERT_VOCAB_SIZE = 30522
REQUIRED_KEYS = ("id", "raw_text", "audio", "vision", "regression_labels")
CACHE_FORMAT = 1
_SPILL_MIN_BYTES = 1 << 20
_CHUNK_BYTES = 64 << 20
_KNOWN_DIMS = {(20, 5): "mosi", (35, 74): "mosei", (709, 33): "sims"}  # (d_v, d_a) -> dataset


class DataFormatError(ValueError):
    """An MMSA file that cannot be used as it is; the message names file, split and key."""

    def __init__(self, path: str | Path, split: str | None = None, key: str | None = None, *,
                 expected: str, found: str) -> None:  # fmt: skip
        self.path, self.split, self.key, self.expected, self.found = str(path), split, key, expected, found
        where = str(path)
        if split is not None:
            where += f", split {split!r}"
        if key is not None:
            where += f", key {key!r}"
        super().__init__(f"{where}: expected {expected}; found {found}")


class Batch(NamedTuple):
    """One mini-batch. ``text`` is ``(B, 3, L)`` int64 ids/mask/segments or ``(B, L, d_t)`` float32;
    ``audio (B, L_a, d_a)``, ``vision (B, L_v, d_v)`` float32, ``labels (B,)`` float32, all on the
    requested device; ``index (B,)`` int64 sample indices into the split, on the CPU. Unshuffled
    batches of a split already on the target device are views of it: do not modify them in place."""

    text: torch.Tensor
    audio: torch.Tensor
    vision: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


ArrayLike = torch.Tensor | np.ndarray


def _move(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    if device is None or t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))  # a writable copy of a memory map


def _take(x: ArrayLike, rows: slice | torch.Tensor) -> torch.Tensor:
    """Rows of a tensor (a view for a slice) or of a (memory-mapped) array (read into memory)."""
    if isinstance(x, torch.Tensor):
        return x[rows] if isinstance(rows, slice) else x.index_select(0, rows.to(x.device))
    if isinstance(rows, slice):
        return torch.from_numpy(np.array(x[rows]))
    return torch.from_numpy(np.asarray(x[rows.numpy()]))


@dataclass(eq=False, repr=False)
class Split:
    """One split of an MMSA file, ``N`` samples.

    ``text`` ``(N, 3, L)`` int64 (BERT ids, mask, segments) or ``(N, L, d_t)`` float32;
    ``audio (N, L_a, d_a)``, ``vision (N, L_v, d_v)`` float32 (tensors, or read-only
    memory-mapped numpy arrays when loaded with ``mmap_dir``); ``labels (N,)`` float32;
    ``audio_lengths`` / ``vision_lengths`` ``(N,)`` int64 in unaligned files, else None.
    """

    name: str
    text: ArrayLike
    audio: ArrayLike
    vision: ArrayLike
    labels: torch.Tensor
    audio_lengths: torch.Tensor | None
    vision_lengths: torch.Tensor | None
    ids: list[str]
    raw_text: list[str]
    annotations: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        where = "memory-mapped" if isinstance(self.audio, np.ndarray) else str(self.labels.device)
        return (f"Split({self.name!r}, n={len(self)}, text={tuple(self.text.shape)}, audio={tuple(self.audio.shape)}, "
                f"vision={tuple(self.vision.shape)}, {where})")  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def _map(self, fn, index: list[int] | None = None) -> Split:
        pick = (lambda seq: seq) if index is None else (lambda seq: [seq[i] for i in index])
        return Split(
            name=self.name, text=fn(self.text), audio=fn(self.audio), vision=fn(self.vision), labels=fn(self.labels),
            audio_lengths=None if self.audio_lengths is None else fn(self.audio_lengths),
            vision_lengths=None if self.vision_lengths is None else fn(self.vision_lengths),
            ids=pick(self.ids), raw_text=pick(self.raw_text),
            annotations=None if self.annotations is None else pick(self.annotations),
        )  # fmt: skip

    def to(self, device: str | torch.device) -> Split:
        """All arrays as tensors on ``device`` (memory-mapped arrays are read in; pinned copies for CUDA)."""
        device = torch.device(device)
        return self._map(lambda x: _move(_as_tensor(x), device))

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> Split:
        """The samples ``indices`` (in that order), as a new in-memory split."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
        if len(index) and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
            raise IndexError(f"Split {self.name!r}: indices out of range for {len(self)} samples")
        index = index % max(len(self), 1)
        return self._map(lambda x: _take(x, index), index.tolist())

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: str | torch.device | None = None, drop_last: bool = False) -> Iterator[Batch]:  # fmt: skip
        """Mini-batches in order, or in ``torch.randperm(N, generator=generator)`` order when shuffling.

        The same generator state gives the same order. ``device``: where the tensors go
        (default: where the split lives); CPU -> CUDA copies are pinned and non-blocking.
        """
        if batch_size < 1:
            raise ValueError(f"Split.batches: batch_size must be positive, found {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        target = None if device is None else torch.device(device)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            if drop_last and stop - start < batch_size:
                break
            rows = order[start:stop] if order is not None else slice(start, stop)
            index = rows if order is not None else torch.arange(start, stop)
            yield Batch(*(_move(_take(x, rows), target) for x in (self.text, self.audio, self.vision, self.labels)),
                        index=index)  # fmt: skip


@dataclass(eq=False, repr=False)
class MMSADataset:
    """A loaded MMSA file: its splits and what was learned about it.

    ``seq_lens`` and ``feature_dims`` are ordered L, V, A; ``feature_dims[0]`` is the stored
    text feature size (768 when the file holds only token ids). ``stats[split]`` holds the
    sample count and the non-finite values replaced per key.
    """

    path: Path
    splits: dict[str, Split]
    aligned: bool
    seq_lens: tuple[int, int, int]
    feature_dims: tuple[int, int, int]
    text_mode: Literal["bert", "features"]
    extra: dict[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    mmap_dir: Path | None = None

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    def __contains__(self, name: str) -> bool:
        return name in self.splits

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return (f"MMSADataset({self.path.name!r}, {self.dataset_name or '?'}, "
                f"{'aligned' if self.aligned else 'unaligned'}, text={self.text_mode}, seq_lens={self.seq_lens}, "
                f"feature_dims={self.feature_dims}, {sizes})")  # fmt: skip

    def to(self, device: str | torch.device) -> MMSADataset:
        """Every split on ``device`` (see :meth:`Split.to`)."""
        splits = {k: v.to(device) for k, v in self.splits.items()}
        return MMSADataset(self.path, splits, self.aligned, self.seq_lens, self.feature_dims, self.text_mode,
                           self.extra, self.dataset_name, self.stats, None)  # fmt: skip

    def suggest_config(self, **overrides: Any) -> DMDConfig:
        """The official preset for this file, with its sequence lengths and feature sizes.

        ``bert`` defaults to ``BertSpec()`` (bert-base-uncased) when the text is token ids,
        else None; any other :class:`DMDConfig` field can be overridden. Files that are
        neither MOSI nor MOSEI get MOSI's hyper-parameters (logged).
        """
        name = self.dataset_name if self.dataset_name in ("mosi", "mosei") else "mosi"
        if self.dataset_name not in ("mosi", "mosei"):
            log.warning("%s: dataset %s has no official DMD preset; using MOSI's hyper-parameters",
                        self.path, self.dataset_name or "(unknown)")  # fmt: skip
        bert = overrides.pop("bert", BertSpec() if self.text_mode == "bert" else None)
        if isinstance(bert, str):
            bert = BertSpec(name_or_path=bert)
        text_dim = overrides.pop("text_dim", None)
        if text_dim is None:
            text_dim = (bert.hidden_size or 768) if bert is not None else self.feature_dims[0]
        fields: dict[str, Any] = dict(seq_lens=self.seq_lens, feature_dims=(text_dim, *self.feature_dims[1:]))
        fields.update(overrides)
        return preset(name, self.aligned, bert=bert, **fields)


# ----------------------------------------------------------------------------- reading the pickle

_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                  "complex", "bool", "slice", "range", "object"}  # fmt: skip
_NUMPY_NAMES = {"_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype", "_mareconstruct", "MaskedArray"}


def _allowed(module: str, name: str) -> bool:
    root = module.split(".")[0]
    if root == "numpy":
        return name in _NUMPY_NAMES or module == "numpy.dtypes"
    if module in ("builtins", "__builtin__"):
        return name in _SAFE_BUILTINS
    if module == "torch._utils" or (module == "torch.storage" and name == "_load_from_bytes"):
        return True
    if module == "torch":
        return name.endswith("Storage") or name in ("Size", "device") or isinstance(getattr(torch, name, None),
                                                                                   torch.dtype)  # fmt: skip
    return (module, name) in {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("_codecs", "encode"),
        ("copyreg", "_reconstructor"),
        ("copy_reg", "_reconstructor"),
    }


class _Spill:
    """Writes large arrays met while unpickling straight to ``.npy`` files (one array in memory at a time)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, raw: Any, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> Path:
        path = self.folder / f"spill{self.count}.npy"
        self.count += 1
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape), fortran_order=bool(fortran))
        offset = mm.offset
        del mm
        view = memoryview(raw).cast("B")
        if view.nbytes != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise pickle.UnpicklingError(f"array data of {view.nbytes} bytes does not fill shape {shape} {dtype}")
        with open(path, "r+b") as f:
            f.seek(offset)
            for start in range(0, view.nbytes, _CHUNK_BYTES):
                f.write(view[start : start + _CHUNK_BYTES])
        return path


class _Spilled:
    def __init__(self, path: Path) -> None:
        self.path = path


class _PendingArray:
    """Stands for an ndarray between numpy's ``_reconstruct`` and its ``__setstate__``."""

    def __init__(self, spill: _Spill) -> None:
        self.spill, self.value = spill, None

    def __setstate__(self, state: tuple) -> None:
        shape, dtype, fortran, raw = state[1:] if len(state) == 5 else state
        dtype = np.dtype(dtype)
        if isinstance(raw, str):
            raw = raw.encode("latin1")
        if not dtype.hasobject and isinstance(raw, (bytes, bytearray)) and len(raw) >= _SPILL_MIN_BYTES:
            self.value = _Spilled(self.spill.write(raw, dtype, shape, fortran))
        else:
            array = np.ndarray.__new__(np.ndarray, (0,), "b")
            array.__setstate__(state)
            self.value = array


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, spill: _Spill | None) -> None:
        super().__init__(file, encoding="latin1")
        self.path, self.spill = path, spill

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise DataFormatError(self.path, expected="numpy arrays, lists, strings and numbers (the MMSA format)",
                                  found=f"a reference to {module}.{name}, which is not loaded because unpickling it "
                                  "could run arbitrary code")  # fmt: skip
        if self.spill is not None and module.startswith("numpy"):
            if name == "_reconstruct":
                real = super().find_class(module, name)
                spill = self.spill
                return lambda sub, shape, dtype: _PendingArray(spill) if sub is np.ndarray else real(sub, shape, dtype)
            if name == "_frombuffer":
                return self._frombuffer
        return super().find_class(module, name)

    def _frombuffer(self, buf: Any, dtype: Any, shape: tuple[int, ...], order: str) -> Any:
        dtype = np.dtype(dtype)
        view = memoryview(buf)
        if not dtype.hasobject and view.nbytes >= _SPILL_MIN_BYTES:
            return _Spilled(self.spill.write(view, dtype, shape, order == "F"))
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _resolve(obj: Any) -> Any:
    """Replace the spill placeholders by arrays (memory-mapped for spilled ones)."""
    if isinstance(obj, _PendingArray):
        obj = obj.value
    if isinstance(obj, _Spilled):
        return np.load(obj.path, mmap_mode="r")
    if isinstance(obj, dict):
        for key in list(obj):
            obj[key] = _resolve(obj[key])
    elif isinstance(obj, list):
        obj[:] = [_resolve(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def _in_memory(obj: Any) -> Any:
    """Spilled (memory-mapped) arrays inside ``obj`` read back into plain arrays."""
    if isinstance(obj, np.memmap):
        return np.array(obj)
    if isinstance(obj, dict):
        return {k: _in_memory(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_in_memory(v) for v in obj)
    return obj


def _read_pickle(path: Path, spill: _Spill | None = None) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = _resolve(_Unpickler(f, path, spill).load())
    except DataFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OverflowError, UnicodeDecodeError) as err:  # fmt: skip
        raise DataFormatError(path, expected="a complete MMSA pickle (a dict with train/valid/test)",
                              found=f"a file that is not a readable pickle or is truncated ({type(err).__name__}: "
                              f"{str(err)[:200]})") from err  # fmt: skip
    if not isinstance(data, dict):
        raise DataFormatError(path, expected="a dict with keys train/valid/test at the top level",
                              found=f"a pickled {type(data).__name__}")  # fmt: skip
    return data


# ----------------------------------------------------------------------------- per-split preparation


@dataclass
class _Prepared:
    arrays: dict[str, np.ndarray]  # text, text_bert, audio, vision (those present), labels, *_lengths
    ids: list[str]
    raw_text: list[str]
    annotations: list[str] | None
    stats: dict[str, Any]


class _Allocator:
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


def _clean_features(path: Path, split: str, key: str, src: np.ndarray, alloc: _Allocator) -> tuple[np.ndarray, dict]:
    """float32 copy (or the array itself) with non-finite values set to 0; counts of what was replaced."""
    out = alloc.adopt(split, key, src)
    in_place = out is not None
    if out is None:
        out = alloc(split, key, src.shape, np.float32)
    counts = {"nan": 0, "posinf": 0, "neginf": 0}
    step = max(1, _CHUNK_BYTES // max(1, int(np.prod(src.shape[1:])) * 4))
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


def _prepare_split(path: Path, name: str, raw: Any, alloc: _Allocator) -> _Prepared:
    """Check the structure of one split and convert it (float32 features, int64 tokens, (N,) labels)."""
    if not isinstance(raw, dict):
        raise DataFormatError(path, name, expected="a dict of arrays (text, audio, vision, regression_labels, ...)",
                              found=f"a {type(raw).__name__}")  # fmt: skip
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise DataFormatError(path, name, key, expected="this key (an MMSA split holds " + ", ".join(REQUIRED_KEYS)
                                  + " and text or text_bert)", found=f"keys {sorted(map(str, raw))}")  # fmt: skip
    if "text" not in raw and "text_bert" not in raw:
        raise DataFormatError(path, name, "text", expected="'text' (features) or 'text_bert' (token ids)",
                              found=f"keys {sorted(map(str, raw))}")  # fmt: skip
    labels = _numeric(path, name, "regression_labels", raw["regression_labels"], np.ndim(raw["regression_labels"]),
                      "of labels")  # fmt: skip
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.ndim != 1:
        raise DataFormatError(path, name, "regression_labels", expected="shape (N,) or (N, 1)",
                              found=f"shape {labels.shape}")  # fmt: skip
    n = labels.shape[0]
    if n == 0:
        raise DataFormatError(path, name, "regression_labels", expected="at least one sample", found="an empty split")
    labels = labels.astype(np.float32)
    if not np.all(np.isfinite(labels)):
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
            raise DataFormatError(path, name, key, expected=f"{n} samples (as regression_labels)",
                                  found=f"{len(value)}")  # fmt: skip
    if "text_bert" in shaped and shaped["text_bert"].shape[1] != 3:
        raise DataFormatError(path, name, "text_bert", expected="3 channels (token ids, attention mask, segments): "
                              "shape (N, 3, L)", found=f"shape {shaped['text_bert'].shape}")  # fmt: skip
    stats: dict[str, Any] = {"n": n, "shapes": {k: list(v.shape) for k, v in shaped.items()}, "nonfinite": {}}
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
    return _Prepared(arrays, _strings(path, name, "id", raw["id"]), _strings(path, name, "raw_text", raw["raw_text"]),
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


def _check(path: Path, prepared: dict[str, _Prepared], text_mode: str, config: DMDConfig | None) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------- the cache of memory-mapped arrays


def _cache_folder(path: Path, mmap_dir: Path) -> Path:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return mmap_dir / f"{path.stem}-{digest}"


def _fresh(manifest: dict[str, Any], path: Path, wanted: Sequence[str]) -> bool:
    st = path.stat()
    return (manifest.get("format") == CACHE_FORMAT and manifest.get("size") == st.st_size
            and manifest.get("mtime_ns") == st.st_mtime_ns and set(wanted) <= set(manifest["splits"]))  # fmt: skip


def _convert(path: Path, folder: Path, wanted: Sequence[str]) -> None:
    """Read ``path`` once, write every split's arrays as ``.npy`` plus a manifest into ``folder`` (atomically)."""
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        data = _read_pickle(path, _Spill(tmp / "spill"))
        names = _split_names(path, data, wanted)
        alloc = _Allocator(tmp)
        manifest: dict[str, Any] = {"format": CACHE_FORMAT, "source": str(path.resolve()), "size": None,
                                    "mtime_ns": None, "splits": {}}  # fmt: skip
        for name in names:
            prep = _prepare_split(path, name, data[name], alloc)
            data[name] = None  # drop the raw split (and its spilled arrays) before the next one
            for key, arr in prep.arrays.items():
                if isinstance(arr, np.memmap):
                    arr.flush()
                else:
                    np.save(tmp / f"{name}.{key}.npy", arr)
            manifest["splits"][name] = {"stats": prep.stats, "arrays": sorted(prep.arrays), "ids": prep.ids,
                                        "raw_text": prep.raw_text, "annotations": prep.annotations}  # fmt: skip
            del prep
        extra = _in_memory({k: v for k, v in data.items() if k not in SPLITS and k not in names})
        with open(tmp / "extra.pkl", "wb") as f:
            pickle.dump(extra, f, protocol=4)
        del data, extra
        shutil.rmtree(tmp / "spill", ignore_errors=True)
        st = path.stat()
        manifest.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same conversion first: use its result if it is current
            done = folder / "manifest.json"
            if not (done.is_file() and _fresh(json.loads(done.read_text(encoding="utf-8")), path, wanted)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_cached(path: Path, folder: Path, wanted: Sequence[str]) -> tuple[dict[str, _Prepared], dict[str, Any]]:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    prepared = {}
    for name in wanted:
        entry = manifest["splits"][name]
        arrays = {}
        for key in entry["arrays"]:
            big = key in ("text", "audio", "vision")
            arrays[key] = np.load(folder / f"{name}.{key}.npy", mmap_mode="r" if big else None)
        prepared[name] = _Prepared(arrays, entry["ids"], entry["raw_text"], entry["annotations"], entry["stats"])
        for key, counts in entry["stats"]["nonfinite"].items():
            if sum(counts.values()):
                log.debug("%s: split %r, key %r: %d non-finite values were replaced with 0 when it was converted",
                         path, name, key, sum(counts.values()))  # fmt: skip
    with open(folder / "extra.pkl", "rb") as f:
        extra = _Unpickler(f, folder / "extra.pkl", None).load()
    return prepared, extra


def _split_names(path: Path, data: dict[str, Any], wanted: Sequence[str]) -> list[str]:
    for name in wanted:
        if name not in data:
            raise DataFormatError(path, name, expected=f"split {name!r} at the top level",
                                  found=f"top-level keys {sorted(map(str, data))}")  # fmt: skip
    return list(dict.fromkeys([*wanted, *(s for s in SPLITS if s in data)]))


# ----------------------------------------------------------------------------- the entry point


def load_mmsa(
    path: str | Path,
    text: Literal["auto", "bert", "features"] = "auto",
    config: DMDConfig | None = None,
    mmap_dir: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
) -> MMSADataset:
    """Read and validate an MMSA pickle (MOSI/MOSEI, aligned or unaligned; CH-SIMS too).

    ``text``: "bert" gives ``(N, 3, L)`` int64 token ids / mask / segments, "features" the
    stored ``(N, L, d_t)`` features; "auto" is "bert" when ``config.bert`` is set, else
    "features". ``config``: check sequence lengths, feature sizes and the BERT vocabulary
    size (``config.bert.config['vocab_size']``, else 30522) against it. ``mmap_dir``: convert
    once to ``.npy`` files there (reused while the source's size and mtime are unchanged)
    and memory-map text/audio/vision. ``splits``: the splits to return.

    Raises :class:`DataFormatError` for every problem with the file's content.
    """
    path = Path(path)
    if text not in ("auto", "bert", "features"):
        raise ValueError(f"load_mmsa: text must be 'auto', 'bert' or 'features', found {text!r}")
    mode = ("bert" if config is not None and config.bert is not None else "features") if text == "auto" else text
    if config is not None and (mode == "bert") != (config.bert is not None):
        raise ValueError(f"load_mmsa: text={mode!r} but config.bert is {config.bert!r}; a DMD with BERT reads token "
                         "ids (text='bert'), one without reads features (text='features')")  # fmt: skip
    splits = list(splits)
    if not splits or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"load_mmsa: splits must be a non-empty sequence of names, found {splits!r}")
    if not path.is_file():
        raise FileNotFoundError(f"load_mmsa: no MMSA file at {path}")
    if mmap_dir is None:
        if path.stat().st_size > 4e9:
            log.warning("%s is %.1f GB; load_mmsa(..., mmap_dir=...) needs far less memory", path,
                        path.stat().st_size / 1e9)  # fmt: skip
        data = _read_pickle(path)
        _split_names(path, data, splits)
        prepared = {name: _prepare_split(path, name, data[name], _Allocator(None)) for name in splits}
        extra = {k: v for k, v in data.items() if k not in SPLITS and k not in splits}
        del data
    else:
        folder = _cache_folder(path, Path(mmap_dir))
        manifest = folder / "manifest.json"
        if not (manifest.is_file() and _fresh(json.loads(manifest.read_text(encoding="utf-8")), path, splits)):
            log.info("converting %s to memory-mapped arrays in %s", path, folder)
            _convert(path, folder, splits)
        prepared, extra = _open_cached(path, folder, splits)
    info = _check(path, {k: prepared[k] for k in splits}, mode, config)
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
    return _KNOWN_DIMS.get(tuple(info["feature_dims"][1:]))


__all__ = ["DataFormatError", "Batch", "Split", "MMSADataset", "load_mmsa", "SPLITS", "BERT_VOCAB_SIZE"]
