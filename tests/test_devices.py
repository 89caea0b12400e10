"""The GPU paths, checked on the CPU: what goes to the device and when, which GPU a rank takes, TF32 switches.

No GPU is needed: a fake device ("meta", or a ``TorchFunctionMode`` that records and skips moves to
CUDA) shows where tensors go, and the ``torch.backends`` TF32 settings can be set without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dmd_core import devices
from dmd_core.data import MMSADataset

from .conftest import tiny_config
from .test_train import tiny_split


class FakeCuda(TorchFunctionMode):
    """Records ``pin_memory`` and moves to CUDA, and performs neither (the tensor stays where it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.pinned, self.moves = 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "pin_memory":
            self.pinned += 1
            return args[0]
        if name == "to" and "cuda" in str(args[1:]) + str(kwargs.get("device", "")):
            self.moves.append(kwargs.get("non_blocking", False))
            return args[0]
        return func(*args, **kwargs)


class IndexMoves(TorchFunctionMode):
    """Counts integer tensors moved from the CPU to another device (row indices on their way to the data)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = args[0] if args else None
        if (isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor) and src.device.type == "cpu"
                and out.device.type != "cpu" and not src.is_floating_point()):  # fmt: skip
            self.count += 1
        return out


def _dataset(n: int = 24) -> MMSADataset:
    cfg = tiny_config()
    splits = {name: tiny_split(name, cfg, n, k) for k, name in enumerate(("train", "valid", "test"))}
    return MMSADataset(Path("<tiny>"), splits, True, cfg.seq_lens, cfg.feature_dims, "features")


# ---- the dataset on the device --------------------------------------------------------------------------------


def test_a_shuffled_epoch_sends_its_row_order_to_the_data_device_once():
    split = tiny_split("train", tiny_config(), 40, 0).to("meta")  # "meta" stands for the GPU the data lives on
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):  # two epochs
        spy = IndexMoves()
        with spy:
            batches = list(split.batches(4, shuffle=True, generator=generator))
        assert len(batches) == 10
        assert spy.count == 1, f"{spy.count} index transfers in one epoch of 10 mini-batches (expected 1)"
        assert all(b.labels.device.type == "meta" and b.index.device.type == "cpu" for b in batches)


def test_the_shuffled_order_is_the_generators_permutation_wherever_the_data_lives():
    split = tiny_split("train", tiny_config(), 10, 0)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    batches = list(split.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(torch.cat([b.index for b in batches]), order)
    assert torch.equal(torch.cat([b.labels for b in batches]), split.labels[order])


def test_placing_a_dataset_on_the_gpu_keeps_no_pinned_host_copy(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 2**30, 80 * 2**30))
    ds = _dataset()
    spy = FakeCuda()
    with spy:
        devices.place_dataset(ds, torch.device("cuda", 0))
        ds["test"].to("cuda")
    assert spy.moves, "nothing was moved to the GPU"
    assert spy.pinned == 0, f"{spy.pinned} tensors copied into pinned host memory (a full host copy, kept)"
    assert not any(spy.moves), "a whole-dataset copy must be a plain (blocking) copy"


# ---- which GPU a rank takes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested,local_rank,expected",
    [(None, 1, "cuda:1"), ("auto", 0, "cuda:0"), ("cuda", 1, "cuda:1"), ("cuda:0", 1, "cuda:1"),
     ("cuda:2", 1, "cuda:3"), ("cpu", 1, "cpu")],
)  # fmt: skip
def test_under_torchrun_cuda_n_means_gpu_n_plus_the_local_rank(requested, local_rank, expected):
    assert devices.rank_device(requested, local_rank, cuda_available=True, device_count=4) == torch.device(expected)


def test_a_rank_device_beyond_the_machines_gpus_is_refused_and_no_cuda_means_the_cpu():
    with pytest.raises(RuntimeError, match="cuda:3"):
        devices.rank_device("cuda:2", 1, cuda_available=True, device_count=3)
    assert devices.rank_device(None, 1, cuda_available=False, device_count=0) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        devices.rank_device("cuda", 1, cuda_available=False, device_count=0)


def test_init_distributed_puts_each_rank_on_its_own_gpu_for_cuda_n(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    monkeypatch.setattr(devices.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(devices.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(devices.dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    info, device = devices.init_distributed("cuda:2")
    assert info.rank == 1 and device == torch.device("cuda", 3) and chosen == [device]


# ---- TF32 ----------------------------------------------------------------------------------------------------

NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


@pytest.fixture
def tf32_settings():
    """The fp32_precision settings, restored after the test (they are process-wide)."""
    knobs = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
    saved = [k.fp32_precision for k in knobs]
    yield knobs
    for knob, value in zip(knobs, saved):
        knob.fp32_precision = value


@pytest.mark.skipif(not NEW_API, reason="PyTorch without the fp32_precision settings (before 2.9)")
def test_configure_cuda_uses_the_fp32_precision_settings_and_leaves_the_rest_alone(tf32_settings):
    matmul, conv, rnn = tf32_settings
    for knob in tf32_settings:  # what a user may have set with PyTorch's new API before training
        knob.fp32_precision = "ieee"
    devices.configure_cuda(True)
    assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    assert rnn.fp32_precision == "ieee", "the legacy cudnn flag also switches RNNs (which DMD does not use)"
    devices.configure_cuda(False)
    assert (matmul.fp32_precision, conv.fp32_precision, rnn.fp32_precision) == ("ieee", "ieee", "ieee")
