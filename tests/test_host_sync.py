"""A CPU twin of CUDA's sync check (``torch.cuda.set_sync_debug_mode("error")``, which needs a GPU).

:class:`HostSync` fails on every operation that would make the host wait for a GPU: reading a tensor's
value on the host (``.item()``, ``float()``, ``bool()``, ``.tolist()``, ``nonzero``, ``equal``, boolean
indexing, ...) or building a tensor from Python data (``torch.tensor([...])``: a host-to-device copy).
It is entered around each mini-batch's work only (:func:`per_batch`): fetching the batch and everything
the loop does with it. What must read the host there, once per optimizer step, is allowed by name
(:data:`ALLOWED`). The model runs with ``kernels.use("torch")``: the code path a GPU takes (the CPU-only
kernels draw their dropout seed on the host, which a GPU never runs).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from dmd_core import kernels
from dmd_core.data import Split
from dmd_core.distill import EDGE_NAMES
from dmd_core.epoch_stats import EpochStats
from dmd_core.losses import total_loss
from dmd_core.model import DMD

from .conftest import tiny_config, tiny_inputs

aten = torch.ops.aten

# Operations that read a tensor's value on the host: on CUDA each waits for the GPU.
HOST_READS = {
    aten._local_scalar_dense.default,  # .item(), float(), int(), bool()
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,  # and torch.where(cond) with one argument
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
}
# Tensors built from Python data (torch.tensor([...]), torch.as_tensor(list)): on CUDA a host-to-device copy.
FROM_PYTHON_DATA = {aten.lift_fresh.default, aten.lift_fresh_copy.default}
# Tensor methods that read on the host without an operation PyTorch dispatches (a CPU tensor's data is read directly).
HOST_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}

# What may read the host inside a mini-batch's work, once per optimizer step, by the name of the function on the
# stack. The non-finite check reads one flag (on CPU before every step; on CUDA only at the end of the epoch);
# torch.optim.Adam reads its step counters, which live on the CPU unless the optimizer is capturable or fused
# (no wait for the GPU); fp16's gradient scaler reads whether it found an overflow, once per step.
ALLOWED = {"Trainer._raise_if_bad", "Adam.step", "GradScaler.step"}


class HostSyncError(AssertionError):
    """An operation that would wait for the GPU, inside a mini-batch's work."""


def _allowed() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_qualname in ALLOWED:
            return True
        frame = frame.f_back
    return False


def _boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class HostSync(TorchDispatchMode):
    """Fails on the operations above (see the module's docstring), except below a function in :data:`ALLOWED`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        reads = func in HOST_READS or (func in (aten.index.Tensor, aten.index_put_.default) and _boolean_index(args))
        if (reads or func in FROM_PYTHON_DATA) and not _allowed():
            what = "reads a tensor on the host" if reads else "builds a tensor from Python data"
            raise HostSyncError(f"{func} {what} inside a mini-batch's work: on CUDA the host would wait")
        return func(*args, **(kwargs or {}))


class HostMethods(TorchFunctionMode):
    """:data:`HOST_METHODS` (which dispatch nothing on a CPU tensor), except below a function in :data:`ALLOWED`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_METHODS and not _allowed():
            raise HostSyncError(f"Tensor.{func.__name__} reads a tensor on the host inside a mini-batch's work")
        return func(*args, **(kwargs or {}))


@contextmanager
def host_sync() -> Iterator[None]:
    with HostMethods(), HostSync():
        yield


@contextmanager
def per_batch(monkeypatch) -> Iterator[None]:
    """Every mini-batch of every :meth:`Split.batches` (training, validation, prediction) fetched and worked on
    under :func:`host_sync`; the loop's set-up and what follows it run outside. With PyTorch's backend."""
    batches, open_loops = Split.batches, []

    def watched(self, *args, **kwargs):
        def loop():
            it = batches(self, *args, **kwargs)
            while True:
                with host_sync():
                    batch = next(it, None)
                    if batch is None:
                        return
                    yield batch  # the loop's body runs here, under the modes

        gen = loop()
        open_loops.append(gen)
        return gen

    monkeypatch.setattr(Split, "batches", watched)
    with ExitStack() as stack:
        stack.enter_context(kernels.use("torch"))
        stack.callback(lambda: [gen.close() for gen in open_loops])  # a loop left by an error leaves its modes
        yield


# ---- the twin itself -------------------------------------------------------------------------------------------


def test_epoch_stats_adds_a_mini_batch_without_a_host_to_device_copy():
    cfg = tiny_config()
    text, audio, vision, labels = tiny_inputs(cfg)
    model = DMD(cfg)
    out = model(text, audio, vision)
    parts = total_loss(model, out, labels)
    stats = EpochStats(torch.device("cpu"))
    with host_sync():
        stats.add(0, parts, out)
        stats.add(1, parts, out)
    row = stats.row()
    assert row["train_total"] == pytest.approx(float(parts.total.detach()))
    assert sum(row[f"train_homo_{e}"] for e in EDGE_NAMES) == pytest.approx(1.0)


def test_the_twin_fails_on_a_host_read_and_on_a_tensor_from_python_data():
    x = torch.ones(3)
    for planted in (lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x.tolist(), lambda: x[x > 0],
                    lambda: torch.tensor([1.0, 2.0]), lambda: x.nonzero()):  # fmt: skip
        with pytest.raises(HostSyncError), host_sync():
            planted()
    with host_sync():
        (x * 2).sum()  # device-side work passes
