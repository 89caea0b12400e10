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


SMALL_BERT = dict(vocab_size=1100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)  # fmt: skip


def _bert_worker(rank: int, world: int, port: int, out: str) -> None:
    """DDP fine-tuning BERT: every trainable parameter must get a gradient at every backward (no pooler)."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    from dmd_core.bench import random_split
    from dmd_core.config import BertSpec
    from dmd_core.trainer import train
    from tests.conftest import tiny_config

    cfg = tiny_config(bert=BertSpec(name_or_path=None, config=SMALL_BERT))
    splits = {name: random_split(cfg, n, name, k) for k, (name, n) in enumerate((("train", 32), ("valid", 8),
                                                                                  ("test", 8)))}  # fmt: skip
    snapshots = []

    def keep_weights(trainer, row):
        snapshots.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    tc = TrainConfig(batch_size=4, accumulation=2, lr=1e-3, max_epochs=1)
    result = train(cfg, splits, tc, os.path.join(out, "run"), seed=4, device="cpu", progress=False,
                   on_epoch_end=keep_weights)  # fmt: skip
    torch.save({"weights": snapshots[-1], "steps": result.history[-1]["steps"]}, os.path.join(out, f"rank{rank}.pt"))


def test_ddp_fine_tunes_bert_and_the_replicas_stay_identical(tmp_path):
    mp.spawn(_bert_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2  # 16 samples per rank, 4 mini-batches, groups of 2
    a, b = r0["weights"], r1["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "replicas differ"
    assert not any("pooler" in k for k in a), "BERT's pooler is built but nothing uses it"
    torch.manual_seed(4)  # the initial weights of seed 4
    from dmd_core.config import BertSpec
    from dmd_core.model import DMD
    from tests.conftest import tiny_config

    initial = DMD(tiny_config(bert=BertSpec(name_or_path=None, config=SMALL_BERT))).state_dict()
    bert = [k for k in a if k.startswith("text_encoder.") and "embeddings.position_ids" not in k]
    assert bert and all(not torch.equal(a[k], initial[k]) for k in bert if "token_type" not in k), "BERT not trained"


# ---- parallel seeds: ranks that finish at different times ---------------------------------------------------

TIMEOUT_S = 2  # a collective waiting longer than this fails (NCCL's default is 10 minutes)
EXTRA_S = 4  # the slow seed's extra time: longer than TIMEOUT_S


def _seeds_worker(rank: int, world: int, port: int, out: str, seeds: tuple[int, ...], slow_seed: int) -> None:
    """``train_seeds(parallel=True)`` where one seed takes longer than the process group's collective timeout."""
    import time
    from datetime import timedelta

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=TIMEOUT_S))
    from dmd_core import trainer as T
    from dmd_core.seeds import train_seeds
    from tests.conftest import tiny_config
    from tests.test_train import tiny_dataset

    test = T.Trainer.test

    def slow_test(self):  # a seed that trains for longer (later early stopping, a slower GPU)
        if self.seed == slow_seed:
            time.sleep(EXTRA_S)
        return test(self)

    T.Trainer.test = slow_test
    cfg = tiny_config()
    tc = TrainConfig(batch_size=4, accumulation=2, lr=1e-3, max_epochs=1)
    try:
        result = train_seeds(cfg, tiny_dataset(cfg, sizes=(8, 8, 8)), tc, os.path.join(out, "run"), seeds=seeds,
                               device="cpu", progress=False, parallel=True)  # fmt: skip
    finally:
        dist.destroy_process_group()
    torch.save({"mine": sorted(result.results), "summary": result.summary}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.parametrize("seeds,slow_seed", [((1, 2, 3), 2), ((5,), 5)], ids=["3-seeds-rank1-slow", "1-seed"])
def test_parallel_seeds_of_unequal_length_finish_cleanly(tmp_path, seeds, slow_seed):
    mp.spawn(_seeds_worker, args=(2, _free_port(), str(tmp_path), seeds, slow_seed), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["mine"] == list(seeds[0::2]) and r1["mine"] == list(seeds[1::2])
    assert r1["summary"] is None
    assert r0["summary"]["seeds"] == list(seeds)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        [f"seed_{s}" for s in seeds] + ["summary.csv", "summary.json"])  # fmt: skip
