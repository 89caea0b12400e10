"""A CPU twin of CUDA's sync check (``torch.cuda.set_sync_debug_mode("error")``, which needs a GPU).

:class:`HostSync` fails on every operation that would make the host wait for a GPU: reading a tensor's
value on the host (``.item()``, ``float()``, ``bool()``, ``.tolist()``, ``nonzero``, ``equal``, boolean
indexing, ...) or building a tensor from Python data (``torch.tensor([...])``: a host-to-device copy).
It is entered around each mini-batch's work only (:func:`per_batch`): fetching the batch and everything
the loop does with it. What must read the host there, once per optimizer step (the non-finite check,
Adam's step counters, fp16's scaler), is allowed by name (:data:`ALLOWED`); reads inside a dependency that
this package cannot remove are named and counted (:data:`IN_DEPENDENCIES`). The model runs with
``kernels.use("torch")``: the code path a GPU takes (the CPU-only kernels draw their dropout seed on the
host, which a GPU never runs). The last tests check on PyTorch's "meta" device that no CPU tensor is mixed
into a device's computation (below: why not on fake CUDA tensors).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from dmd_core import kernels
from dmd_core.bench import random_dataset
from dmd_core.config import BertSpec, TrainConfig
from dmd_core.data import Split
from dmd_core.distill import EDGE_NAMES
from dmd_core.epoch_stats import EpochStats
from dmd_core.evaluation import predict_arrays
from dmd_core.losses import total_loss
from dmd_core.model import DMD
from dmd_core.trainer import Trainer

from .conftest import tiny_config, tiny_inputs
from .test_model import SMALL_BERT

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

# What may read the host inside a mini-batch's work, once per optimizer step, by the name of a function on the
# stack. The non-finite check reads one flag (on CPU before every step; on CUDA only at the end of the epoch);
# torch.optim.Adam reads its step counters, which live on the CPU unless the optimizer is capturable or fused
# (no wait for the GPU); fp16's gradient scaler reads whether it found an overflow, once per step.
ALLOWED = {
    "dmd_core.trainer.Trainer._raise_if_bad",
    "torch.optim.adam.Adam.step",
    "torch.amp.grad_scaler.GradScaler.step",
}
# Host reads inside a dependency, on every mini-batch, that this package cannot remove without replacing the
# dependency's code: transformers' BERT, given an attention mask, checks ``padding_mask.all()`` to skip an all-ones
# mask for SDPA (one wait per BERT forward on CUDA). Recorded, not raised: the tests name what they expect.
IN_DEPENDENCIES = {"transformers.masking_utils._ignore_bidirectional_mask_sdpa"}


class HostSyncError(AssertionError):
    """An operation that would wait for the GPU, inside a mini-batch's work."""


def _caller_in(names: set[str]) -> str | None:
    """The first function on the stack (module-qualified) that is in ``names``."""
    frame = sys._getframe(2)
    while frame is not None:
        name = f"{frame.f_globals.get('__name__')}.{frame.f_code.co_qualname}"
        if name in names:
            return name
        frame = frame.f_back
    return None


def _boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _check(what: str, seen: list[str]) -> None:
    if _caller_in(ALLOWED):
        return
    dependency = _caller_in(IN_DEPENDENCIES)
    if dependency is None:
        raise HostSyncError(f"{what} inside a mini-batch's work: on CUDA the host would wait for the GPU")
    seen.append(dependency)


class HostSync(TorchDispatchMode):
    """Fails on the operations above (see the module's docstring), except below a function in :data:`ALLOWED`;
    records those below a function in :data:`IN_DEPENDENCIES` in ``seen``."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS or (func in (aten.index.Tensor, aten.index_put_.default) and _boolean_index(args)):
            _check(f"{func} reads a tensor on the host", self.seen)
        elif func in FROM_PYTHON_DATA:
            _check(f"{func} builds a tensor from Python data", self.seen)
        return func(*args, **(kwargs or {}))


class HostMethods(TorchFunctionMode):
    """:data:`HOST_METHODS` (which dispatch nothing on a CPU tensor), as :class:`HostSync` treats operations."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_METHODS:
            _check(f"Tensor.{func.__name__} reads a tensor on the host", self.seen)
        return func(*args, **(kwargs or {}))


@contextmanager
def host_sync(seen: list[str] | None = None) -> Iterator[list[str]]:
    seen = [] if seen is None else seen
    with HostMethods(seen), HostSync(seen):
        yield seen


@contextmanager
def per_batch(monkeypatch) -> Iterator[list[str]]:
    """Every mini-batch of every :meth:`Split.batches` (training, validation, prediction) fetched and worked on
    under :func:`host_sync`; the loop's set-up and what follows it run outside. With PyTorch's backend (the code
    path a GPU runs). Yields the list of :data:`IN_DEPENDENCIES` reads seen."""
    batches, open_loops, seen = Split.batches, [], []

    def watched(self, *args, **kwargs):
        def loop():
            it = batches(self, *args, **kwargs)
            while True:
                with host_sync(seen):
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
        yield seen


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


