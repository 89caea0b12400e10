"""TensorBoard logging: every history.csv column per epoch, one TensorBoard run per seed, read back by TensorBoard."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from dmd_core import TrainConfig, load_run, train, train_seeds
from dmd_core.distill import EDGE_NAMES
from dmd_core.tensorboard import TensorBoardLogger, TensorBoardUnavailableError, tag_for

from .conftest import tiny_config
from .test_train import one_thread, tiny_dataset  # noqa: F401  (autouse fixture)

pytest.importorskip("tensorboard")


def read_scalars(log_dir) -> dict[str, dict[str, list]]:
    """What TensorBoard's scalar dashboard gets: {run: {tag: [(step, value), ...]}}."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"scalars": 0})
    mux.AddRunsFromDirectory(str(log_dir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(log_dir))
    found = provider.read_scalars(context.RequestContext(), experiment_id="", plugin_name="scalars",
                                  downsample=10_000, run_tag_filter=None)  # fmt: skip
    return {run: {tag: [(d.step, d.value) for d in data] for tag, data in tags.items()} for run, tags in found.items()}


def test_tensorboard_returns_the_history_of_every_seed(tmp_path):
    cfg = tiny_config()
    tc = TrainConfig(batch_size=8, accumulation=2, max_epochs=3, seeds=(1, 2))
    train_seeds(cfg, tiny_dataset(cfg), tc, tmp_path / "run", progress=False, tensorboard=tmp_path / "tb")
    scalars = read_scalars(tmp_path / "tb")
    assert sorted(scalars) == ["seed_1", "seed_2"]  # one TensorBoard run per seed
    for seed in (1, 2):
        history = load_run(tmp_path / "run" / f"seed_{seed}").history
        tags = {tag_for(c): c for c in history.columns if c != "epoch"}
        assert set(scalars[f"seed_{seed}"]) == set(tags)  # every column, nothing else
        for tag, column in tags.items():
            steps, values = zip(*scalars[f"seed_{seed}"][tag])
            assert list(steps) == history["epoch"].tolist()
            # TensorBoard keeps scalars as float32: the history's numbers, rounded to float32.
            assert list(values) == [float(np.float32(v)) for v in history[column]], tag


def test_the_tags_group_loss_parts_metrics_and_each_units_edges():
    assert tag_for("train_total") == "loss/total" and tag_for("train_homo_gd") == "loss/homo_gd"
    assert tag_for("lr") == "lr" and tag_for("epoch") is None
    assert tag_for("valid_loss") == "valid/loss" and tag_for("valid_Non0_acc_2") == "valid/Non0_acc_2"
    assert tag_for("best_valid_loss") == "valid/best_loss" and tag_for("time_s") == "run/time_s"
    assert [tag_for(f"valid_homo_{e}") for e in EDGE_NAMES] == [f"HomoGD/valid/{e}" for e in EDGE_NAMES]
    assert tag_for("train_hetero_V->A") == "HeteroGD/train/V->A"


def test_train_logs_and_still_calls_its_own_callback(tmp_path):
    cfg = tiny_config()
    seen = []
    tc = TrainConfig(batch_size=8, accumulation=2, max_epochs=2, seeds=(5,))
    train(cfg, tiny_dataset(cfg), tc, tmp_path / "run", progress=False, tensorboard=tmp_path / "tb",
          on_epoch_end=lambda trainer, row: seen.append(row["epoch"]))  # fmt: skip
    assert seen == [1, 2]
    assert [step for step, _ in read_scalars(tmp_path / "tb")["seed_5"]["HomoGD/valid/L->A"]] == [1, 2]


def test_without_the_tensorboard_package_training_is_refused_before_it_starts(tmp_path, monkeypatch, caplog):
    from dmd_core.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    with pytest.raises(TensorBoardUnavailableError, match=r"dmd-core\[tensorboard\]"):
        TensorBoardLogger(tmp_path / "tb")
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--data", str(tmp_path / "any.pkl"), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "pip install" in caplog.text and not (tmp_path / "tb").exists()
