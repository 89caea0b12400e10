"""Training DMD: the published recipe in one readable loop (:meth:`Trainer.train_epoch`).

::

    result = train(model_config, "mosi.pkl", TrainConfig(max_epochs=20), "runs/mosi", seed=1111)

The recipe (the book's method reference, "Training recipe"; the numbers are :class:`TrainConfig`'s
defaults): ``torch.optim.Adam`` over the model and both GD-Units; each mini-batch's loss (not divided) is
back-propagated into the running sum of gradients, which is clipped by value after every backward; every
``accumulation`` mini-batches the optimizer steps. ``ReduceLROnPlateau`` and early stopping watch the
validation L1 loss, computed once per epoch; the test split is evaluated once, at the end, with the
best-validation weights. Where we differ from the reference, on purpose: the book's method reference,
"Where we differ from the reference". Evaluation lives in :mod:`dmd_core.evaluation`, run folders (and
the columns of ``history.csv``) in :mod:`dmd_core.runs`, several seeds in :mod:`dmd_core.seeds`.

Determinism: one seed fixes the initial weights (Python, numpy, torch seeded), the dropout
masks and the shuffling (a CPU ``torch.Generator`` of the run: the same order on every device;
the permutation goes to the GPU once per epoch, not once per mini-batch). ``last.pt`` holds every
RNG state, so a resumed run continues exactly where it stopped: on CPU, resuming gives the same
numbers, bit for bit, as a run that was never interrupted. Evaluation on a CPU that other processes
keep busy runs on fewer threads (:mod:`dmd_core.threads`), which can change validation numbers in their
last bits; ``DMD_THREADS=fixed`` keeps every run bit-identical under any load.

Precision (``TrainConfig.precision``, :mod:`dmd_core.precision`): ``fp32`` is the recipe; ``bf16`` and
``fp16`` run the model under autocast. Labels, losses, metrics and the early-stopping comparison stay
float32; fp16's gradient scaler keeps the recipe's clipping exact (:func:`~dmd_core.precision.clip_gradients`).

Non-finite losses: each step records, on the device, whether the loss is finite. On CPU it is
checked before every optimizer step; on CUDA (where a check is a host synchronisation) and
under DDP, at the end of the epoch. A non-finite loss raises :class:`NonFiniteLossError`
naming the epoch, the mini-batch and the loss parts; no checkpoint is written after it, so
``last.pt`` and ``best.pt`` keep the last good epoch.

Distributed: under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) the model is
wrapped in ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPU); each rank trains on its
shard of the shuffled train split (padded to equal length, as ``DistributedSampler`` does);
gradients are averaged over ranks at every backward, so the replicas stay identical. Rank 0
validates, tests and writes every file; the validation loss is broadcast so that every rank
takes the same scheduling and stopping decisions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import runs
from .config import DMDConfig, TrainConfig
from .data import data_reference, open_dataset
from .devices import DistInfo, configure_cuda, init_distributed, pick_device, place_dataset, use_cuda_device
from .distill import EDGE_NAMES
from .epoch_stats import PARTS, EpochStats
from .evaluation import predict
from .evaluation import scores as evaluation_scores
from .losses import total_loss
from .metrics import METRIC_NAMES
from .model import DMD
from .precision import autocast, clip_gradients, grad_scaler, resolve_precision
from .rng import rng_state, seed_everything, set_rng_state

if TYPE_CHECKING:
    from .data import MMSADataset

log = logging.getLogger(__name__)

# The model's improvement must exceed this for early stopping to count it (the reference's).
MIN_DELTA = 1e-6

__all__ = ["train", "RunResult", "NonFiniteLossError", "Trainer", "EpochStats", "PARTS"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without writing a checkpoint."""


@dataclass
class RunResult:
    """What :func:`train` returns. ``model`` holds the best-validation weights (eval mode).

    ``test_metrics`` is None on ranks other than 0 under DDP. ``run`` reads the folder back.
    """

    run_dir: Path
    seed: int
    test_metrics: dict[str, Any] | None
    best_epoch: int
    epochs: int
    stop_reason: str
    history: list[dict[str, float]] = field(repr=False)
    model: DMD = field(repr=False)

    @property
    def run(self) -> runs.Run:
        return runs.load_run(self.run_dir)


