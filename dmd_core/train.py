"""Training and evaluation of DMD: the published recipe in one readable loop.

Public API (what the book and the ``dmd`` command call)::

    result = train(model_config, "mosi.pkl", TrainConfig(max_epochs=20), "runs/mosi", seed=1111)
    results = train_seeds(model_config, dataset, train_config, "runs/mosi")   # seed_1111/, ... + summary
    evaluate(model, dataset["test"], zero=("A",))        # metrics + loss with audio zeroed
    missing_modality_table(model, dataset["test"])       # every modality subset, one row each
    pick_device()                                        # CUDA, then MPS, then CPU

The recipe (spec section 11): Adam (lr 1e-4, no weight decay) over the model and both
GD-Units; each mini-batch's loss (not divided) is back-propagated into the running sum of
gradients, which is clipped by value (0.6) after every backward; every 10 mini-batches the
optimizer steps. ReduceLROnPlateau (factor 0.5, patience 5) and early stopping (10 epochs
without a validation loss lower by 1e-6) both watch the validation L1 loss, computed once
per epoch. The test split is evaluated once, at the end, with the best-validation weights.

Where we differ from the reference, on purpose: the leftover mini-batches at the end of an
epoch (fewer than 10) take an optimizer step (the reference silently drops their gradients,
so with fewer than 10 batches per epoch it never learns; ``TrainConfig(leftover_step=False)``
restores that); predictions for metrics are computed under ``torch.inference_mode`` in eval
mode (the reference keeps their autograd graphs); validation and test are not shuffled; the
test split is not evaluated every epoch; only the best and the last checkpoints are kept;
``max_epochs`` bounds a run. Gradients of every trainable parameter are clipped (the model
and both GD-Units).

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

Determinism: one seed fixes the initial weights (Python, numpy, torch seeded), the dropout
masks and the shuffling (a ``torch.Generator`` of the run). ``last.pt`` holds every RNG
state, so a resumed run continues exactly where it stopped: on CPU, resuming gives the same
numbers, bit for bit, as a run that was never interrupted.

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
takes the same scheduling and stopping decisions. ``train_seeds(..., parallel=True)`` instead
runs different seeds on different ranks.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import runs
from .config import MODALITIES, DMDConfig, TrainConfig
from .devices import autocast, configure_cuda, init_distributed, pick_device, rng_state, seed_everything, set_rng_state
from .distill import EDGE_NAMES
from .losses import LossParts, total_loss
from .metrics import METRIC_NAMES, regression_metrics
from .model import DMD

if TYPE_CHECKING:
    import pandas as pd

    from .data import MMSADataset, Split

log = logging.getLogger(__name__)

PARTS = tuple(f.name for f in LossParts.__dataclass_fields__.values())  # total, task, recon, ...
# The model's improvement must exceed this for early stopping to count it (the reference's).
MIN_DELTA = 1e-6

__all__ = ["train", "train_seeds", "evaluate", "predict", "missing_modality_table", "pick_device", "RunResult",
           "SeedsResult", "Predictions", "NonFiniteLossError", "Trainer"]  # fmt: skip


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without writing a checkpoint."""


# ---- evaluation ------------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Per-sample outputs on one split: ``prediction``, ``labels`` (N,), ``homo_edges``/``hetero_edges`` (N, 6)."""

    ids: list[str]
    labels: torch.Tensor
    prediction: torch.Tensor
    homo_edges: torch.Tensor
    hetero_edges: torch.Tensor

    def rows(self) -> list[dict[str, Any]]:
        """One dict per sample: id, label, prediction, ``homo_<edge>`` and ``hetero_<edge>``."""
        out = []
        for i, sample_id in enumerate(self.ids):
            row = {"id": sample_id, "label": float(self.labels[i]), "prediction": float(self.prediction[i])}
            row.update({f"homo_{e}": float(self.homo_edges[i, k]) for k, e in enumerate(EDGE_NAMES)})
            row.update({f"hetero_{e}": float(self.hetero_edges[i, k]) for k, e in enumerate(EDGE_NAMES)})
            out.append(row)
        return out


def _check_zero(zero: Iterable[str]) -> tuple[str, ...]:
    zero = tuple(zero)
    bad = [m for m in zero if m not in MODALITIES]
    if bad:
        raise ValueError(f"zero: unknown modalities {bad}; expected a subset of {MODALITIES}")
    return zero


@contextmanager
def _zero_text_encoder(model: DMD, active: bool):
    """With BERT, "zeroing" language means zero text *features*: BERT's output is replaced by zeros."""
    if not active or model.text_encoder is None:
        yield
        return
    handle = model.text_encoder.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


