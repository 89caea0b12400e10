"""Several seeds of the recipe into one folder, one after another or in parallel processes.

::

    results = train_seeds(model_config, dataset, train_config, "runs/mosi")   # seed_1111/, ... + summary

Each seed is one :func:`dmd_core.trainer.train` run in ``run_dir/seed_<n>/``; ``summary.json`` and
``summary.csv`` hold the mean and standard deviation of every test metric over the seeds.

Under ``torchrun``, by default every seed uses every rank (DistributedDataParallel), one seed after
another. ``train_seeds(..., parallel=True)`` instead runs different seeds on different ranks, which
share nothing but a gloo process group used once, at the start: a rank that finishes early (fewer
seeds, earlier early stopping) leaves a file saying so and exits, and rank 0 waits for those files
(no collective, so no collective timeout: NCCL's is 10 minutes) before it writes the summary.

Without ``torchrun``, ``train_seeds(..., workers=N)`` trains the seeds in N local processes at
once (:func:`train_runs`), each with its share of the CPU threads: on a small model a few
single-threaded processes use the cores better than one process with every thread. Each run
gives the same numbers as in one process with the same number of threads (a run depends on its
seed only).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import runs
from .config import DMDConfig, TrainConfig
from .data import data_reference, open_dataset
from .devices import DistInfo, init_distributed
from .metrics import METRIC_NAMES
from .model import DMD
from .trainer import RunResult, Trainer, train

if TYPE_CHECKING:
    from .data import MMSADataset

log = logging.getLogger(__name__)

__all__ = ["train_seeds", "SeedsResult", "RunJob", "train_runs", "summarize_seeds", "wait_for_ranks"]


@dataclass
class SeedsResult:
    """What :func:`train_seeds` returns: per-seed results (this rank's) and the summary (rank 0)."""

    run_dir: Path
    results: dict[int, RunResult]
    summary: dict[str, Any] | None

    @property
    def runs(self) -> runs.SeedRuns:
        return runs.load_seeds(self.run_dir)


def train_seeds(
    model_config: DMDConfig | None,
    dataset_or_path: MMSADataset | str | Path,
    train_config: TrainConfig | None = None,
    run_dir: str | Path = "runs/dmd",
    seeds: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    progress: bool = True,
    parallel: bool = False,
    text: str = "auto",
    mmap_dir: str | None = None,
    tensorboard: str | Path | None = None,
    workers: int = 1,
) -> SeedsResult:
    """Train several seeds (default ``train_config.seeds``, 1111-1115) into ``run_dir/seed_<n>/``.

    Writes ``summary.json`` and ``summary.csv``: mean and std (ddof=0) over seeds of every test
    metric. ``parallel=True`` under torchrun: rank r trains seeds r, r+W, ... on its own device
    (no DDP; ranks may finish at very different times, see :func:`wait_for_ranks`); otherwise
    each seed uses every rank (DDP) in turn. ``tensorboard``: a folder for
    TensorBoard event files, one run per seed (``tensorboard/seed_<n>``). ``workers`` > 1 (not
    under torchrun): the seeds in that many local processes at once (:func:`train_runs`).
    """
    if workers > 1 and "WORLD_SIZE" not in os.environ:
        train_config = train_config or TrainConfig()
        seeds = tuple(train_config.seeds if seeds is None else seeds)
        jobs = [RunJob(model_config, dataset_or_path, train_config, runs.seed_dir(run_dir, s), s, text, mmap_dir,
                       tensorboard) for s in seeds]  # fmt: skip
        results = train_runs(jobs, workers, device=device, resume=resume, progress=progress)
        return SeedsResult(Path(run_dir), dict(zip(seeds, results)), summarize_seeds(run_dir, seeds))
    from .tensorboard import TensorBoardLogger

    board = TensorBoardLogger(tensorboard) if tensorboard is not None else None
    train_config = train_config or TrainConfig()
    seeds = tuple(train_config.seeds if seeds is None else seeds)
    ds, cfg = open_dataset(dataset_or_path, model_config, text, mmap_dir)
    run_dir = Path(run_dir)
    info, dev = init_distributed(device, backend="gloo" if parallel else None)  # parallel: no GPU collective
    mine = seeds[info.rank :: info.world_size] if parallel else seeds
    token = parallel_token(info) if parallel and info.enabled else None
    results = {}
    try:
        try:
            for seed in tqdm(mine, desc="seeds", disable=not progress or not info.is_main or len(mine) < 2):
                trainer = Trainer(cfg, ds, train_config, runs.seed_dir(run_dir, seed), seed, device=dev,
                                  progress=progress and info.is_main, data_ref=data_reference(dataset_or_path),
                                  distributed=not parallel, on_epoch_end=board)  # fmt: skip
                results[seed] = trainer.fit(resume=resume)
        except BaseException as err:
            if token is not None and not info.is_main:
                report_done(run_dir, info.rank, token, error=f"{type(err).__name__}: {err}")
            raise
        if token is not None and info.is_main:  # parallel seeds: files, no collective (ranks may finish hours apart)
            wait_for_ranks(run_dir, info.world_size, token)
        elif token is not None:
            report_done(run_dir, info.rank, token)
        elif info.enabled:
            dist.barrier()  # DDP: every rank trained every seed together
        summary = summarize_seeds(run_dir, seeds) if info.is_main else None
    finally:
        if board is not None:
            board.close()
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()
    return SeedsResult(run_dir, results, summary)


def summarize_seeds(run_dir: str | Path, seeds: Sequence[int]) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.csv`` of ``run_dir``'s seeds (each seed's test metrics must exist)."""
    per_seed = {s: runs.read_json(runs.seed_dir(run_dir, s) / runs.TEST_METRICS) for s in seeds}
    names = [*METRIC_NAMES, "loss"]
    summary = runs.write_summary(run_dir, {s: {k: m[k] for k in names} for s, m in per_seed.items()})
    means = ", ".join(f"{k} {summary['metrics'][k]['mean']:.4f}" for k in ("MAE", "Non0_acc_2", "Mult_acc_7"))
    log.info("%d seeds: %s", len(seeds), means)
    return summary


# ---- several runs in local processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunJob:
    """One :func:`~dmd_core.trainer.train` call: a model, a data file (or dataset), a recipe, a folder, a seed."""

    model_config: DMDConfig | None
    data: MMSADataset | str | Path
    train_config: TrainConfig
    run_dir: str | Path
    seed: int
    text: str = "auto"
    mmap_dir: str | None = None
    tensorboard: str | Path | None = None


def train_runs(jobs: Sequence[RunJob], workers: int = 1, threads: int | None = None,
               device: str | torch.device | None = None, resume: bool = False,
               progress: bool = True) -> list[RunResult]:  # fmt: skip
    """Train every job, ``workers`` at a time in separate processes; results in the order of ``jobs``.

    ``threads``: PyTorch's CPU threads in each process (default: this process's threads shared out,
    at least one). A job's numbers do not depend on the processes around it: a run is a function of
    its seed, and the same thread count gives the same bits (under any load with ``DMD_THREADS=fixed``:
    :mod:`dmd_core.threads`). ``workers`` 1: in this process, one
    after another. A job that fails stops the others and raises its error here.
    """
    if workers < 1:
        raise ValueError(f"train_runs: workers must be at least 1, found {workers}")
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_train_job(job, device, resume, progress) for job in jobs]
    threads = threads or max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or CUDA state
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:  # fmt: skip
        futures = [pool.submit(_train_job, job, device, resume, False, True) for job in jobs]
        try:
            done = [f.result() for f in tqdm(futures, desc="runs", disable=not progress)]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return [_with_model(r, job) for r, job in zip(done, jobs)]


def _train_job(job: RunJob, device: str | torch.device | None, resume: bool, progress: bool,
               in_worker: bool = False) -> RunResult:  # fmt: skip
    result = train(job.model_config, job.data, job.train_config, job.run_dir, seed=job.seed, device=device,
                   resume=resume, progress=progress, text=job.text, mmap_dir=job.mmap_dir,
                   tensorboard=job.tensorboard)  # fmt: skip
    return replace(result, model=None) if in_worker else result  # the weights come back through best.pt


def _with_model(result: RunResult, job: RunJob) -> RunResult:
    """The worker's result with its best-validation weights, read from its ``best.pt`` (eval mode)."""
    config = DMDConfig.from_dict(runs.read_json(Path(result.run_dir) / runs.CONFIG)["model"])
    model = DMD(config)
    model.load_state_dict(runs.load_checkpoint(Path(result.run_dir) / runs.BEST)["model"])
    return replace(result, model=model.eval())


