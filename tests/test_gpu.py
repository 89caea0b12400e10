"""The CUDA path (bf16 autocast, data on the GPU, parity with CPU). Skipped without a GPU; CI has none."""

from __future__ import annotations

import pytest
import torch

import dmd_core
from dmd_core import reference as R
from dmd_core.bench import random_split
from dmd_core.config import TrainConfig
from dmd_core.data import MMSADataset
from dmd_core.train import Trainer, place_dataset

from .conftest import load_fixture, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _dataset(cfg, n=48):
    from pathlib import Path

    splits = {name: random_split(cfg, n, name, i) for i, name in enumerate(("train", "valid", "test"))}
    return MMSADataset(Path("<random>"), splits, cfg.aligned, cfg.seq_lens, cfg.feature_dims, "features")


def test_reference_fixture_matches_on_cuda_in_float32():
    fx = load_fixture("mosi_unaligned_features")
    cfg = R.config_from_args(fx["official_args"], fx["setting"]["seq_lens_LVA"], fx["bert_config"])
    model = dmd_core.DMD(cfg)
    R.load_state_dict(model, fx["state_dict"], fx["homo_state_dict"], fx["hetero_state_dict"])
    inp = {k: v.cuda() for k, v in fx["inputs"].items()}
    torch.backends.cuda.matmul.allow_tf32 = False
    ours = R.probe(model.cuda(), inp["text"], inp["audio"], inp["vision"], inp["labels"])["outputs"]
    for name, expected in fx["outputs"].items():
        torch.testing.assert_close(ours[name].cpu(), expected, atol=1e-4, rtol=1e-3)


def test_small_datasets_move_to_the_gpu_once():
    cfg = tiny_config()
    placed = place_dataset(_dataset(cfg), torch.device("cuda"))
    assert placed["train"].audio.is_cuda


def test_a_bf16_training_epoch_on_cuda_gives_finite_losses(tmp_path):
    cfg = tiny_config()
    trainer = Trainer(cfg, _dataset(cfg), TrainConfig(batch_size=8, bf16=True), tmp_path, seed=1, device="cuda",
                      progress=False, distributed=False)  # fmt: skip
    row = trainer.train_epoch()
    assert all(torch.isfinite(torch.tensor(v)) for v in row.values())