def _model_inputs(model: DMD, batch, zero: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(text, audio, vision)`` of a batch with the modalities in ``zero`` replaced by zeros."""
    text, audio, vision = batch.text, batch.audio, batch.vision
    if "L" in zero and model.text_encoder is None:
        text = torch.zeros_like(text)
    if "A" in zero:
        audio = torch.zeros_like(audio)
    if "V" in zero:
        vision = torch.zeros_like(vision)
    return text, audio, vision


@torch.inference_mode()
def predict(
    model: DMD,
    split: Split,
    device: str | torch.device | None = None,
    zero: Iterable[str] = (),
    batch_size: int = 64,
    bf16: bool = False,
) -> Predictions:
    """Predictions and per-sample GD edges of ``model`` (eval mode) on every sample of ``split``.

    ``zero``: modalities replaced by zeros at the input (``("A",)``, ``("V", "A")``, ...);
    with BERT, language is zeroed at BERT's output. The model's train/eval mode is restored.
    """
    zero = _check_zero(zero)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device)
    was_training = model.training
    model.eval()
    preds, labels, homo, hetero = [], [], [], []
    try:
        with _zero_text_encoder(model, "L" in zero):
            for batch in split.batches(batch_size, shuffle=False, device=device):
                with autocast(device, bf16):
                    out = model(*_model_inputs(model, batch, zero))
                preds.append(out.prediction.float().reshape(-1))
                labels.append(batch.labels.float().reshape(-1))
                homo.append(out.homo_graph.edges.float().T)  # (B, 6)
                hetero.append(out.hetero_graph.edges.float().T)
    finally:
        model.train(was_training)
    return Predictions(
        ids=list(split.ids),
        labels=torch.cat(labels).cpu(),
        prediction=torch.cat(preds).cpu(),
        homo_edges=torch.cat(homo).cpu(),
        hetero_edges=torch.cat(hetero).cpu(),
    )


def _scores(pred: Predictions) -> dict[str, float]:
    """Metrics + ``loss`` (mean L1, the reference's validation loss) + ``n``."""
    loss = float((pred.prediction.double() - pred.labels.double()).abs().mean())
    return {**regression_metrics(pred.prediction, pred.labels), "loss": loss, "n": len(pred.labels)}


def evaluate(
    model: DMD,
    split: Split,
    device: str | torch.device | None = None,
    zero: Iterable[str] = (),
    batch_size: int = 64,
) -> dict[str, float]:
    """MMSA metrics and the L1 ``loss`` of ``model`` on ``split``, optionally with modalities ``zero``-ed.

    Returns ``{Has0_acc_2, ..., Corr, loss, n}`` (plain numbers).
    """
    return _scores(predict(model, split, device=device, zero=zero, batch_size=batch_size))


def missing_modality_table(
    model: DMD, split: Split, device: str | torch.device | None = None, batch_size: int = 64
) -> pd.DataFrame:
    """Metrics with every subset of modalities zeroed at test time (none, one, two): 7 rows.

    Columns: ``present`` (e.g. ``"L+V"``), ``zeroed`` (e.g. ``"A"``, or ``"-"``), the metrics, ``loss``.
    """
    import pandas as pd

    rows = []
    for k in range(3):
        for zero in combinations(MODALITIES, k):
            present = "+".join(m for m in MODALITIES if m not in zero)
            scores = evaluate(model, split, device=device, zero=zero, batch_size=batch_size)
            rows.append({"present": present, "zeroed": "+".join(zero) or "-", **scores})
    return pd.DataFrame(rows)


# ---- data plumbing ---------------------------------------------------------------------------------------------


def _load_dataset(
    dataset_or_path: MMSADataset | str | Path, model_config: DMDConfig | None, text: str, mmap_dir: str | None
) -> tuple[MMSADataset, DMDConfig]:
    from .data import load_mmsa

    if isinstance(dataset_or_path, (str, Path)):
        ds = load_mmsa(dataset_or_path, text=text, config=model_config, mmap_dir=mmap_dir)
    else:
        ds = dataset_or_path
    config = model_config if model_config is not None else ds.suggest_config()
    for name in ("train", "valid", "test"):
        _check_split(ds[name], config)
    return ds, config


def _check_split(split: Split, cfg: DMDConfig) -> None:
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


def _data_ref(dataset_or_path: Any) -> str | None:
    if isinstance(dataset_or_path, (str, Path)):
        return str(Path(dataset_or_path).resolve())
    path = getattr(dataset_or_path, "path", None)
    return None if path is None else str(path)


# ---- the trainer -----------------------------------------------------------------------------------------------


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
    """Parameters no loss reaches: the reference's unused projections of ``s_m`` (kept so that its
    checkpoints load), a temporal projection skipped because ``d_in == d``, and a BERT that is not
    fine-tuned. The trainer freezes them (``requires_grad=False``), which changes no number."""
    unused = list(model.private_proj.parameters())
    unused += [p for m, skip in model.skip_proj.items() if skip for p in model.proj[m].parameters()]
    if model.text_encoder is not None and not model.text_encoder.finetune:
        unused += list(model.text_encoder.parameters())
    return unused


# Fields of TrainConfig that may change when a run is resumed.
RESUMABLE_CHANGES = ("max_epochs", "seeds", "eval_batch_size", "compile", "extra")


def place_dataset(dataset: MMSADataset, device: torch.device, budget: float = 0.5) -> MMSADataset:
    """The whole dataset on a CUDA ``device`` when it takes under ``budget`` of the free GPU memory.

    Batches are then slices of GPU tensors: no host-to-device copy per step. Memory-mapped
    datasets (too large for RAM, e.g. MOSEI unaligned on a 12 GB machine) stay where they are
    and are copied batch by batch (pinned, non-blocking).
    """
    if device.type != "cuda" or dataset.mmap_dir is not None:
        return dataset
    size = sum(
        t.numel() * t.element_size()
        for split in dataset.splits.values()
        for t in (split.text, split.audio, split.vision, split.labels)
        if isinstance(t, torch.Tensor)
    )
    free, _ = torch.cuda.mem_get_info(device)
    if size > budget * free:
        log.info("dataset (%.1f GB) stays on the host: over %.0f%% of free GPU memory", size / 1e9, 100 * budget)
        return dataset
    log.info("dataset (%.2f GB) moved to %s", size / 1e9, device)
    return dataset.to(device)


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
            from .devices import DistInfo

            self.dist, self.device = DistInfo(), pick_device(device)
        self.cfg, self.tcfg, self.seed = model_config, train_config, int(seed)
        self.dataset, self.data_ref = place_dataset(dataset, self.device), data_ref
        self.run_dir = Path(run_dir)
        self.progress = progress and self.dist.is_main
        self.on_epoch_end = on_epoch_end
        if self.device.type == "cuda":
            configure_cuda(train_config.tf32)
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
        self.epoch = 0  # completed epochs
        self.steps = 0  # optimizer steps
        self.best_valid, self.best_epoch = math.inf, 0
        self.stop_reason = ""
        self.history: list[dict[str, float]] = []

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
            "torch": torch.__version__,
        }

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        """The saved run was made with the same model, recipe and seed (``max_epochs`` may grow)."""

        def differing(ours: dict, theirs: dict, allowed: tuple[str, ...] = ()) -> list[str]:
            ours = runs._json_safe(ours)
            return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k) and k not in allowed)

        problems = []
        if diff := differing(self.cfg.to_dict(), saved.get("model", {})):
            problems.append(f"model config differs in {diff}")
        if diff := differing(self.tcfg.to_dict(), saved.get("train", {}), RESUMABLE_CHANGES):
            problems.append(f"train config differs in {diff}")
        if saved.get("seed") != self.seed:
            problems.append(f"seed {saved.get('seed')} != {self.seed}")
        if problems:
            raise ValueError(f"cannot resume {self.run_dir}: " + "; ".join(problems))

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
            "seed": self.seed,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore everything :meth:`_state` saved (model, optimizer, scheduler, early stop, RNGs, history)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.steps = int(state["epoch"]), int(state["steps"])
        self.best_valid, self.best_epoch = float(state["best_valid"]), int(state["best_epoch"])
        self.stop_reason = state["stop_reason"]
        self.history = list(state["history"])
        set_rng_state(state["rng"], self.device)
        self.generator.set_state(state["generator"])

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
        """One pass over the train split: accumulate, clip, step. Returns the epoch's mean loss parts and edges."""
        epoch = self.epoch + 1
        self.forward.train()
        acc, clip = self.tcfg.accumulation, self.tcfg.grad_clip
        batches, n_batches = self._train_batches()
        dev = self.device
        sums = torch.zeros(len(PARTS), device=dev)  # running sums of every loss part, on the device
        homo_sum, hetero_sum = torch.zeros(6, device=dev), torch.zeros(6, device=dev)
        first_bad = torch.full((), -1, dtype=torch.long, device=dev)  # first mini-batch with a non-finite loss
        bad_parts = torch.zeros(len(PARTS), device=dev)
        samples = 0
        check_each_step = dev.type != "cuda" and not self.dist.enabled  # a check is free on CPU
        bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", leave=False, disable=not self.progress)
        for i, batch in enumerate(bar):
            if i % acc == 0:
                self.optimizer.zero_grad(set_to_none=True)
            with autocast(dev, self.tcfg.bf16):
                out = self.forward(batch.text, batch.audio, batch.vision)
                parts = total_loss(self.model, out, batch.labels)
            parts.total.backward()  # summed over the group: the loss is not divided by `acc`
            if clip > 0:
                nn.utils.clip_grad_value_(self.params, clip)  # on the running sum, after every backward
            values = torch.stack([v.float() for v in parts.detached().values()])  # (len(PARTS),)
            sums += values
            newly_bad = (~torch.isfinite(values).all()) & (first_bad < 0)
            first_bad = torch.where(newly_bad, torch.full_like(first_bad, i), first_bad)
            bad_parts = torch.where(newly_bad, values, bad_parts)
            homo_sum += out.homo_graph.edges.detach().float().sum(1)
            hetero_sum += out.hetero_graph.edges.detach().float().sum(1)
            samples += batch.labels.shape[0]
            last = i == n_batches - 1
            if (i + 1) % acc == 0 or (last and self.tcfg.leftover_step):
                if check_each_step:
                    self._raise_if_bad(epoch, first_bad, bad_parts)
                self.optimizer.step()
                self.steps += 1
        bar.close()
        stats = torch.cat([sums, homo_sum, hetero_sum, torch.tensor([n_batches, samples], device=dev)])
        if self.dist.enabled:  # every rank must stop if any rank saw a non-finite loss
            dist.all_reduce(stats)
            any_bad = first_bad.clone()
            dist.all_reduce(any_bad, op=dist.ReduceOp.MAX)
            first_bad = torch.where(first_bad >= 0, first_bad, any_bad)
        self._raise_if_bad(epoch, first_bad, bad_parts)
        stats = stats.cpu().tolist()
        n_batches_all, n_samples = stats[-2], stats[-1]
        row = {f"train_{p}": stats[k] / n_batches_all for k, p in enumerate(PARTS)}
        for j, unit in enumerate(("homo", "hetero")):
            for k, e in enumerate(EDGE_NAMES):
                row[f"train_{unit}_{e}"] = stats[len(PARTS) + 6 * j + k] / n_samples
        return row

    def _raise_if_bad(self, epoch: int, first_bad: torch.Tensor, bad_parts: torch.Tensor) -> None:
        step = int(first_bad)  # host sync: only at optimizer steps on CPU, at epoch end elsewhere
        if step < 0:
            return
        parts = {p: float(v) for p, v in zip(PARTS, bad_parts.cpu().tolist()) if not math.isfinite(v)}
        named = ", ".join(f"{p}={v}" for p, v in parts.items()) or "(on another rank)"
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, mini-batch {step + 1}: {named}. The run stopped; "
            f"{self.run_dir / runs.LAST} still holds the last good epoch ({self.epoch}). Check the data for "
            f"NaN/inf, lower the learning rate, or train without bf16."
        )

    def validate(self) -> dict[str, float]:
        """Validation loss, metrics and mean edges (rank 0 computes; the loss is broadcast to every rank)."""
        row: dict[str, float] = {}
        if self.dist.is_main:
            pred = predict(
                self.model, self.dataset["valid"], self.device, batch_size=self._eval_bs(), bf16=self.tcfg.bf16
            )
            scores = _scores(pred)
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

    def fit(self, resume: bool = False) -> RunResult:
        """Train until early stopping or ``max_epochs``, then test the best weights. Writes the run folder."""
        main = self.dist.is_main
        last_file = self.run_dir / runs.LAST
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
            self._check_resumable(runs.load_run(self.run_dir).meta)
            self.load_state(runs.load_checkpoint(last_file, map_location="cpu"))  # RNG states must stay on the CPU
            log.info("resuming %s after epoch %d", self.run_dir, self.epoch)
            if self.stop_reason == "max_epochs" and (self.tcfg.max_epochs is None or self.tcfg.max_epochs > self.epoch):
                self.stop_reason = ""  # the bound was raised: carry on
        elif main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if main:
            runs.write_json(self.run_dir / runs.CONFIG, self.meta)
        max_epochs = self.tcfg.max_epochs
        if max_epochs is not None and self.epoch >= max_epochs and not self.stop_reason:
            self.stop_reason = "max_epochs"
        epochs_bar = tqdm(total=max_epochs, initial=self.epoch, desc="epochs", disable=not self.progress)
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
            self.scheduler.step(valid_loss)
            improved = valid_loss <= self.best_valid - MIN_DELTA
            if improved:
                self.best_valid, self.best_epoch = valid_loss, self.epoch
            row.update(time_s=time.perf_counter() - start, steps=self.steps, best=int(improved),
                       best_valid_loss=self.best_valid)  # fmt: skip
            self.history.append(row)
            if self.epoch - self.best_epoch >= self.tcfg.early_stop:
                self.stop_reason = "early_stop"
            elif max_epochs is not None and self.epoch >= max_epochs:
                self.stop_reason = "max_epochs"
            if main:
                self._assert_finite_weights("checkpoint")
                if improved:
                    runs.save_checkpoint(self.run_dir / runs.BEST, {
                        "model": self.model.state_dict(), "epoch": self.epoch, "valid_loss": valid_loss,
                        "seed": self.seed,
                    })  # fmt: skip
                runs.write_csv(self.run_dir / runs.HISTORY, self.history)
                runs.save_checkpoint(last_file, self._state())
            log.info(
                "epoch %d: train %.4f, valid %.4f (best %.4f at epoch %d), lr %.2e, %.1fs",
                self.epoch, row["train_total"], valid_loss, self.best_valid, self.best_epoch, lr, row["time_s"],
            )  # fmt: skip
            epochs_bar.update(1)
            epochs_bar.set_postfix(valid=f"{valid_loss:.4f}", best=f"{self.best_valid:.4f}")
            if self.on_epoch_end is not None:
                self.on_epoch_end(self, row)
        epochs_bar.close()
        log.info("stopped after epoch %d (%s); best epoch %d", self.epoch, self.stop_reason, self.best_epoch)
        test_metrics = self.test() if main else None
        if self.dist.enabled:
            dist.barrier()
        return RunResult(self.run_dir, self.seed, test_metrics, self.best_epoch, self.epoch, self.stop_reason,
                         self.history, self.model)  # fmt: skip

    def test(self) -> dict[str, Any]:
        """Load the best weights, evaluate the test split once, write test_metrics.json and test_predictions.csv."""
        best = self.run_dir / runs.BEST
        if best.is_file():
            self.model.load_state_dict(runs.load_checkpoint(best, map_location=self.device)["model"])
        self.model.eval()
        pred = predict(self.model, self.dataset["test"], self.device, batch_size=self._eval_bs(), bf16=self.tcfg.bf16)
        metrics = {**_scores(pred), "best_epoch": self.best_epoch, "epochs": self.epoch,
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
) -> RunResult:
    """Train one seed and write the run folder ``run_dir`` (see :mod:`dmd_core.runs`).

    ``model_config`` None: the dataset's suggested preset. ``dataset_or_path``: an
    :class:`~dmd_core.data.MMSADataset` or the path of an MMSA pickle (loaded with ``text``
    and ``mmap_dir``). ``seed`` None: ``train_config.seeds[0]``. ``device`` None: CUDA, then
    MPS, then CPU. ``resume``: continue from ``run_dir/last.pt`` when it exists.
    """
    train_config = train_config or TrainConfig()
    ds, cfg = _load_dataset(dataset_or_path, model_config, text, mmap_dir)
    seed = train_config.seeds[0] if seed is None else seed
    trainer = Trainer(cfg, ds, train_config, run_dir, seed, device=device, progress=progress,
                      on_epoch_end=on_epoch_end, data_ref=_data_ref(dataset_or_path))  # fmt: skip
    try:
        return trainer.fit(resume=resume)
    finally:
        if trainer.dist.owns_group and dist.is_initialized():
            dist.destroy_process_group()


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
) -> SeedsResult:
    """Train several seeds (default ``train_config.seeds``, 1111-1115) into ``run_dir/seed_<n>/``.

    Writes ``summary.json`` and ``summary.csv``: mean and std (ddof=0) over seeds of every test
    metric. ``parallel=True`` under torchrun: rank r trains seeds r, r+W, ... on its own device
    (no DDP); otherwise each seed uses every rank (DDP) in turn.
    """
    train_config = train_config or TrainConfig()
    seeds = tuple(train_config.seeds if seeds is None else seeds)
    ds, cfg = _load_dataset(dataset_or_path, model_config, text, mmap_dir)
    run_dir = Path(run_dir)
    info, dev = init_distributed(device)
    mine = seeds[info.rank :: info.world_size] if parallel else seeds
    results = {}
    try:
        for seed in tqdm(mine, desc="seeds", disable=not progress or not info.is_main or len(mine) < 2):
            trainer = Trainer(cfg, ds, train_config, runs.seed_dir(run_dir, seed), seed, device=dev,
                              progress=progress and info.is_main, data_ref=_data_ref(dataset_or_path),
                              distributed=not parallel)  # fmt: skip
            results[seed] = trainer.fit(resume=resume)
        if info.enabled:
            dist.barrier()
        summary = None
        if info.is_main:
            per_seed = {s: runs._read_json(runs.seed_dir(run_dir, s) / runs.TEST_METRICS) for s in seeds}
            names = [*METRIC_NAMES, "loss"]
            summary = runs.write_summary(run_dir, {s: {k: m[k] for k in names} for s, m in per_seed.items()})
            means = ", ".join(f"{k} {summary['metrics'][k]['mean']:.4f}" for k in ("MAE", "Non0_acc_2", "Mult_acc_7"))
            log.info("%d seeds: %s", len(seeds), means)
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()
    return SeedsResult(run_dir, results, summary)