# ---- parallel seeds: ranks finish at different times ----------------------------------------------------------

# How long rank 0 waits for the other ranks' seeds (parallel seeds): long enough for any seed of the recipe.
PARALLEL_WAIT_S = 7 * 24 * 3600.0


def parallel_token(info: DistInfo) -> str:
    """An id of this ``train_seeds`` call, the same on every rank (rank 0's, broadcast once, at the start)."""
    token = [uuid.uuid4().hex if info.is_main else None]
    dist.broadcast_object_list(token, src=0)
    return str(token[0])


def done_file(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f".rank{rank}.done"


def report_done(run_dir: Path, rank: int, token: str, error: str | None = None) -> None:
    """Rank ``rank`` has trained all its seeds (or failed, ``error``): it says so in a file and may exit."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    runs.write_json(done_file(run_dir, rank), {"token": token, "error": error})


def wait_for_ranks(run_dir: Path, world_size: int, token: str, timeout: float = PARALLEL_WAIT_S,
                   poll: float = 0.5) -> None:  # fmt: skip
    """Rank 0 waits until every other rank has reported its seeds done (files, so no collective timeout).

    Files of an earlier call (another ``token``) are not counted. Raises if a rank reports a failure,
    or :class:`TimeoutError` after ``timeout`` seconds. The files are removed once read.
    """
    deadline, pending = time.monotonic() + timeout, set(range(1, world_size))
    while pending:
        for rank in sorted(pending):
            path = done_file(run_dir, rank)
            note = runs.read_json(path) if path.is_file() else {}
            if note.get("token") != token:
                continue
            if note.get("error"):
                raise RuntimeError(f"parallel seeds: rank {rank} failed: {note['error']}")
            pending.discard(rank)
            path.unlink(missing_ok=True)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"parallel seeds: ranks {sorted(pending)} did not finish within {timeout:.0f} s")
        if pending:
            time.sleep(poll)
