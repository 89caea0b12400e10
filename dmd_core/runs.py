"""Run folders: what a training run writes, written atomically, and how to read it back.

One folder per run (one seed)::

    run_dir/
      config.json            model config (DMDConfig.to_dict()), train config, data, seed, ...
      history.csv            one row per completed epoch (columns: see below)
      best.pt                best-validation weights   {"model", "epoch", "valid_loss", ...}
      last.pt                everything needed to resume after the last completed epoch
      test_metrics.json      metrics of the best weights on the test split (+ "loss", "best_epoch")
      test_predictions.csv   per test sample: id, label, prediction, 6 homo and 6 hetero edges

Several seeds: ``run_dir/seed_1111/...`` one folder each, plus ``summary.json`` and
``summary.csv`` (mean and std over seeds of every test metric, plain numbers).

Every file is written to a temporary file in the same folder, flushed to disk and then
renamed over the target (:func:`atomic_write_bytes`), so a run killed at any moment leaves
either the old or the new version of each file, never half of one.

Read back with :func:`load_run` (one seed) or :func:`load_seeds` (a multi-seed folder); a run's
network with its weights, with :func:`dmd_core.export.load_model` (this module never builds the model).

``history.csv`` columns (one row per completed epoch):

* ``epoch`` (1-based), ``lr`` (learning rate used in the epoch), ``time_s`` (train +
  validation seconds), ``steps`` (optimizer steps so far), ``best`` (1 if this epoch set a
  new best validation loss), ``best_valid_loss``;
* ``train_<part>``: mean over the epoch's mini-batches of every loss part of
  :class:`~dmd_core.losses.LossParts` (``train_total``, ``train_task``, ``train_recon``,
  ``train_cycle``, ``train_ort``, ``train_margin``, ``train_homo_gd``, ``train_homo_reg``,
  ``train_homo_logit``, ``train_homo_repr``, ``train_hetero_gd``, ``train_hetero_reg``,
  ``train_hetero_logit``, ``train_hetero_repr``), in train mode (dropout on);
* ``valid_loss`` (mean L1 of the prediction, the reference's validation loss) and
  ``valid_<metric>`` for every metric of :func:`~dmd_core.metrics.regression_metrics`;
* ``train_homo_<edge>``, ``train_hetero_<edge>``, ``valid_homo_<edge>``,
  ``valid_hetero_<edge>`` for the six edges of :data:`~dmd_core.distill.EDGE_NAMES`
  (``V->L``, ``A->L``, ``L->V``, ``A->V``, ``L->A``, ``V->A``: teacher -> student): the
  normalised edge weight averaged over the split's samples (train: during the epoch, train
  mode; valid: after it, eval mode). All six start near 1/6.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import DMDConfig, TrainConfig

if TYPE_CHECKING:  # pandas is imported lazily: it is only needed to read runs back
    import pandas as pd

CONFIG, HISTORY, BEST, LAST = "config.json", "history.csv", "best.pt", "last.pt"
TEST_METRICS, TEST_PREDICTIONS = "test_metrics.json", "test_predictions.csv"
SUMMARY_JSON, SUMMARY_CSV = "summary.json", "summary.csv"


# ---- atomic writes ---------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """Tuples to lists, tensors/numpy scalars to Python numbers, non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON (indented; NaN/inf become ``null`` so any JSON reader can parse it)."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Atomic CSV from a list of dicts (columns: ``columns`` or the union of keys in first-seen order).

    Floats are written with ``repr`` so that they read back bit for bit.
    """
    return atomic_write_text(path, csv_text(rows, columns))


def checkpoint_bytes(obj: Any) -> memoryview:
    """What ``torch.save(obj)`` writes, in memory: a snapshot of every tensor as it is now."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()


