"""Devices, seeds, random-number states and ``torchrun`` process groups for the trainer.

* :func:`pick_device`: CUDA, then Apple MPS, then CPU, or what the caller asks for.
* :func:`resolve_precision`, :func:`autocast`, :class:`GradientSteps`: ``TrainConfig.precision``
  (fp32, bf16, fp16 or auto) as an autocast context, and the recipe's backward, clip and step
  (with a gradient scaler for fp16); on a two-thread CPU, backward passes on a second thread
  (:func:`resolve_overlap`).
* :func:`configure_cuda`: TF32 on or off (PyTorch's ``fp32_precision`` settings where they exist).
* :func:`seed_everything`, :func:`rng_state`, :func:`set_rng_state`: everything random
  (Python, numpy, torch CPU and CUDA) seeded, saved into checkpoints and restored, so a
  resumed run draws exactly the numbers an uninterrupted one would.
* :func:`init_distributed`: a process group from ``torchrun``'s environment variables
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): NCCL on GPUs, gloo on CPU; :func:`rank_device`
  says which GPU each rank takes.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from .config import PRECISIONS

if TYPE_CHECKING:
    from .data import MMSADataset

log = logging.getLogger(__name__)


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``requested`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``),
    else CUDA if available, then Apple MPS, then CPU. Asking for an unavailable device is an error."""
    if requested is None or str(requested) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(requested)!r} asked for, but CUDA is not available here (use 'cpu')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {str(requested)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {str(requested)!r} asked for, but Apple MPS is not available here (use 'cpu')")
    return device


def use_cuda_device(device: torch.device) -> None:
    """Initialise CUDA and make ``device`` the current GPU (nothing for other devices).

    Before anything asks about a GPU by index: PyTorch's memory statistics of ``cuda:1`` fail
    while CUDA is not initialised. And so that calls without an index (libraries, ``"cuda"``)
    use this GPU instead of opening a context on GPU 0.
    """
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.set_device(device)


def configure_cuda(tf32: bool) -> None:
    """TF32 matmuls and convolutions on (``tf32=True``) or off; no effect without CUDA.

    Through PyTorch's ``fp32_precision`` settings where they exist (2.9 and later; cuBLAS
    matmuls and cuDNN convolutions, RNNs left as they are), else the legacy ``allow_tf32``
    flags. Never both: PyTorch refuses to read TF32 flags set through a mix of the two APIs,
    so a user who set ``fp32_precision`` must not find the legacy flags touched.
    """
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision") and hasattr(b.cudnn, "conv"):
        b.cuda.matmul.fp32_precision = b.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
    else:
        b.cuda.matmul.allow_tf32 = tf32
        b.cudnn.allow_tf32 = tf32


# ---- precision -------------------------------------------------------------------------------------------------

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str | bool, device: torch.device) -> str:
    """What ``precision`` (``TrainConfig.precision``) means on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"``: bf16 on CUDA GPUs with bf16 units (Ampere and later), fp16 on older GPUs (T4,
    V100; bf16 would only be emulated there), fp32 on CPU and MPS. An explicit ``"bf16"`` or
    ``"fp16"`` is taken as asked, on any device (CPU autocast included). ``True``/``False``:
    the former ``bf16`` flag.
    """
    if isinstance(precision, bool):
        precision = "bf16" if precision else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def autocast(device: torch.device, precision: str | bool = "fp32"):
    """Autocast to ``precision`` (see :func:`resolve_precision`) on ``device``; a no-op context for fp32.

    Labels, losses and metrics stay float32: :func:`~dmd_core.losses.total_loss` computes
    every loss in float32 from the low-precision outputs.
    """
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[resolved])


