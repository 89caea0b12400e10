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


@pytest.mark.parametrize("requested", [None, "auto", "cuda", "cuda:0", "cuda:1", "cuda:2"])
def test_a_rank_device_is_one_that_torch_cuda_set_device_accepts(requested):
    """PyTorch's own index resolution (what ``torch.cuda.set_device`` runs first; no GPU needed) takes it."""
    device = devices.rank_device(requested, 1, cuda_available=True, device_count=4)
    assert torch.cuda._get_device_index(device, optional=False) == device.index


# ---- which GPU one process takes -----------------------------------------------------------------------------


def test_torch_cuda_set_device_refuses_a_cuda_device_without_an_index():
    """The rule the next tests hold our devices to: PyTorch's own, run without a GPU."""
    with pytest.raises(ValueError, match="with a specified index"):
        torch.cuda._get_device_index(torch.device("cuda"), optional=False)


@pytest.mark.parametrize(
    "requested,current,expected",
    [("cuda", 0, 0), ("cuda", 1, 1), (torch.device("cuda"), 1, 1), ("cuda:1", 0, 1), (None, 1, 1), ("auto", 0, 0)],
)  # fmt: skip
def test_every_cuda_device_gets_the_index_that_torch_cuda_set_device_needs(requested, current, expected):
    """``--device cuda`` (the README, every chapter's ``device="cuda"``) means the current GPU, by index."""
    device = devices.resolve_device(requested, cuda_available=True, device_count=2, current_index=current)
    assert device == torch.device("cuda", expected)
    assert torch.cuda._get_device_index(device, optional=False) == expected


def test_a_gpu_the_machine_lacks_and_cuda_without_cuda_are_refused_by_name():
    with pytest.raises(RuntimeError, match=r"'cuda:2': only 2 CUDA device\(s\) here"):
        devices.resolve_device("cuda:2", cuda_available=True, device_count=2, current_index=0)
    with pytest.raises(RuntimeError, match="'cuda' asked for, but CUDA is not available"):
        devices.resolve_device("cuda", cuda_available=False, device_count=0, current_index=0)
    with pytest.raises(RuntimeError, match="Apple MPS is not available"):
        devices.resolve_device("mps", cuda_available=False, device_count=0, current_index=0)
    assert devices.resolve_device(None, False, 0, 0, mps_available=True) == torch.device("mps")
    assert devices.resolve_device("auto", False, 0, 0) == devices.resolve_device("cpu", True, 2, 1)


# ---- TF32 ----------------------------------------------------------------------------------------------------

NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def tf32_readers() -> dict[str, object]:
    """What PyTorch, ``torch.compile`` and libraries read: the matmul precision and both legacy TF32 flags."""
    return {
        "matmul precision": torch.get_float32_matmul_precision(),
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
    }


@pytest.fixture
def tf32_settings():
    """Restores the TF32 settings (process-wide) through the same two calls, so that every reader answers after."""
    saved = tf32_readers()
    yield
    torch.set_float32_matmul_precision(saved["matmul precision"])
    torch.backends.cudnn.allow_tf32 = saved["cudnn.allow_tf32"]
    assert tf32_readers() == saved


@pytest.mark.parametrize("user", [None, "ieee", "tf32"])
def test_every_tf32_reader_answers_after_configure_cuda_on_and_off(tf32_settings, user):
    """PyTorch refuses to read TF32 flags set through a mix of its legacy and ``fp32_precision`` APIs (on the CPU
    too): whatever a user set before (``user``: through the new API), both views must agree afterwards."""
    if user is not None and NEW_API:
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = user
    devices.configure_cuda(True)
    assert tf32_readers() == {"matmul precision": "high", "cuda.matmul.allow_tf32": True, "cudnn.allow_tf32": True}
    devices.configure_cuda(False)
    assert tf32_readers() == {"matmul precision": "highest", "cuda.matmul.allow_tf32": False,
                              "cudnn.allow_tf32": False}  # fmt: skip