def save_checkpoint(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` through a temporary file and a rename."""
    return atomic_write_bytes(path, checkpoint_bytes(obj))


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The text :func:`write_csv` writes."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    return buf.getvalue()


class FileWriter:
    """Atomic writes (:func:`atomic_write_bytes`) on one background thread, in the order they were asked for.

    The caller hands over finished bytes (for a checkpoint, :func:`checkpoint_bytes`: the tensors as
    they are when asked), so training can go on while the disk writes and syncs. After a failed write
    the writes queued behind it are dropped, so the folder stays as a whole at the last epoch written;
    :meth:`flush` waits for everything asked so far and raises the first failure (also raised by the
    next :meth:`write`). A file becomes visible only complete, by its rename, as with the direct writes.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._failed = threading.Event()

    def write(self, path: str | os.PathLike, data: bytes | memoryview) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dmd-files")
        elif self.failed():
            self.flush()
        self._pending.append(self._pool.submit(self._write, Path(path), data))

    def _write(self, path: Path, data: bytes | memoryview) -> None:
        if self._failed.is_set():
            raise FileWriteSkipped(f"{path} not written: an earlier write failed")
        try:
            atomic_write_bytes(path, data)
        except BaseException:
            self._failed.set()
            raise

    def failed(self) -> bool:
        """Whether a finished write failed (without waiting for the others)."""
        return any(f.done() and f.exception() is not None for f in self._pending)

    def flush(self) -> None:
        """Wait for every write asked for so far; raise the first that failed (those behind it were dropped)."""
        pending, self._pending = self._pending, []
        try:
            errors = [e for e in (f.exception() for f in pending) if e is not None]  # in the order asked
            if errors:
                raise errors[0]
        finally:
            self._failed.clear()

    def close(self) -> None:
        """:meth:`flush`, then end the thread."""
        pool, self._pool = self._pool, None
        try:
            self.flush()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)


class FileWriteSkipped(OSError):
    """A queued write not attempted because an earlier one failed."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (our checkpoints hold tensors and plain Python values only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


# ---- reading runs back -----------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (is {path.parent} a dmd run folder?)") from None


@dataclass
class Run:
    """A run folder read back. ``history`` and ``test_predictions`` are pandas DataFrames.

    ``test_metrics`` is None (and ``test_predictions`` an empty frame) when the run has not
    finished yet.
    """

    path: Path
    meta: dict[str, Any]
    config: DMDConfig
    train_config: TrainConfig
    seed: int | None
    data: str | None

    @property
    def history(self) -> pd.DataFrame:
        import pandas as pd

        file = self.path / HISTORY
        return pd.read_csv(file) if file.is_file() else pd.DataFrame()

    @property
    def test_metrics(self) -> dict[str, Any] | None:
        file = self.path / TEST_METRICS
        return read_json(file) if file.is_file() else None

    @property
    def test_predictions(self) -> pd.DataFrame:
        import pandas as pd

        file = self.path / TEST_PREDICTIONS
        return pd.read_csv(file, dtype={"id": str}) if file.is_file() else pd.DataFrame()

    def checkpoint(self, which: str = "best", map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The raw checkpoint dict of ``best.pt`` or ``last.pt``."""
        if which not in ("best", "last"):
            raise ValueError(f"Run.checkpoint: which must be 'best' or 'last', found {which!r}")
        return load_checkpoint(self.path / (BEST if which == "best" else LAST), map_location)


def load_run(path: str | os.PathLike) -> Run:
    """Read the run folder ``path`` (one seed). For a multi-seed folder, use :func:`load_seeds`."""
    path = Path(path)
    if not (path / CONFIG).is_file() and (path / SUMMARY_JSON).is_file():
        raise FileNotFoundError(f"{path} holds several seeds (summary.json); use load_seeds({str(path)!r})")
    meta = read_json(path / CONFIG)
    for key in ("model", "train"):
        if key not in meta:
            raise ValueError(f"{path / CONFIG}: missing field {key!r} (expected 'model', 'train', 'seed', 'data')")
    return Run(
        path=path,
        meta=meta,
        config=DMDConfig.from_dict(meta["model"]),
        train_config=TrainConfig.from_dict(meta["train"]),
        seed=meta.get("seed"),
        data=meta.get("data"),
    )


# Fields of TrainConfig that may change when a run is resumed.
RESUMABLE_CHANGES = ("max_epochs", "seeds", "eval_batch_size", "compile", "overlap", "extra")


def check_resumable(run_dir: str | os.PathLike, model_config: DMDConfig, train_config: TrainConfig, seed: int) -> None:
    """The run in ``run_dir`` was made with the same model, recipe and seed (``max_epochs`` may grow)."""

    def differing(ours: dict, theirs: dict, allowed: tuple[str, ...] = ()) -> list[str]:
        ours = json_safe(ours)
        return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k) and k not in allowed)

    saved = load_run(run_dir).meta
    problems, saved_train = [], saved.get("train", {})
    try:  # in today's fields (older config.json files hold `bf16` instead of `precision`)
        saved_train = json_safe(TrainConfig.from_dict(saved_train).to_dict())
    except (TypeError, ValueError):
        pass  # compared as written
    if diff := differing(model_config.to_dict(), saved.get("model", {})):
        problems.append(f"model config differs in {diff}")
    if diff := differing(train_config.to_dict(), saved_train, RESUMABLE_CHANGES):
        problems.append(f"train config differs in {diff}")
    if saved.get("seed") != seed:
        problems.append(f"seed {saved.get('seed')} != {seed}")
    if problems:
        raise ValueError(f"cannot resume {run_dir}: " + "; ".join(problems))


@dataclass
class SeedRuns:
    """A multi-seed folder: ``runs`` by seed, ``summary`` (DataFrame: metric, mean, std, n)."""

    path: Path
    runs: dict[int, Run] = field(default_factory=dict)

    @property
    def summary(self) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(self.path / SUMMARY_CSV)

    @property
    def test_metrics(self) -> pd.DataFrame:
        """One row per seed, one column per test metric."""
        import pandas as pd

        rows = [{"seed": s, **(r.test_metrics or {})} for s, r in sorted(self.runs.items())]
        return pd.DataFrame(rows)


def seed_dir(run_dir: str | os.PathLike, seed: int) -> Path:
    return Path(run_dir) / f"seed_{seed}"


def load_seeds(path: str | os.PathLike) -> SeedRuns:
    """Read a multi-seed folder written by :func:`dmd_core.seeds.train_seeds`."""
    path = Path(path)
    folders = sorted(p for p in path.glob("seed_*") if (p / CONFIG).is_file())
    if not folders:
        raise FileNotFoundError(f"{path}: no seed_<n>/config.json inside (is it a multi-seed run folder?)")
    return SeedRuns(path=path, runs={int(p.name.split("_", 1)[1]): load_run(p) for p in folders})


# ---- summaries over seeds --------------------------------------------------------------------------------------


def summarize(metrics_by_seed: Mapping[int, Mapping[str, float]], names: Iterable[str] | None = None) -> dict:
    """Mean and population std (ddof=0, as MMSA) of each metric over seeds; plain floats.

    Returns ``{"seeds": [...], "metrics": {name: {"mean", "std", "n", "values"}}}``.
    """
    seeds = sorted(metrics_by_seed)
    if names is None:
        names = list(dict.fromkeys(k for s in seeds for k in metrics_by_seed[s]))
    out: dict[str, Any] = {"seeds": seeds, "metrics": {}}
    for name in names:
        values = [float(metrics_by_seed[s][name]) for s in seeds if name in metrics_by_seed[s]]
        if not values:
            continue
        t = torch.tensor(values, dtype=torch.float64)
        out["metrics"][name] = {
            "mean": float(t.mean()),
            "std": float(t.std(correction=0)),
            "n": len(values),
            "values": values,
        }
    return out


def write_summary(run_dir: str | os.PathLike, metrics_by_seed: Mapping[int, Mapping[str, float]]) -> dict:
    """Write ``summary.json`` and ``summary.csv`` (columns metric, mean, std, n, then one per seed)."""
    summary = summarize(metrics_by_seed)
    write_json(Path(run_dir) / SUMMARY_JSON, summary)
    rows = [
        {"metric": name, "mean": s["mean"], "std": s["std"], "n": s["n"],
         **{f"seed_{seed}": v for seed, v in zip(summary["seeds"], s["values"])}}
        for name, s in summary["metrics"].items()
    ]  # fmt: skip
    write_csv(Path(run_dir) / SUMMARY_CSV, rows)
    return summary