def grad_scaler(device: torch.device, precision: str | bool) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (whose small range needs the loss scaled up)."""
    return torch.amp.GradScaler(device.type, enabled=resolve_precision(precision, device) == "fp16")


def resolve_overlap(overlap: bool | None, device: torch.device, precision: str, distributed: bool, compiled: bool,
                    aligned: bool, bert: bool, accumulation: int, threads: int | None = None,
                    bert_seeded: bool = True) -> bool:  # fmt: skip
    """Whether training uses a second CPU thread (``TrainConfig.overlap``): without BERT the backward passes run
    beside the forward passes (:class:`GradientSteps`, :class:`Seam`), with BERT its forward passes run one
    mini-batch ahead (:class:`TextAhead`).

    ``True``/``False`` say so (``True`` needs the CPU, float32, one process and no ``torch.compile``,
    and with BERT its seeded dropout, ``bert_seeded``: :mod:`dmd_core.kernels.bert`);
    ``None`` (auto) overlaps where it was measured to pay: two CPU threads, float32, one process,
    not compiled, gradients accumulated over several mini-batches (an optimizer step must wait for
    the backward before it, and the next forward for the step: with ``accumulation=1`` nothing
    overlaps), and the aligned model, whose step is hundreds of small operations that two threads
    share badly. Measured on a 2-core machine (``benchmarks/bench_overlap.py``,
    ``benchmarks/results/overlap.md``): without BERT, two threads per operation swing from process
    to process (50-75 samples/s), overlap stays steadier (61-73): 1.16x in the median over six
    alternations, 0.97-1.25x, and with the seam 1.10-1.25x; with BERT (2 x 768), BERT ahead 1.10x
    (0.95-1.16x, four alternations). The unaligned model spends its time in large operations that
    two threads do share: there overlap was 0.86x.
    """
    possible = device.type == "cpu" and precision == "fp32" and not distributed and not compiled
    if overlap is None:
        threads = torch.get_num_threads() if threads is None else threads
        return possible and threads == 2 and accumulation > 1 and aligned and (bert_seeded or not bert)
    if overlap and not possible:
        raise ValueError("TrainConfig.overlap=True needs the CPU, precision 'fp32', one process and no compile")
    if overlap and bert and not bert_seeded:
        raise ValueError("TrainConfig.overlap=True with BERT needs BERT's seeded dropout, which needs a "
                         "transformers version whose BERT uses its attention registry (transformers 5 does)")  # fmt: skip
    return bool(overlap)


class JobThread:
    """Runs jobs in the order given, on one thread beside the calling one (:class:`BackwardThread`, and the
    run folder's writer, :class:`dmd_core.runs.FileWriter`). :meth:`wait` and :meth:`close` raise the first
    error a job raised; :meth:`failed` says, without waiting, whether a finished job raised one."""

    def __init__(self, name: str, initializer: Callable[..., object] | None = None, initargs: tuple = ()) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=initializer, initargs=initargs)
        self._pending: list[Future] = []

    def submit(self, job: Callable[..., object], *args: Any) -> Future:
        future = self._pool.submit(job, *args)
        self._pending.append(future)
        return future

    def failed(self) -> bool:
        return any(f.done() and f.exception() is not None for f in self._pending)

    def wait(self) -> None:
        """Block until every submitted job is done; raises the first error one of them raised."""
        pending, self._pending = self._pending, []
        errors = [e for e in (f.exception() for f in pending) if e is not None]  # in the order submitted
        if errors:
            raise errors[0]

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


class BackwardThread(JobThread):
    """The :class:`JobThread` that takes backward passes and clipping, one thread per operation.

    While the trainer runs the forward pass of mini-batch ``i + 1``, this thread runs the backward
    pass of mini-batch ``i`` (with a :class:`Seam`, the part below it; the trainer's thread runs the
    part above after its forward pass): within an accumulation group the weights do not change, so
    the next forward pass does not need the previous backward. Every operation runs single-threaded
    (the two threads share two cores), in the same order as without overlap, and the random draws
    (dropout) all happen in the forward passes on the calling thread: the numbers are exactly those
    of a one-thread run (tested).
    """

    def __init__(self) -> None:
        super().__init__("dmd-backward", torch.set_num_threads, (1,))


class Seam:
    """Where one mini-batch's backward pass is split in two, so that with overlap the calling thread has a share.

    With one backward thread the backward pass (longer than the forward pass) set the pace and the calling thread
    waited for it. ``DMD.forward(..., seam=seam)`` passes every tensor that crosses from the model's lower part to its
    upper part (:meth:`dmd_core.model.DMD.parameters_above_seam`) and the losses through :meth:`cut`: the upper part
    computes on a detached copy. ``loss.backward()`` then stops at the copies (the upper part's backward, run by the
    calling thread), and :meth:`backward_below` (queued on the backward thread) carries on from the originals with the
    copies' gradients. The numbers are those of one backward pass, bit for bit (tested): each crossing tensor's
    gradient reaches the lower part as the same sum, and each parameter is on one side only.
    """

    def __init__(self) -> None:
        self._crossings: list[tuple[torch.Tensor, torch.Tensor]] = []

    def cut(self, t: torch.Tensor) -> torch.Tensor:
        """A detached copy of ``t`` (same memory) for the upper part, recorded with ``t``."""
        if not t.requires_grad:
            return t
        above = t.detach().requires_grad_()
        self._crossings.append((t, above))
        return above

    def backward_below(self) -> None:
        """The lower part's backward pass, from the gradients the upper part left on the copies."""
        crossings, self._crossings = self._crossings, []
        reached = [(t, above.grad) for t, above in crossings if above.grad is not None]
        if reached:
            torch.autograd.backward([t for t, _ in reached], [g for _, g in reached])


class TextAhead:
    """BERT's forward pass one mini-batch ahead on a second thread (``TrainConfig.overlap`` with BERT).

    Within an accumulation group the weights do not change, so BERT's forward pass for mini-batch
    ``i + 1`` does not wait for mini-batch ``i``: it runs on a second thread while this thread runs the
    rest of the model's forward and backward pass for ``i``, each thread one thread per operation (the
    two take about as long on two cores). BERT's backward pass for ``i``, large matrix products that
    threads share well, then runs on this thread with every thread. Across an optimizer step nothing
    runs ahead. BERT's output reaches the model as a detached copy (:meth:`features`); :meth:`backward`
    carries the copy's gradient into BERT: the gradients of one backward pass, bit for bit, and BERT's
    dropout masks follow from their own seeds (:class:`dmd_core.text_encoder.TextEncoder`), whichever
    thread draws them. With one torch thread, training computes exactly what a one-thread run computes
    (tested); with more, BERT's backward passes (and each group's first forward pass) use them all, and
    PyTorch's multi-threaded sums may round differently from one thread's in the last bits, as any
    change of the thread count may.
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.encoder, self.threads = encoder, torch.get_num_threads()
        self._thread = JobThread("dmd-text", torch.set_num_threads, (1,))
        self._ahead: tuple[torch.Tensor, Future] | None = None  # (the next text, its BERT output to come)
        self._crossing: tuple[torch.Tensor, torch.Tensor] | None = None  # (BERT's output, the model's copy)

    def features(self, text: torch.Tensor, upcoming: torch.Tensor | None) -> torch.Tensor:
        """BERT's output for ``text`` as a detached copy (computed ahead, or now); starts ``upcoming`` ahead
        (the next mini-batch's text, None where an optimizer step comes first)."""
        if self._ahead is not None:
            ahead_text, future = self._ahead
            if ahead_text is not text:
                raise RuntimeError("TextAhead.features: the text computed ahead is not this mini-batch's")
            out = future.result()  # done: backward() waited for it
        else:
            torch.set_num_threads(self.threads)
            out = self.encoder(text)
        self._ahead = None if upcoming is None else (upcoming, self._thread.submit(self.encoder, upcoming))
        torch.set_num_threads(1 if upcoming is not None else self.threads)
        copy = out.detach().requires_grad_(out.requires_grad)
        self._crossing = (out, copy)
        return copy

    def backward(self) -> None:
        """BERT's backward pass from the gradient its copy received, with every thread, once the next
        mini-batch's forward pass on the other thread is done (an error there is raised here)."""
        self._thread.wait()  # the result stays with self._ahead for the next features()
        torch.set_num_threads(self.threads)
        crossing, self._crossing = self._crossing, None
        if crossing is not None and crossing[1].grad is not None:
            torch.autograd.backward(crossing[0], crossing[1].grad)

    def close(self) -> None:
        """Wait for what runs ahead (an epoch that ended early leaves it unused) and restore the thread count."""
        self._ahead, self._crossing = None, None
        try:
            self._thread.close()
        finally:
            torch.set_num_threads(self.threads)


class GradientSteps:
    """The recipe's backward, clip-by-value and optimizer step, in float32 or under fp16's gradient scaler.

    float32 and bf16: ``backward`` is ``loss.backward()``, ``clip`` is ``clip_grad_value_`` on the
    running sum of gradients, ``step`` is ``optimizer.step()``. fp16 (:func:`grad_scaler`): the loss
    is scaled by S before each backward, so the running sum holds S times the true gradients; S
    changes only in ``scaler.update()`` after a step, so it is fixed within an accumulation group,
    and clipping the scaled sum by value at ``clip * S`` after every backward is clipping the true
    sum at ``clip`` (S is a power of two: exact). ``scaler.step`` unscales once, before the
    optimizer, and skips the step (lowering S) after an overflow; an overflow is recorded before
    clipping, which would otherwise turn an infinity into a finite ``clip * S`` and hide it. (The
    scaler's check for skipped steps is one host synchronisation per optimizer step, fp16 only.)
    """

    def __init__(self, params: list[torch.nn.Parameter], optimizer: Any, device: torch.device,
                 precision: str, clip: float, overlap: bool = False,
                 above: list[torch.nn.Parameter] | None = None) -> None:  # fmt: skip
        self.params, self.optimizer, self.clip_value = params, optimizer, clip
        # With overlap and ``above`` (the model's parameters above its seam): backward passes split at a Seam.
        self.above = above if overlap else None
        if self.above is not None:
            ids = {id(p) for p in self.above}
            self.below = [p for p in params if id(p) not in ids]
        self.scaler = grad_scaler(device, precision)
        self.found_inf = torch.zeros((), device=device)  # fp16: an overflow in this accumulation group
        self.overlap = overlap
        self._thread: BackwardThread | None = None

    @contextmanager
    def epoch(self) -> Iterator[None]:
        """Around an epoch's loop. With overlap, a :class:`BackwardThread` takes the backward passes and
        clipping, both threads run one thread per operation (the count is restored afterwards), and
        everything queued is finished when the block ends, also after an error."""
        if not self.overlap:
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._thread = BackwardThread()
        try:
            yield
        finally:
            thread, self._thread = self._thread, None
            try:
                thread.close()
            finally:
                torch.set_num_threads(threads)

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.wait()

    def zero_grad(self) -> None:
        self._wait()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.found_inf.zero_()

    def seam(self) -> Seam | None:
        """A fresh :class:`Seam` for the next forward pass where backward passes are split, else None."""
        return Seam() if self._thread is not None and self.above is not None else None

    def backward(self, loss: torch.Tensor, seam: Seam | None = None) -> None:
        """``loss.backward()``. Inside :meth:`epoch` with overlap: queued on the backward thread once the
        previous mini-batch's backward and clip are done (so at most two autograd graphs are alive); with a
        ``seam`` from :meth:`seam`, the part above it runs here first and only the part below is queued."""
        scaled = self.scaler.scale(loss)  # fp32/bf16: the scaler is off and returns the loss itself
        if self._thread is None:
            scaled.backward()
            return
        if seam is not None:
            scaled.backward()  # stops at the seam's copies
        self._thread.wait()
        self._thread.submit(scaled.backward if seam is None else seam.backward_below)

    def clip(self, seam: Seam | None = None) -> None:
        """Clip the running sum of gradients by value at ``clip`` (fp16: at ``clip * S``, see above);
        with overlap, queued after the backward (with a ``seam``: the parameters above it are clipped here)."""
        if self._thread is None:
            self._clip(self.params)
        elif seam is None:
            self._thread.submit(self._clip, self.params)
        else:
            self._clip(self.above)
            self._thread.submit(self._clip, self.below)

    def _clip(self, params: list[torch.nn.Parameter]) -> None:
        if not self.scaler.is_enabled():
            if self.clip_value > 0:
                torch.nn.utils.clip_grad_value_(params, self.clip_value)
            return
        grads = [p.grad for p in params if p.grad is not None]
        # Record an overflow before clipping turns it into a finite value (inv_scale 1: the gradients stay).
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, torch.ones_like(self.found_inf))
        if self.clip_value > 0:
            bound = self.scaler.scale(torch.full_like(self.found_inf, self.clip_value))  # on the device: no sync
            for g in grads:
                g.clamp_(-bound, bound)

    def step(self) -> None:
        """One optimizer step; fp16: through the scaler (unscale once, skip after an overflow, update S)."""
        self._wait()
        if not self.scaler.is_enabled():
            self.optimizer.step()
            return
        # An overflow seen before clipping becomes a NaN the scaler finds: it then skips the step and lowers S.
        first = next(p.grad for p in self.params if p.grad is not None)
        first.add_(torch.where(self.found_inf > 0, math.nan, 0.0))
        self.scaler.step(self.optimizer)
        self.scaler.update()


# ---- seeds and RNG states --------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every global RNG state, as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---- distributed -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether this process created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(
    requested: str | torch.device | None = None, backend: str | None = None
) -> tuple[DistInfo, torch.device]:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and pick the device.

    Without those variables (or with ``WORLD_SIZE=1``) this is one process on
    :func:`pick_device` ``(requested)``. Under torchrun each rank takes the GPU
    :func:`rank_device` names (``cuda:LOCAL_RANK``; ``cuda:N``: ``cuda:N+LOCAL_RANK``) and the
    backend is NCCL; on CPU it is gloo (``backend`` overrides). An already initialised group
    is reused (and left for its owner to destroy).
    """
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
        return info, _rank_device(requested, info)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(requested)
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {name} is not set: launch with torchrun")
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]), True)
    device = _rank_device(requested, info)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend=backend, rank=info.rank, world_size=world)
    log.info("distributed: rank %d of %d on %s (%s)", info.rank, world, device, backend)
    return info, device


def rank_device(
    requested: str | torch.device | None, local_rank: int, cuda_available: bool, device_count: int
) -> torch.device:
    """The device of the rank with ``local_rank`` under torchrun (a pure function: reads no GPU state).

    ``None``/``"auto"``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; ``"cuda"``:
    ``cuda:LOCAL_RANK``; ``"cuda:N"``: ``cuda:N+LOCAL_RANK``, so that the node's ranks take GPUs
    N, N+1, ... (``--device cuda:2`` with two ranks per node: GPUs 2 and 3); any other device
    (``cpu``, ``mps``) as asked. A GPU the machine does not have is an error.
    """
    name = "auto" if requested is None else str(requested)
    if name == "auto":
        if not cuda_available:
            return torch.device("cpu")
        name = "cuda"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not cuda_available:
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here (use 'cpu')")
    index = (device.index or 0) + local_rank
    if index >= device_count:
        raise RuntimeError(f"device {name!r} for local rank {local_rank} means cuda:{index}, but there are only "
                           f"{device_count} CUDA device(s) here")  # fmt: skip
    return torch.device("cuda", index)


def _rank_device(requested: str | torch.device | None, info: DistInfo) -> torch.device:
    if not info.enabled:
        return pick_device(requested)
    available = torch.cuda.is_available()
    device = rank_device(requested, info.local_rank, available, torch.cuda.device_count() if available else 0)
    if device.type != "cuda":
        return pick_device(device)
    torch.cuda.set_device(device)
    return device


def place_dataset(dataset: MMSADataset, device: torch.device, budget: float = 0.5) -> MMSADataset:
    """The whole dataset on a CUDA ``device`` when it takes under ``budget`` of the free GPU memory.

    Batches are then slices of GPU tensors: no host-to-device copy per step. The copy is a plain
    one (no pinned host copy of the whole dataset, which PyTorch's pinned-memory cache would keep:
    Colab has about 12 GB of RAM). Memory-mapped datasets (too large for RAM, e.g. MOSEI
    unaligned on a 12 GB machine) stay where they are and are copied batch by batch (pinned,
    non-blocking).
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
