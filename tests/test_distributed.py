"""The trainer under DistributedDataParallel: 2 CPU processes with gloo keep identical replicas."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmd_core.config import TrainConfig
from dmd_core.runs import load_run

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One torchrun-like process: the env variables torchrun sets, then the ordinary `train` call."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    from dmd_core.trainer import train
    from tests.conftest import tiny_config
    from tests.test_train import tiny_dataset

    cfg = tiny_config()
    snapshots = []

    def keep_weights(trainer, row):
        snapshots.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    tc = TrainConfig(batch_size=4, accumulation=2, lr=1e-3, max_epochs=2)
    result = train(cfg, tiny_dataset(cfg), tc, os.path.join(out, "run"), seed=9, device="cpu", progress=False,
                   on_epoch_end=keep_weights)  # fmt: skip
    torch.save({"snapshots": snapshots, "steps": result.history[-1]["steps"], "metrics": result.test_metrics},
               os.path.join(out, f"rank{rank}.pt"))  # fmt: skip


def test_two_gloo_processes_keep_identical_replicas_after_optimizer_steps(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # 40 samples -> 20 per rank -> 5 mini-batches of 4 -> 3 steps per epoch (2 groups of 2, one leftover).
    assert r0["steps"] == r1["steps"] == 6
    for epoch in range(2):
        a, b = r0["snapshots"][epoch], r1["snapshots"][epoch]
        assert all(torch.equal(a[k], b[k]) for k in a), f"replicas differ after epoch {epoch + 1}"
    assert not all(torch.equal(r0["snapshots"][0][k], r0["snapshots"][1][k]) for k in r0["snapshots"][0])
    # Rank 0 alone tests and writes; the folder is a normal run folder.
    assert r1["metrics"] is None and r0["metrics"]["epochs"] == 2
    run = load_run(tmp_path / "run")
    assert run.meta["world_size"] == 2 and len(run.history) == 2
    assert run.test_metrics["MAE"] == r0["metrics"]["MAE"]