# ---- command line: dmd train, dmd test -------------------------------------------------------------------------

TRAIN_EPILOG = """\
examples:
  dmd synth --dataset mosi --aligned --out data/mosi_synth.pkl
  dmd train --data data/mosi_synth.pkl --seeds 1111 --max-epochs 20 --out runs/mosi_synth
  dmd train --data aligned_50.pkl --bert /models/bert-base-uncased --out runs/mosi_bert   # the paper's recipe
  dmd train --data aligned_50.pkl --out runs/mosi --resume          # continue an interrupted run
  torchrun --nproc_per_node 4 -m dmd_core.cli train --data aligned_50.pkl --out runs/ddp   # DDP
  torchrun --nproc_per_node 5 -m dmd_core.cli train --data aligned_50.pkl --parallel-seeds --out runs/seeds

The run folder holds seed_<n>/ per seed (config.json, history.csv, best.pt, last.pt, test_metrics.json,
test_predictions.csv) and summary.json / summary.csv (mean and std over seeds). Read it back with
dmd_core.runs.load_seeds(folder) or load_run(folder/seed_<n>).
"""

TEST_EPILOG = """\
examples:
  dmd test runs/mosi                              # every seed of a run folder, best weights, test split
  dmd test runs/mosi/seed_1111 --missing          # plus metrics with modalities zeroed
  dmd test --checkpoint dmd-mosi.pth --reference-config config.json --data aligned_50.pkl \\
           --bert /models/bert-base-uncased      # a checkpoint of the reference implementation
"""


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs for :class:`DMDConfig`; values are read as JSON when they parse (numbers, lists)."""
    import dataclasses
    import json

    known = {f.name for f in dataclasses.fields(DMDConfig)} - {"bert"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _bert_spec(name: str | None):
    """``--bert`` as a :class:`BertSpec` (None for "none") and its hidden size (768 unless a folder says otherwise).

    Fails at once (:class:`~dmd_core.model.BertUnavailableError`) when the weights are neither
    a folder nor cached and the hub cannot be reached, instead of waiting on download retries.
    """
    import json
    import os

    from .config import BertSpec
    from .model import BertUnavailableError, bert_unavailable_message, hub_unreachable_reason

    if name is None or name.lower() == "none":
        return None, None
    if os.path.isdir(name):
        config_file = Path(name) / "config.json"
        hidden = json.loads(config_file.read_text()).get("hidden_size", 768) if config_file.is_file() else 768
        return BertSpec(name_or_path=name), int(hidden)
    cached = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # an old or missing huggingface_hub: let load_bert decide later
        cached = None
    if isinstance(cached, str):
        return BertSpec(name_or_path=name), int(json.loads(Path(cached).read_text()).get("hidden_size", 768))
    reason = hub_unreachable_reason()
    if reason is not None:
        raise BertUnavailableError(bert_unavailable_message(name, reason))
    return BertSpec(name_or_path=name), 768


def _train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig()
    return base.replace(
        batch_size=args.batch_size, lr=args.lr, accumulation=args.accumulation, grad_clip=args.grad_clip,
        plateau_patience=args.patience, early_stop=args.early_stop, max_epochs=args.max_epochs,
        seeds=tuple(args.seeds), leftover_step=not args.no_leftover_step, eval_batch_size=args.eval_batch_size,
        bf16=args.bf16, tf32=not args.no_tf32, compile=args.compile,
    )  # fmt: skip


def _model_config_for(ds: MMSADataset, dataset: str | None, bert, bert_dim: int | None, overrides: dict):
    from .config import preset

    name = (dataset or getattr(ds, "dataset_name", None) or "mosi").lower()
    if name not in ("mosi", "mosei"):
        log.warning("no official preset for %r: using MOSI's hyper-parameters", name)
        name = "mosi"
    dims = list(ds.feature_dims)
    if bert is not None:
        dims[0] = bert_dim
    fields = {"seq_lens": tuple(ds.seq_lens), "feature_dims": tuple(dims), **overrides}
    return preset(name, ds.aligned, bert=bert, **fields)


def _check_aligned(ds: MMSADataset, aligned: bool | None, path: str) -> None:
    if aligned is not None and bool(ds.aligned) != aligned:
        found = "aligned" if ds.aligned else "unaligned"
        raise ValueError(f"{path}: --{'aligned' if aligned else 'unaligned'} given, but the file is {found}")


def _cli_train(args: argparse.Namespace) -> int:
    from .data import load_mmsa

    overrides = _parse_overrides(args.set or [])
    bert, bert_dim = _bert_spec(args.bert)  # before loading data: fail fast without BERT
    ds = load_mmsa(args.data, text="bert" if bert is not None else "features", mmap_dir=args.mmap_dir)
    _check_aligned(ds, args.aligned, args.data)
    cfg = _model_config_for(ds, args.dataset, bert, bert_dim, overrides)
    tcfg = _train_config_from_args(args)
    out = Path(args.out or Path("runs") / Path(args.data).stem)
    result = train_seeds(cfg, ds, tcfg, out, seeds=tcfg.seeds, device=args.device, resume=args.resume,
                         progress=not args.no_progress, parallel=args.parallel_seeds)  # fmt: skip
    if result.summary is not None:
        _print_metrics({k: v["mean"] for k, v in result.summary["metrics"].items()},
                       {k: v["std"] for k, v in result.summary["metrics"].items()},
                       title=f"{out}: test, mean (std) over {len(tcfg.seeds)} seed(s)")  # fmt: skip
    return 0


def _print_metrics(values: dict[str, float], std: dict[str, float] | None = None, title: str = "") -> None:
    """The CLI's result table (stdout, the one place the package prints): one metric per line."""
    if title:
        print(title)
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        shown = f"{v:10d}" if isinstance(v, int) else f"{v:10.4f}"
        print(f"  {k:<14} {shown}" + (f"  ({std[k]:.4f})" if std and k in std else ""))


