"""The chapters' settings and run reuse: :class:`BookSettings`.

The notebook parameters (device, data file or synthetic, preset, sizes, epochs, seeds, work
folder) and what follows from them: the data file (a synthetic file is written once into
``work_dir/data``), model and train configs, and run folders named by a hash of everything
that defines them, so a chapter finds a run that another chapter trained with the same
settings and trains one otherwise (the "load the trained run if present, else train" pattern).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dmd_core.config import BertSpec, DMDConfig, TrainConfig

if TYPE_CHECKING:
    from dmd_core.data import MMSADataset
    from dmd_core.runs import Run, SeedRuns

log = logging.getLogger(__name__)


def _digest(obj: Any, n: int = 8) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class BookSettings:
    """The parameters every chapter shares, and what follows from them.

    ``paper_scale=True`` replaces the CPU defaults by the paper's setting: full split
    sizes (``scale=1``), the official model (``d``, ``heads``, ``nlevels``, ``lr``,
    ``accumulation`` from the preset and recipe), early stopping (``epochs=None``) and
    the five official seeds, and PyTorch's default CPU threads. Give it the real file
    (``data_path``), a BERT folder or hub name (``bert``) and a GPU. ``precision``: the
    train config's (``"auto"``: bf16 on GPUs that have it, fp16 on Colab's T4, fp32 on CPU).
    ``workers``: on CPU, how many runs train at once in separate processes (each with ``threads``
    threads); a run's numbers do not depend on it.
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
    precision: str = "auto"
    workers: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.paper_scale:
            for name, value in dict(scale=1.0, epochs=None, seeds=TrainConfig().seeds, d=None, heads=None,
                                    nlevels=None, lr=None, accumulation=None, threads=None).items():  # fmt: skip
                object.__setattr__(self, name, value)
        if not self.seeds:
            raise ValueError("BookSettings.seeds: expected at least one seed, found none")
        if int(self.workers) < 1:
            raise ValueError(f"BookSettings.workers: expected at least 1, found {self.workers!r}")
        if self.data_path is None and not 0 < self.scale <= 1:
            raise ValueError(f"BookSettings.scale: expected a fraction in (0, 1], found {self.scale!r}")

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> BookSettings:
        """Settings from a notebook's parameters (e.g. ``globals()``); unknown names are ignored."""
        return cls(**{f.name: namespace[f.name] for f in fields(cls) if f.name in namespace})

    def replace(self, **changes: Any) -> BookSettings:
        return replace(self, **changes)

    def configure(self) -> BookSettings:
        """Apply the process-wide settings (PyTorch's CPU threads when ``threads`` is set, pandas' display of
        long table cells); returns ``self``.

        One thread avoids the large slow-down of CPU oversubscription when other processes
        share the cores (CI uses it); ``None`` keeps PyTorch's default (all cores). Tables show
        every cell in full: pandas cuts text at 50 characters by default, which would cut an
        interval cell such as ``-0.081 [-0.099, -0.064], 5 paired seeds, p < 0.001`` before its p-value.
        """
        import pandas as pd

        pd.set_option("display.max_colwidth", None)
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        return self

    @property
    def torch_device(self) -> torch.device:
        from dmd_core.devices import pick_device

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
        from dmd_core.data.synth import SynthSpec

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
        from dmd_core.data.synth import write_mmsa

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
        """The official recipe with ``epochs`` as ``max_epochs``, the seeds, ``precision``, and ``lr``/``accumulation``
        if set."""
        recipe = {"max_epochs": self.epochs, "seeds": self.seeds, "precision": self.precision}
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
        return self.seed_runs_of({name: config}, data_file, train_config, progress=progress)[name]

    def seed_runs_of(self, configs: Mapping[str, DMDConfig], data_file: Path, train_config: TrainConfig,
                     seeds: Sequence[int] | None = None, progress: bool = True) -> dict[str, SeedRuns]:  # fmt: skip
        """Several models (``{name: config}``), every seed (default ``train_config.seeds``) in one folder each.

        Finished seeds are read back; the missing ones of every model train together, ``workers``
        at a time on CPU (:func:`~dmd_core.seeds.train_runs`), one after another on a GPU.
        """
        from dmd_core.runs import load_seeds, seed_dir
        from dmd_core.seeds import RunJob, summarize_seeds, train_runs

        seeds = tuple(train_config.seeds if seeds is None else seeds)
        folders = {name: self.run_dir(name, config, data_file, train_config) for name, config in configs.items()}
        missing = [(name, s) for name, folder in folders.items() for s in seeds if not _seeds_done(folder, (s,))]
        if missing:
            workers = self.workers if self.torch_device.type == "cpu" else 1
            text = "bert" if any(c.use_bert for c in configs.values()) else "features"
            # One process: the cached copy of the file; several: each worker reads the file itself.
            data = self.load(data_file, text) if workers == 1 else Path(data_file)
            jobs = [RunJob(configs[name], data, train_config, seed_dir(folders[name], s), s, text, self.mmap_dir)
                    for name, s in missing]  # fmt: skip
            train_runs(jobs, workers, threads=self.threads, device=self.device, resume=True, progress=progress)
            for name in dict.fromkeys(name for name, _ in missing):  # over every finished seed of the folder
                done = [s for s in load_seeds(folders[name]).runs if _seeds_done(folders[name], (s,))]
                summarize_seeds(folders[name], sorted(done))
        return {name: load_seeds(folder) for name, folder in folders.items()}

    def single_run(self, name: str, config: DMDConfig, data_file: Path, train_config: TrainConfig,
                   seed: int | None = None, progress: bool = True) -> Run:  # fmt: skip
        """One seed (default: the first) in ``<run_dir>/seed_<seed>``: read back if finished, else trained."""
        return self.single_runs({name: config}, data_file, train_config, seed, progress)[name]

    def single_runs(self, configs: Mapping[str, DMDConfig], data_file: Path, train_config: TrainConfig,
                    seed: int | None = None, progress: bool = True) -> dict[str, Run]:  # fmt: skip
        """One seed (default: the first) of several models (``{name: config}``), trained together where missing."""
        seed = train_config.seeds[0] if seed is None else int(seed)
        found = self.seed_runs_of(configs, data_file, train_config, seeds=(seed,), progress=progress)
        return {name: seed_runs.runs[seed] for name, seed_runs in found.items()}


def _seeds_done(folder: Path, seeds: Sequence[int]) -> bool:
    return all((Path(folder) / f"seed_{s}" / "test_metrics.json").is_file() for s in seeds)


_LOADED: dict[tuple, Any] = {}


def _load_cached(path: str, text: str, mtime: int, mmap_dir: str | None = None) -> MMSADataset:
    from dmd_core.data import load_mmsa

    key = (path, text, mtime, mmap_dir)
    if key not in _LOADED:
        _LOADED.clear()  # keep one file in memory at a time
        _LOADED[key] = load_mmsa(path, text=text, mmap_dir=mmap_dir)
    return _LOADED[key]
