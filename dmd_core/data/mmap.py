"""The cache of memory-mapped arrays behind ``load_mmsa(..., mmap_dir=...)``.

The file is converted once to ``.npy`` files in a folder of ``mmap_dir`` (large arrays are
streamed out of the pickle one at a time, so the conversion needs about the memory of the
largest array, not of the file), with a manifest; later loads memory-map text, audio and
vision while the source's size and modification time are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import SPLITS
from .pickles import SafeUnpickler, Spill, in_memory, read_pickle
from .validate import Allocator, Prepared, prepare_split, split_names

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_folder(path: Path, mmap_dir: Path) -> Path:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return mmap_dir / f"{path.stem}-{digest}"


def is_fresh(manifest: dict[str, Any], path: Path, wanted: Sequence[str]) -> bool:
    st = path.stat()
    return (manifest.get("format") == CACHE_FORMAT and manifest.get("size") == st.st_size
            and manifest.get("mtime_ns") == st.st_mtime_ns and set(wanted) <= set(manifest["splits"]))  # fmt: skip


def convert(path: Path, folder: Path, wanted: Sequence[str], require_labels: bool = True) -> None:
    """Read ``path`` once, write every split's arrays as ``.npy`` plus a manifest into ``folder`` (atomically).

    ``require_labels=False``: splits without labels are converted too (their stats say so).
    """
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        data = read_pickle(path, Spill(tmp / "spill"))
        names = split_names(path, data, wanted)
        alloc = Allocator(tmp)
        manifest: dict[str, Any] = {"format": CACHE_FORMAT, "source": str(path.resolve()), "size": None,
                                    "mtime_ns": None, "splits": {}}  # fmt: skip
        for name in names:
            prep = prepare_split(path, name, data[name], alloc, require_labels)
            data[name] = None  # drop the raw split (and its spilled arrays) before the next one
            for key, arr in prep.arrays.items():
                if isinstance(arr, np.memmap):
                    arr.flush()
                else:
                    np.save(tmp / f"{name}.{key}.npy", arr)
            manifest["splits"][name] = {"stats": prep.stats, "arrays": sorted(prep.arrays), "ids": prep.ids,
                                        "raw_text": prep.raw_text, "annotations": prep.annotations}  # fmt: skip
            del prep
        extra = in_memory({k: v for k, v in data.items() if k not in SPLITS and k not in names})
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
            if not (done.is_file() and is_fresh(json.loads(done.read_text(encoding="utf-8")), path, wanted)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_cached(path: Path, folder: Path, wanted: Sequence[str]) -> tuple[dict[str, Prepared], dict[str, Any]]:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    prepared = {}
    for name in wanted:
        entry = manifest["splits"][name]
        arrays = {}
        for key in entry["arrays"]:
            big = key in ("text", "audio", "vision")
            arrays[key] = np.load(folder / f"{name}.{key}.npy", mmap_mode="r" if big else None)
        prepared[name] = Prepared(arrays, entry["ids"], entry["raw_text"], entry["annotations"], entry["stats"])
        for key, counts in entry["stats"]["nonfinite"].items():
            if sum(counts.values()):
                log.debug("%s: split %r, key %r: %d non-finite values were replaced with 0 when it was converted",
                         path, name, key, sum(counts.values()))  # fmt: skip
    with open(folder / "extra.pkl", "rb") as f:
        extra = SafeUnpickler(f, folder / "extra.pkl", None).load()
    return prepared, extra
