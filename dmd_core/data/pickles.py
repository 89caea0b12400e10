"""MMSA pickles, read safely and written portably.

Reading (:func:`read_pickle`): pickles can run code when loaded, so the reader resolves only the
NumPy, PyTorch and builtin names that data files use; with a :class:`Spill`, large arrays met
while unpickling go straight to ``.npy`` files (one array in memory at a time), which is how
``mmap_dir`` converts MOSEI unaligned within a 12 GB machine. The user's file is only ever
opened for reading.

Writing (:func:`dump_mmsa`): a pickle that NumPy 1.x and 2.x both read (NumPy's own protocol-2
array reduction), streamed array by array, written atomically (temporary file + rename).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import DataFormatError

SPILL_MIN_BYTES = 1 << 20  # arrays this large are spilled to .npy files while unpickling (with a Spill)
CHUNK_BYTES = 64 << 20  # bytes written or cleaned at a time

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


class Spill:
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
            for start in range(0, view.nbytes, CHUNK_BYTES):
                f.write(view[start : start + CHUNK_BYTES])
        return path


class _Spilled:
    def __init__(self, path: Path) -> None:
        self.path = path


class _PendingArray:
    """Stands for an ndarray between numpy's ``_reconstruct`` and its ``__setstate__``."""

    def __init__(self, spill: Spill) -> None:
        self.spill, self.value = spill, None

    def __setstate__(self, state: tuple) -> None:
        shape, dtype, fortran, raw = state[1:] if len(state) == 5 else state
        dtype = np.dtype(dtype)
        if isinstance(raw, str):
            raw = raw.encode("latin1")
        if not dtype.hasobject and isinstance(raw, (bytes, bytearray)) and len(raw) >= SPILL_MIN_BYTES:
            self.value = _Spilled(self.spill.write(raw, dtype, shape, fortran))
        else:
            array = np.ndarray.__new__(np.ndarray, (0,), "b")
            array.__setstate__(state)
            self.value = array


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, spill: Spill | None) -> None:
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
        if not dtype.hasobject and view.nbytes >= SPILL_MIN_BYTES:
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


def in_memory(obj: Any) -> Any:
    """Spilled (memory-mapped) arrays inside ``obj`` read back into plain arrays."""
    if isinstance(obj, np.memmap):
        return np.array(obj)
    if isinstance(obj, dict):
        return {k: in_memory(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(in_memory(v) for v in obj)
    return obj


def read_pickle(path: Path, spill: Spill | None = None) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = _resolve(SafeUnpickler(f, path, spill).load())
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


# ----------------------------------------------------------------------------- writing


class LazyArray:
    """A large array built only when it is written (so a file streams one array at a time)."""

    def __init__(self, build: Callable[[], np.ndarray]) -> None:
        self.build = build


_GLOBAL_RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\n"
_WRITE_BLOCK = 1 << 26


def _small(obj: Any) -> bytes:
    """Opcodes of a small plain object (no memo, protocol 3), without the PROTO and STOP framing."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=3)
    pickler.fast = True  # no memo: the pieces can be concatenated into one stream
    pickler.dump(obj)
    data = buf.getvalue()
    if b"numpy._core" in data:
        raise TypeError(f"dump_mmsa: {type(obj).__name__} would pickle under NumPy-2-only names")
    return data[2:-1]


def _write_array(f, a: np.ndarray) -> None:
    """An ndarray as NumPy's own protocol-2+ reduction, data streamed from memory without a copy."""
    if a.dtype.hasobject:
        raise TypeError("dump_mmsa: object arrays are not written")
    a = np.ascontiguousarray(a)
    f.write(_GLOBAL_RECONSTRUCT + _small((np.ndarray, (0,), b"b")) + b"R")
    f.write(b"(" + _small(1) + _small(tuple(int(s) for s in a.shape)) + _small(a.dtype) + _small(False))
    raw = a.reshape(-1).view(np.uint8)
    f.write(b"\x8e" + struct.pack("<Q", raw.nbytes))  # BINBYTES8
    for start in range(0, raw.nbytes, _WRITE_BLOCK):
        f.write(raw[start : start + _WRITE_BLOCK].data)
    f.write(b"tb")  # TUPLE, BUILD (ndarray.__setstate__)


def _write_obj(f, obj: Any) -> None:
    if isinstance(obj, LazyArray):
        array = obj.build()
        _write_array(f, array)
        del array
    elif isinstance(obj, np.ndarray):
        _write_array(f, obj)
    elif isinstance(obj, dict):
        f.write(b"}")  # EMPTY_DICT
        for key, value in obj.items():
            f.write(_small(key))
            _write_obj(f, value)
            f.write(b"s")  # SETITEM
    elif isinstance(obj, np.generic):
        f.write(_small(obj.item()))
    else:
        f.write(_small(obj))


def dump_mmsa(data: dict[str, Any], path: str | Path) -> Path:
    """Write an MMSA dict (numpy arrays, lists, str) as a pickle readable by NumPy 1.x and 2.x, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(b"\x80\x04")  # PROTO 4 (BINBYTES8 for arrays over 4 GB)
            _write_obj(f, data)
            f.write(b".")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
