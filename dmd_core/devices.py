"""Devices: which device training runs on, ``torchrun`` process groups, and the data on the GPU.

* :func:`pick_device`: CUDA, then Apple MPS, then CPU, or what the caller asks for.
* :func:`configure_cuda`: TF32 on or off.
* :func:`init_distributed`: a process group from ``torchrun``'s environment variables
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): NCCL on GPUs, gloo on CPU; :func:`rank_device`
  says which GPU each rank takes.
* :func:`place_dataset`: the whole dataset on the GPU when it fits.

Precision (autocast, fp16's scaler and clip) lives in :mod:`dmd_core.precision`, random-number
states in :mod:`dmd_core.rng`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from .data import MMSADataset

log = logging.getLogger(__name__)


def resolve_device(requested: str | torch.device | None, cuda_available: bool, device_count: int,
                   current_index: int, mps_available: bool = False) -> torch.device:  # fmt: skip
    """The device ``requested`` means on a machine with ``device_count`` GPUs (a pure function: reads no GPU state).

    Every CUDA device comes back with its index, the one place it is chosen: ``"cuda"`` and
    ``"auto"`` (with CUDA) mean the current GPU, ``current_index``; ``"cuda:N"`` must name one of
    the machine's GPUs. ``torch.cuda.set_device``, memory statistics and device properties take
    only an indexed device or an integer.
    """
    if requested is None or str(requested) == "auto":
        if cuda_available:
            return torch.device("cuda", current_index)
        return torch.device("mps") if mps_available else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not cuda_available:
            raise RuntimeError(f"device {str(requested)!r} asked for, but CUDA is not available here (use 'cpu')")
        index = current_index if device.index is None else device.index
        if index >= device_count:
            raise RuntimeError(f"device {str(requested)!r}: only {device_count} CUDA device(s) here")
        return torch.device("cuda", index)
    if device.type == "mps" and not mps_available:
        raise RuntimeError(f"device {str(requested)!r} asked for, but Apple MPS is not available here (use 'cpu')")
    return device


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``requested`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``),
    else CUDA if available, then Apple MPS, then CPU. Asking for an unavailable device is an error."""
    cuda = torch.cuda.is_available()
    # The current GPU only where it is needed: asking for it initialises CUDA.
    current = torch.cuda.current_device() if cuda and str(requested) in ("None", "auto", "cuda") else 0
    return resolve_device(requested, cuda, torch.cuda.device_count() if cuda else 0, current,
                          torch.backends.mps.is_available())  # fmt: skip


def use_cuda_device(device: str | torch.device) -> torch.device:
    """Initialise CUDA and make ``device`` the current GPU (nothing for other devices); returns it with its index.

    Before anything asks about a GPU by index: PyTorch's memory statistics of ``cuda:1`` fail
    while CUDA is not initialised. And so that calls without an index (libraries, ``"cuda"``)
    use this GPU instead of opening a context on GPU 0.
    """
    device = pick_device(device)
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.set_device(device.index)
    return device


def configure_cuda(tf32: bool) -> None:
    """TF32 matmuls and cuDNN convolutions on (``tf32=True``) or off; no effect without CUDA.

    Through ``torch.set_float32_matmul_precision`` (``"high"``: TF32; ``"highest"``: exact float32) and
    ``torch.backends.cudnn.allow_tf32``, so that both of PyTorch's views agree: setting ``fp32_precision``
    alone left the legacy flags in a state PyTorch refuses to read ("mix of the legacy and new APIs"),
    and ``torch.compile`` and libraries read them. (cuDNN's flag also covers RNNs, which DMD has none of.)
    """
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32


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
    return use_cuda_device(device)


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