def _cli_test(args: argparse.Namespace) -> int:
    from .data import load_mmsa

    results: dict[str, Any] = {}
    if args.checkpoint:
        if not args.reference_config or not args.data:
            raise ValueError("--checkpoint needs --reference-config (the reference's config.json) and --data")
        from .reference import config_from_json, load_state_dict

        aligned = True if args.aligned is None else args.aligned
        cfg = config_from_json(args.reference_config, args.dataset or "mosi", aligned)
        if cfg.bert is not None:
            bert, _ = _bert_spec(args.bert or cfg.bert.name_or_path)
            cfg = cfg.replace(bert=bert)
        ds = load_mmsa(args.data, text="bert" if cfg.use_bert else "features", config=cfg, mmap_dir=args.mmap_dir)
        _check_aligned(ds, args.aligned, args.data)
        model = DMD(cfg)
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        load_state_dict(model, state)  # the GD-Units are not in a reference checkpoint: their edges are random
        log.info("loaded reference checkpoint %s (GD-Units not included: edges are not meaningful)", args.checkpoint)
        targets = {str(args.checkpoint): (model, ds)}
    else:
        if not args.run:
            raise ValueError("give a run folder, or --checkpoint with --reference-config and --data")
        folder = Path(args.run)
        run_list = (
            list(runs.load_seeds(folder).runs.values())
            if not (folder / runs.CONFIG).is_file()
            else [runs.load_run(folder)]
        )
        targets = {}
        for run in run_list:
            if run.config.bert is not None and run.config.bert.name_or_path is not None:
                _bert_spec(args.bert or run.config.bert.name_or_path)
            data = args.data or run.data
            if data is None:
                raise ValueError(f"{run.path}: no data file recorded in config.json; give --data")
            text = "bert" if run.config.use_bert else "features"
            ds = load_mmsa(data, text=text, config=run.config, mmap_dir=args.mmap_dir)
            targets[str(run.path)] = (run.load_model(args.which, pick_device(args.device)), ds)
    device = pick_device(args.device)
    for name, (model, ds) in targets.items():
        split = ds[args.split]
        entry: dict[str, Any] = {"metrics": evaluate(model, split, device=device, batch_size=args.batch_size)}
        _print_metrics(entry["metrics"], title=f"{name}: {args.split} split ({len(split)} samples)")
        if args.missing:
            table = missing_modality_table(model, split, device=device, batch_size=args.batch_size)
            entry["missing_modality"] = table.to_dict(orient="records")
            print(table[["present", "zeroed", "MAE", "Corr", "Non0_acc_2", "Non0_F1_score", "Mult_acc_7"]]
                  .to_string(index=False, float_format=lambda x: f"{x:.4f}"))  # fmt: skip
        results[name] = entry
    if args.json:
        runs.write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