def unused_parameters(model: DMD) -> list[nn.Parameter]:
    """Parameters no loss reaches: a temporal projection skipped because ``d_in == d``, and a BERT that
    is not fine-tuned. The trainer freezes them (``requires_grad=False``), which changes no number.
    (The reference's other unused layers, the projections of ``s_m`` and BERT's pooler, are not built.)"""
    unused = [p for m, skip in model.skip_proj.items() if skip for p in model.proj[m].parameters()]
    if model.text_encoder is not None and not model.text_encoder.finetune:
        unused += list(model.text_encoder.parameters())
    return unused


class Trainer:
    """One training run (one seed) of the recipe, writing one run folder.

    Most users call :func:`train`. ``on_epoch_end(trainer, row)`` is called after every
    epoch's checkpoint is written (``row`` is the history row), e.g. to plot edges live.
    """

    def __init__(
        self,
        model_config: DMDConfig,
        dataset: MMSADataset,
        train_config: TrainConfig,
        run_dir: str | Path,
        seed: int,
        device: str | torch.device | None = None,
        progress: bool = True,
        on_epoch_end: Callable[[Trainer, dict], None] | None = None,
        data_ref: str | None = None,
        distributed: bool = True,
    ) -> None:
        if distributed:
            self.dist, self.device = init_distributed(device)
        else:
            self.dist, self.device = DistInfo(), pick_device(device)
        if self.device.type == "cuda":
            self.device = use_cuda_device(self.device)  # the current GPU, by index (devices.resolve_device)
            configure_cuda(train_config.tf32)
        self.cfg, self.tcfg, self.seed = model_config, train_config, int(seed)
        self.precision = resolve_precision(train_config.precision, self.device)  # "fp32", "bf16" or "fp16"
        self.dataset, self.data_ref = place_dataset(dataset, self.device), data_ref
        self.run_dir = Path(run_dir)
        self.progress = progress and self.dist.is_main
        self.on_epoch_end = on_epoch_end
        # Everything random below (initial weights) follows from the seed.
        seed_everything(self.seed)
        self.model = DMD(model_config).to(self.device)
        for p in unused_parameters(self.model):
            p.requires_grad_(False)  # no loss reaches them: DDP must not wait for their gradients
        self.generator = torch.Generator().manual_seed(self.seed)  # train shuffling
        self.forward = self._wrap(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=train_config.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=train_config.plateau_factor, patience=train_config.plateau_patience
        )
        self.scaler = grad_scaler(self.device, self.precision)  # enabled for fp16 only
        self.found_inf = torch.zeros((), device=self.device)  # fp16: clip_gradients records an overflow here
        self.epoch = 0  # completed epochs
        self.steps = 0  # optimizer steps
        self.best_valid, self.best_epoch = math.inf, 0
        self.stop_reason = ""
        self.history: list[dict[str, float]] = []
        self.model_is_best = False  # the weights are those of best.pt (set when an epoch improves, until the next)
        self.files = runs.FileWriter()  # the run folder's checkpoints are written on a background thread

    def _wrap(self, model: DMD) -> nn.Module:
        """The module the training step calls: DDP and/or ``torch.compile`` around the model."""
        forward: nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Every trainable parameter gets a gradient at every step (see unused_parameters), so plain DDP
            # works: gradients are averaged over ranks after each backward, also within an accumulation group.
            forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.tcfg.compile:
            forward = torch.compile(forward)
        return forward

    # ---- files ----

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "model": self.cfg.to_dict(),
            "train": self.tcfg.to_dict(),
            "seed": self.seed,
            "data": self.data_ref,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "precision": self.precision,
            "torch": torch.__version__,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "steps": self.steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_valid": self.best_valid,
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
            "history": self.history,
            "rng": rng_state(self.device),
            "generator": self.generator.get_state(),
            "scaler": self.scaler.state_dict(),  # empty unless fp16
            "seed": self.seed,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore everything :meth:`_state` saved (model, optimizer, scheduler, early stop, RNGs, history)."""
        self.model.load_state_dict(state["model"])
        self.model_is_best = False
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.steps = int(state["epoch"]), int(state["steps"])
        self.best_valid, self.best_epoch = float(state["best_valid"]), int(state["best_epoch"])
        self.stop_reason = state["stop_reason"]
        self.history = list(state["history"])
        set_rng_state(state["rng"], self.device)
        self.generator.set_state(state["generator"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def _assert_finite_weights(self, what: str) -> None:
        params = list(self.model.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).cpu()  # one host sync
        bad = [n for (n, _), ok in zip(params, finite.tolist()) if not ok]
        if bad:
            raise NonFiniteLossError(
                f"epoch {self.epoch}: non-finite weights in {bad[:5]}{' ...' if len(bad) > 5 else ''}; "
                f"{what} not written, the previous checkpoint in {self.run_dir} is intact"
            )

    # ---- one epoch ----

    def _train_batches(self) -> tuple[Iterable, int]:
        """This rank's mini-batches of the shuffled train split, and how many there are."""
        split, bs = self.dataset["train"], self.tcfg.batch_size
        if not self.dist.enabled:
            return split.batches(bs, shuffle=True, generator=self.generator, device=self.device), split.num_batches(bs)
        n, world = len(split), self.dist.world_size
        order = torch.randperm(n, generator=self.generator)
        padded = torch.cat([order, order[: math.ceil(n / world) * world - n]])  # equal shards, as DistributedSampler
        shard = padded[self.dist.rank :: world]
        return split.subset(shard).batches(bs, shuffle=False, device=self.device), math.ceil(len(shard) / bs)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the train split: the recipe's accumulate, clip, step. Returns the epoch's means.

        The gradients of ``accumulation`` mini-batches add up (each loss back-propagated as it is, not
        divided), the running sum is clipped by value after every backward, then the optimizer steps.
        The scaler's calls are those of PyTorch's mixed-precision examples; for fp32 and bf16 the scaler
        is disabled and each is the plain call (``scale(loss)`` is ``loss``, ``step`` is ``optimizer.step()``).
        """
        epoch = self.epoch + 1
        self.model_is_best = False
        self.forward.train()
        optimizer, scaler, acc = self.optimizer, self.scaler, self.tcfg.accumulation
        batches, n_batches = self._train_batches()
        stats = EpochStats(self.device)
        check_each_step = self.device.type != "cuda" and not self.dist.enabled  # a check is free on CPU
        bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", leave=False, disable=not self.progress)
        for i, batch in enumerate(bar):
            if i % acc == 0:  # a new group of mini-batches
                optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.precision):
                out = self.forward(batch.text, batch.audio, batch.vision)
                parts = total_loss(self.model, out, batch.labels)  # float32 whatever the precision
            scaler.scale(parts.total).backward()  # adds to the group's gradients: the loss is not divided by `acc`
            clip_gradients(self.params, self.tcfg.grad_clip, scaler, self.found_inf)  # the running sum, every time
            stats.add(i, parts, out)
            if (i + 1) % acc == 0 or (i == n_batches - 1 and self.tcfg.leftover_step):
                if check_each_step:
                    self._raise_if_bad(epoch, stats)
                scaler.step(optimizer)  # fp16: unscales once, skips the step after an overflow
                scaler.update()
                self.steps += 1
        bar.close()
        if self.dist.enabled:  # every rank must stop if any rank saw a non-finite loss
            stats.all_reduce()
        self._raise_if_bad(epoch, stats)
        return stats.row()

    def _raise_if_bad(self, epoch: int, stats: EpochStats) -> None:
        step, parts = stats.first_non_finite()  # host sync: only at optimizer steps on CPU, at epoch end elsewhere
        if step < 0:
            return
        named = ", ".join(f"{p}={v}" for p, v in parts.items()) or "(on another rank)"
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, mini-batch {step + 1}: {named}. The run stopped; "
            f"{self.run_dir / runs.LAST} still holds the last good epoch ({self.epoch}). Check the data for "
            f"NaN/inf, lower the learning rate, or train in float32 (precision 'fp32')."
        )

    def validate(self) -> dict[str, float]:
        """Validation loss, metrics and mean edges (rank 0 computes; the loss is broadcast to every rank)."""
        row: dict[str, float] = {}
        if self.dist.is_main:
            pred = predict(
                self.model, self.dataset["valid"], self.device, batch_size=self._eval_bs(), precision=self.precision
            )
            scores = evaluation_scores(pred)
            row["valid_loss"] = scores["loss"]
            row.update({f"valid_{m}": scores[m] for m in METRIC_NAMES})
            for unit, edges in (("homo", pred.homo_edges), ("hetero", pred.hetero_edges)):
                row.update({f"valid_{unit}_{e}": float(v) for e, v in zip(EDGE_NAMES, edges.double().mean(0))})
        if self.dist.enabled:
            loss = torch.tensor([row.get("valid_loss", 0.0)], dtype=torch.float64, device=self.device)
            dist.broadcast(loss, 0)
            row["valid_loss"] = float(loss)
        return row

    def _eval_bs(self) -> int:
        return self.tcfg.eval_batch_size or self.tcfg.batch_size

    # ---- the run ----

    def _open_run_folder(self, resume: bool) -> None:
        """Create the run folder, or resume the run in it (``resume``); write ``config.json``."""
        main, last_file = self.dist.is_main, self.run_dir / runs.LAST
        # Rank 0 looks at the folder before anyone writes, and every rank follows its answer
        # (under DDP the run folder must be on a file system that every rank sees).
        decision = [resume and last_file.is_file(), not resume and (self.run_dir / runs.CONFIG).exists()]
        if self.dist.enabled:
            dist.broadcast_object_list(decision, src=0)
        resuming, occupied = decision
        if occupied:
            raise FileExistsError(
                f"{self.run_dir} already holds a run; resume it (resume=True, dmd train --resume) or pick another folder"
            )
        if resuming:
            runs.check_resumable(self.run_dir, self.cfg, self.tcfg, self.seed)
            self.load_state(runs.load_checkpoint(last_file, map_location="cpu"))  # RNG states must stay on the CPU
            log.info("resuming %s after epoch %d", self.run_dir, self.epoch)
            if self.stop_reason == "max_epochs" and (self.tcfg.max_epochs is None or self.tcfg.max_epochs > self.epoch):
                self.stop_reason = ""  # the bound was raised: carry on
        elif main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if main:
            runs.write_json(self.run_dir / runs.CONFIG, self.meta)

    def _save_epoch(self, improved: bool, valid_loss: float) -> None:
        """Rank 0 writes ``best.pt`` (when ``improved``), ``history.csv`` and ``last.pt`` (every RNG state).

        The checkpoints are serialised here (a snapshot of this epoch's tensors); the disk writes and
        syncs run on ``self.files``'s thread while the next epoch (or the test) computes.
        """
        if not self.dist.is_main:
            return
        self._assert_finite_weights("checkpoint")
        if improved:
            self.files.write(self.run_dir / runs.BEST, runs.checkpoint_bytes({
                "model": self.model.state_dict(), "epoch": self.epoch, "valid_loss": valid_loss, "seed": self.seed,
            }))  # fmt: skip
        self.files.write(self.run_dir / runs.HISTORY, runs.csv_text(self.history).encode("utf-8"))
        self.files.write(self.run_dir / runs.LAST, runs.checkpoint_bytes(self._state()))

    def fit(self, resume: bool = False) -> RunResult:
        """Train until early stopping or ``max_epochs``, then test the best weights. Writes the run folder."""
        main = self.dist.is_main
        self._open_run_folder(resume)
        max_epochs = self.tcfg.max_epochs
        if max_epochs is not None and self.epoch >= max_epochs and not self.stop_reason:
            self.stop_reason = "max_epochs"
        epochs_bar = tqdm(total=max_epochs, initial=self.epoch, desc="epochs", disable=not self.progress)
        try:
            self._epochs(max_epochs, epochs_bar)
            log.info("stopped after epoch %d (%s); best epoch %d", self.epoch, self.stop_reason, self.best_epoch)
            test_metrics = self.test() if main else None  # while the last checkpoints are being written
        except BaseException:
            self._abandon_files()
            raise
        finally:
            epochs_bar.close()
        self.files.close()  # every file of the run is on disk when fit returns
        if self.dist.enabled:
            dist.barrier()
        return RunResult(self.run_dir, self.seed, test_metrics, self.best_epoch, self.epoch, self.stop_reason,
                         self.history, self.model)  # fmt: skip

    def _abandon_files(self) -> None:
        """On an error: finish the files still being written; a failure there is logged, not raised over the error."""
        try:
            self.files.close()
        except Exception:
            log.exception("writing the run folder %s failed as well", self.run_dir)

    def _epochs(self, max_epochs: int | None, epochs_bar: tqdm) -> None:
        last_file = self.run_dir / runs.LAST
        while not self.stop_reason:
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            row: dict[str, float] = {"epoch": self.epoch + 1, "lr": lr}
            row.update(self.train_epoch())
            row.update(self.validate())
            self.epoch += 1
            valid_loss = row["valid_loss"]
            if not math.isfinite(valid_loss):
                raise NonFiniteLossError(
                    f"non-finite validation loss at epoch {self.epoch}; {last_file} still holds epoch {self.epoch - 1}"
                )
            decimals = self.tcfg.valid_loss_decimals  # the reference rounds (4) before scheduling and comparing
            decided = valid_loss if decimals is None else round(valid_loss, decimals)
            self.scheduler.step(decided)
            improved = decided <= self.best_valid - MIN_DELTA
            if improved:
                self.best_valid, self.best_epoch = decided, self.epoch
            self.model_is_best = improved
            row.update(time_s=time.perf_counter() - start, steps=self.steps, best=int(improved),
                       best_valid_loss=self.best_valid)  # fmt: skip
            self.history.append(row)
            if self.epoch - self.best_epoch >= self.tcfg.early_stop:
                self.stop_reason = "early_stop"
            elif max_epochs is not None and self.epoch >= max_epochs:
                self.stop_reason = "max_epochs"
            self._save_epoch(improved, valid_loss)
            log.info(
                "epoch %d: train %.4f, valid %.4f (best %.4f at epoch %d), lr %.2e, %.1fs",
                self.epoch, row["train_total"], valid_loss, self.best_valid, self.best_epoch, lr, row["time_s"],
            )  # fmt: skip
            epochs_bar.update(1)
            epochs_bar.set_postfix(valid=f"{valid_loss:.4f}", best=f"{self.best_valid:.4f}")
            if self.on_epoch_end is not None:
                self.files.flush()  # the callback sees this epoch's files
                self.on_epoch_end(self, row)

    def test(self) -> dict[str, Any]:
        """Load the best weights, evaluate the test split once, write test_metrics.json and test_predictions.csv.

        When the last epoch trained was the best one, the model already holds the weights ``best.pt`` has.
        """
        best = self.run_dir / runs.BEST
        if not self.model_is_best and best.is_file():
            self.model.load_state_dict(runs.load_checkpoint(best, map_location=self.device)["model"])
        self.model.eval()
        pred = predict(self.model, self.dataset["test"], self.device, batch_size=self._eval_bs(),
                       precision=self.precision)  # fmt: skip
        metrics = {**evaluation_scores(pred), "best_epoch": self.best_epoch, "epochs": self.epoch,
                   "stop_reason": self.stop_reason, "seed": self.seed}  # fmt: skip
        runs.write_csv(self.run_dir / runs.TEST_PREDICTIONS, pred.rows())
        runs.write_json(self.run_dir / runs.TEST_METRICS, metrics)
        log.info("test (best epoch %d): %s", self.best_epoch,
                 ", ".join(f"{k} {metrics[k]:.4f}" for k in ("MAE", "Corr", "Non0_acc_2", "Mult_acc_7")))  # fmt: skip
        return metrics


def train(
    model_config: DMDConfig | None,
    dataset_or_path: MMSADataset | str | Path,
    train_config: TrainConfig | None = None,
    run_dir: str | Path = "runs/dmd",
    seed: int | None = None,
    device: str | torch.device | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[Trainer, dict], None] | None = None,
    text: str = "auto",
    mmap_dir: str | None = None,
    tensorboard: str | Path | None = None,
) -> RunResult:
    """Train one seed and write the run folder ``run_dir`` (see :mod:`dmd_core.runs`).

    ``model_config`` None: the dataset's suggested preset. ``dataset_or_path``: an
    :class:`~dmd_core.data.MMSADataset` or the path of an MMSA pickle (loaded with ``text``
    and ``mmap_dir``). ``seed`` None: ``train_config.seeds[0]``. ``device`` None: CUDA, then
    MPS, then CPU. ``resume``: continue from ``run_dir/last.pt`` when it exists. ``tensorboard``:
    a folder for TensorBoard event files (``tensorboard/seed_<n>``, see :mod:`dmd_core.tensorboard`).
    """
    from .tensorboard import TensorBoardLogger

    board = TensorBoardLogger(tensorboard, then=on_epoch_end) if tensorboard is not None else None
    train_config = train_config or TrainConfig()
    ds, cfg = open_dataset(dataset_or_path, model_config, text, mmap_dir)
    seed = train_config.seeds[0] if seed is None else seed
    trainer = Trainer(cfg, ds, train_config, run_dir, seed, device=device, progress=progress,
                      on_epoch_end=board or on_epoch_end, data_ref=data_reference(dataset_or_path))  # fmt: skip
    try:
        return trainer.fit(resume=resume)
    finally:
        if board is not None:
            board.close()
        if trainer.dist.owns_group and dist.is_initialized():
            dist.destroy_process_group()