# ---- the package's mini-batch paths under the twin -------------------------------------------------------------


def _config(bert: bool):
    bert_config = dict(SMALL_BERT, vocab_size=1100)  # random_dataset draws token ids from 1000 on
    return tiny_config(bert=BertSpec(name_or_path=None, config=bert_config)) if bert else tiny_config()


def _trainer(tmp_path, bert: bool, precision: str) -> Trainer:
    cfg = _config(bert)
    tc = TrainConfig(batch_size=4, accumulation=2, precision=precision)
    return Trainer(cfg, random_dataset(cfg, 12, 8), tc, tmp_path, seed=1, device="cpu", progress=False,
                   distributed=False)  # fmt: skip


@pytest.mark.parametrize("bert", [False, True], ids=["features", "bert"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_training_epoch_reads_the_host_only_where_allowed(tmp_path, monkeypatch, bert, precision):
    """Three mini-batches, two optimizer steps (the last one the leftover group's): forward, losses, backward,
    clipping, the epoch's sums, the steps and the non-finite check."""
    trainer = _trainer(tmp_path, bert, precision)
    with per_batch(monkeypatch) as seen:
        row = trainer.train_epoch()
    assert trainer.steps == 2 and all(math.isfinite(v) for v in row.values()), row
    assert set(seen) == (IN_DEPENDENCIES if bert else set()) and len(seen) == (3 if bert else 0)  # BERT: per batch


@pytest.mark.parametrize("bert", [False, True], ids=["features", "bert"])
def test_validation_and_prediction_read_the_host_only_after_their_last_batch(tmp_path, monkeypatch, bert):
    trainer = _trainer(tmp_path, bert, "fp32")
    split = trainer.dataset["test"]
    with per_batch(monkeypatch) as seen:
        row = trainer.validate()  # an evaluation batch after another
        pred = predict_arrays(trainer.model, split.text, split.audio, split.vision, batch_size=4)
    assert math.isfinite(row["valid_loss"]) and pred.prediction.shape == (8,)
    assert set(seen) == (IN_DEPENDENCIES if bert else set()) and len(seen) == (4 if bert else 0)


def test_a_host_read_planted_in_the_step_is_caught(tmp_path, monkeypatch):
    """A forward hook that reads the prediction on the host, as a progress print or a check would."""
    trainer = _trainer(tmp_path, False, "fp32")
    trainer.model.final_head.register_forward_hook(lambda module, args, out: out[2].mean().item())
    with per_batch(monkeypatch), pytest.raises(HostSyncError, match="_local_scalar_dense"):
        trainer.train_epoch()


# ---- CPU tensors mixed into a GPU's computation ----------------------------------------------------------------
# FakeTensorMode makes tensors with device="cuda" without a GPU, but this model cannot run on them with a PyTorch
# built without CUDA (2.13.0+cpu here): view and indexing operations (x[:, 0]), scaled_dot_product_attention and
# conv1d ask for CUDA's device guard, which such a build lacks ("PyTorch is not linked with support for cuda
# devices"; conv1d aborts the process), and autocast("cuda") turns itself off. PyTorch's "meta" device stands in
# for the GPU: every operation runs on shapes alone, and one that mixes a CPU tensor (other than a 0-d scalar, as
# on CUDA) into meta tensors fails as it would with CUDA tensors. Not covered there: total_loss, which enters
# torch.autocast("meta", enabled=False) (refused for meta), and BERT, whose mask check (IN_DEPENDENCIES) reads
# values that meta tensors do not have.


def _on_meta() -> tuple[DMD, tuple[torch.Tensor, ...]]:
    cfg = tiny_config()
    meta = torch.device("meta")
    (lt, lv, la), (dt, dv, da) = cfg.seq_lens, cfg.feature_dims
    inputs = tuple(torch.randn(4, n, d, device=meta) for n, d in ((lt, dt), (la, da), (lv, dv)))
    return DMD(cfg).to(meta), inputs


def test_the_forward_and_backward_build_no_cpu_tensor_into_a_device_computation():
    model, (text, audio, vision) = _on_meta()
    out = model.train()(text, audio, vision)
    reached = sum(p.sum() for p in out.predictions()) + out.homo_graph.raw.sum() + out.hetero_graph.raw.sum()
    reached = reached + sum(
        t.sum() for group in (out.decoupled.recon, out.decoupled.shared_sim) for t in group.values()
    )
    reached.backward()
    assert {p.grad.device.type for p in model.parameters() if p.grad is not None} == {"meta"}
    with torch.inference_mode():
        assert model.eval()(text, audio, vision).prediction.device.type == "meta"


def test_a_cpu_tensor_planted_in_the_forward_is_caught_on_the_stand_in_device():
    model, inputs = _on_meta()
    model.final_head.register_forward_hook(lambda module, args, out: (*out[:2], out[2] + torch.ones(4, 1)))
    with pytest.raises(RuntimeError, match="Tensor on device cpu is not on the expected device meta"):
        model(*inputs)
