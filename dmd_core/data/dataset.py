"""The data types: :class:`Split` (one split's tensors) and :class:`MMSADataset` (a loaded file).

A split yields :class:`Batch` tuples of tensors ready for ``DMD(config)(text, audio, vision)``;
:func:`~dmd_core.data.load_mmsa` builds them from an MMSA pickle (the book's data-format page).
Every problem with a file's content raises :class:`DataFormatError` naming the file, the split
and the key, with what was expected and what was found.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from ..config import BertSpec, DMDConfig, preset

log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
BERT_VOCAB_SIZE = 30522
REQUIRED_KEYS = ("id", "raw_text", "audio", "vision", "regression_labels")


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


def _device_of(x: ArrayLike) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")  # numpy (memory-mapped) arrays


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
        """All arrays as tensors on ``device`` (memory-mapped arrays are read in).

        Plain copies: pinning the whole split first would make a second host copy, which PyTorch's
        pinned-memory cache then keeps (per-batch copies, small, are pinned: see :meth:`batches`).
        """
        device = torch.device(device)
        return self._map(lambda x: _as_tensor(x).to(device))

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

        The same generator state gives the same order, on every device: the permutation is drawn
        on the generator's device (the CPU for a default generator) and copied once per epoch to
        where the split lives, so a split on the GPU is shuffled without a host-to-device copy per
        mini-batch. ``device``: where the tensors go (default: where the split lives); CPU -> CUDA
        copies are pinned and non-blocking.
        """
        if batch_size < 1:
            raise ValueError(f"Split.batches: batch_size must be positive, found {batch_size}")
        n = len(self)
        arrays = (self.text, self.audio, self.vision, self.labels)
        cpu, orders = torch.device("cpu"), {}  # the permutation on every device an array (or the index) lives on
        if shuffle:
            order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else cpu)
            orders[order.device] = order
            for where in {_device_of(x) for x in arrays} | {cpu}:
                if where not in orders:
                    orders[where] = _move(order, where)  # once per epoch
        target = None if device is None else torch.device(device)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            if drop_last and stop - start < batch_size:
                break
            if orders:
                rows, index = [orders[_device_of(x)][start:stop] for x in arrays], orders[cpu][start:stop]
            else:
                rows, index = [slice(start, stop)] * len(arrays), torch.arange(start, stop)
            yield Batch(*(_move(_take(x, r), target) for x, r in zip(arrays, rows)), index=index)


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

    def suggest_config(self, dataset: str | None = None, **overrides: Any) -> DMDConfig:
        """The official preset for this file, with its sequence lengths and feature sizes.

        ``dataset``: whose hyper-parameters (``"mosi"``/``"mosei"``; default: this file's).
        ``bert`` defaults to ``BertSpec()`` (bert-base-uncased) when the text is token ids,
        else None; ``text_dim`` to BERT's hidden size (768 unless the spec says otherwise) or
        the stored text feature size; any other :class:`DMDConfig` field can be overridden.
        Files that are neither MOSI nor MOSEI get MOSI's hyper-parameters (logged).
        """
        name = (dataset or self.dataset_name or "").lower()
        if name not in ("mosi", "mosei"):
            log.warning("%s: dataset %s has no official DMD preset; using MOSI's hyper-parameters",
                        self.path, name or "(unknown)")  # fmt: skip
            name = "mosi"
        bert = overrides.pop("bert", BertSpec() if self.text_mode == "bert" else None)
        if isinstance(bert, str):
            bert = BertSpec(name_or_path=bert)
        text_dim = overrides.pop("text_dim", None)
        if text_dim is None:
            text_dim = (bert.hidden_size or 768) if bert is not None else self.feature_dims[0]
        fields: dict[str, Any] = dict(seq_lens=self.seq_lens, feature_dims=(text_dim, *self.feature_dims[1:]))
        fields.update(overrides)
        return preset(name, self.aligned, bert=bert, **fields)