def _run_cli(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the errors a user can fix into one clear message and a non-zero exit code."""
    import os

    from .model import BertUnavailableError

    def wrapper(args: argparse.Namespace) -> int:
        if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 talks
            logging.getLogger().setLevel(logging.WARNING)
        try:
            return func(args)
        except BertUnavailableError as err:
            log.error("%s", err)
            return 2
        except NonFiniteLossError as err:
            log.error("%s", err)
            return 3
        except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:  # DataFormatError is a ValueError
            log.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
            return 2
        except KeyboardInterrupt:
            log.error("interrupted; continue later with --resume (the last completed epoch is saved)")
            return 130

    return wrapper


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: CUDA if available, then Apple MPS, then CPU)"
    )
    p.add_argument("--bert", default=None, metavar="NAME|DIR|none",
                   help="BERT for the text: a local folder with config.json and weights (e.g. saved with "
                        "save_pretrained), a Hugging Face name (needs the network or the local cache), or none "
                        "to use the file's stored text features")  # fmt: skip
    p.add_argument(
        "--dataset",
        choices=("mosi", "mosei"),
        default=None,
        help="which official hyper-parameters (preset) to use (default: guessed from the file)",
    )
    align = p.add_mutually_exclusive_group()
    align.add_argument(
        "--aligned",
        dest="aligned",
        action="store_true",
        default=None,
        help="the file must be word-aligned (aligned_50.pkl); an error if it is not",
    )
    align.add_argument(
        "--unaligned",
        dest="aligned",
        action="store_false",
        help="the file must be unaligned (unaligned_50.pkl); an error if it is not",
    )
    p.add_argument(
        "--mmap-dir",
        default=None,
        metavar="DIR",
        help="convert the file once to memory-mapped arrays in DIR (for MOSEI unaligned on little RAM)",
    )


def add_cli(subparsers) -> None:
    """Register ``dmd train`` and ``dmd test``."""
    d = TrainConfig()
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "train", help="train DMD on an MMSA pickle (one folder per run)", formatter_class=fmt, epilog=TRAIN_EPILOG,
        description="Train DMD with the published recipe (Adam 1e-4, gradients summed over 10 mini-batches and "
                    "clipped by value 0.6, ReduceLROnPlateau and early stopping on the validation L1 loss), "
                    "one run per seed, then test the best-validation weights.",
    )  # fmt: skip
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="MMSA pickle: aligned_50.pkl / unaligned_50.pkl of MOSI or MOSEI, or a `dmd synth` file",
    )
    _add_common(p)
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(d.seeds),
        metavar="N",
        help=f"seeds, run one after another (default: {' '.join(map(str, d.seeds))})",
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs at the latest (default: no bound, early stopping only)",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/<data file name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the runs in --out from their last completed epoch (same config and seeds; "
                        "--max-epochs may be raised); finished seeds are only re-tested")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"mini-batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument(
        "--accumulation",
        type=int,
        default=d.accumulation,
        help=f"mini-batches whose gradients are summed per optimizer step (default {d.accumulation})",
    )
    p.add_argument(
        "--grad-clip",
        type=float,
        default=d.grad_clip,
        help=f"clip gradients by value after every backward; <= 0 turns it off (default {d.grad_clip})",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=d.plateau_patience,
        help=f"ReduceLROnPlateau patience in epochs (default {d.plateau_patience})",
    )
    p.add_argument(
        "--early-stop",
        type=int,
        default=d.early_stop,
        help=f"stop after this many epochs without a better validation loss (default {d.early_stop})",
    )
    p.add_argument(
        "--eval-batch-size", type=int, default=None, help="batch size for validation and test (default: --batch-size)"
    )
    p.add_argument("--no-leftover-step", action="store_true",
                   help="drop the gradients of the last, incomplete group of mini-batches of each epoch, as the "
                        "reference does (default: they take an optimizer step)")  # fmt: skip
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--no-tf32", action="store_true", help="keep float32 matmuls exact on CUDA (TF32 is on by default)")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    p.add_argument(
        "--parallel-seeds",
        action="store_true",
        help="under torchrun: each process trains its own seeds instead of sharing one run (DDP)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a model config field, e.g. --set d=32 --set ort_axis=feature (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_cli(_cli_train))

    t = subparsers.add_parser(
        "test", help="evaluate a run folder or a reference checkpoint", formatter_class=fmt, epilog=TEST_EPILOG,
        description="Evaluate trained weights on a split of an MMSA file: MMSA's metrics (Has0/Non0 Acc-2 and "
                    "F1, Acc-5, Acc-7, MAE, Corr) and the L1 loss; optionally with modalities zeroed.",
    )  # fmt: skip
    t.add_argument(
        "run",
        nargs="?",
        metavar="RUN_DIR",
        help="a run folder written by dmd train (one seed, or a folder of seed_<n> runs)",
    )
    t.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="MMSA pickle (default for a run folder: the file it was trained on)",
    )
    _add_common(t)
    t.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="a state dict saved by the reference implementation (GD-Units not included)",
    )
    t.add_argument("--reference-config", default=None, metavar="FILE",
                   help="the reference's config.json (with --checkpoint; --dataset and --aligned/--unaligned pick "
                        "its section, default mosi aligned)")  # fmt: skip
    t.add_argument("--split", choices=("test", "valid", "train"), default="test", help="which split (default test)")
    t.add_argument("--which", choices=("best", "last"), default="best", help="which weights of a run (default best)")
    t.add_argument(
        "--missing",
        action="store_true",
        help="also evaluate with every subset of modalities zeroed at test time (7 rows)",
    )
    t.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")
    t.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE as JSON")
    t.set_defaults(func=_run_cli(_cli_test))
