"""Devices, seeds, random-number states and ``torchrun`` process groups for the trainer.

* :func:`pick_device`: CUDA, then Apple MPS, then CPU, or what the caller asks for.
* :func:`seed_everything`, :func:`rng_state`, :func:`set_rng_state`: everything random
  (Python, numpy, torch CPU and CUDA) seeded, saved into checkpoints and restored, so a
  resumed run draws exactly the numbers an uninterrupted one would.
* :func:`init_distributed`: a process group from ``torchrun``'s environment variables
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

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


def configure_cuda(tf32: bool) -> None:
    """TF32 matmuls and convolutions on (``tf32=True``) or off; no effect without CUDA."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked for; a no-op context otherwise."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


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


def init_distributed(requested: str | torch.device | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and pick the device.

    Without those variables (or with ``WORLD_SIZE=1``) this is one process on
    :func:`pick_device` ``(requested)``. Under torchrun with CUDA each rank takes
    ``cuda:LOCAL_RANK`` and the backend is NCCL; on CPU it is gloo. An already
    initialised group is reused (and left for its owner to destroy).
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
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=world)
    log.info("distributed: rank %d of %d on %s (%s)", info.rank, world, device, backend)
    return info, device


def _rank_device(requested: str | torch.device | None, info: DistInfo) -> torch.device:
    if info.enabled and (requested is None or str(requested) in ("auto", "cuda")) and torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return pick_device(requested)


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
