"""Recipe choices the reference makes and ``dmd_core`` keeps by default, each with its switch (the book's method
reference, "Where we differ from the reference")."""

from __future__ import annotations

import pytest
import torch

from dmd_core.cli import build_parser
from dmd_core.cli.train import _train_config_from_args
from dmd_core.config import TrainConfig
from dmd_core.trainer import Trainer

from .conftest import tiny_config
from .test_train import tiny_dataset

# Validation losses whose 4-decimal roundings are 0.5000, 0.5000, 0.4999: the second epoch is better only unrounded
# (by 8e-5, more than the schedule's relative threshold 1e-4 of 0.5), the third in both cases.
LOSSES = (0.50004, 0.49996, 0.49988)


class ScriptedValidation(Trainer):
    """A trainer whose epochs train nothing and whose validation losses are :data:`LOSSES`: what ``fit`` decides
    from them (schedule, best epoch, early stopping) is the trainer's own code."""

    def train_epoch(self) -> dict[str, float]:
        return {"train_total": 0.0}

    def validate(self) -> dict[str, float]:
        return {"valid_loss": LOSSES[self.epoch]}


def fit_scripted(tmp_path, **recipe) -> Trainer:
    cfg = tiny_config()
    tc = TrainConfig(batch_size=4, lr=1e-3, plateau_patience=0, max_epochs=len(LOSSES), **recipe)
    trainer = ScriptedValidation(cfg, tiny_dataset(cfg, sizes=(8, 8, 8)), tc, tmp_path / "run", 1, device="cpu",
                                 progress=False, distributed=False)  # fmt: skip
    trainer.fit()
    return trainer


@pytest.fixture(autouse=True)
def one_thread(threads):
    torch.set_num_threads(1)


def test_by_default_the_validation_loss_is_rounded_to_four_decimals_before_scheduling_and_choosing_the_best(tmp_path):
    trainer = fit_scripted(tmp_path)
    assert TrainConfig().valid_loss_decimals == 4
    assert [row["best"] for row in trainer.history] == [1, 0, 1]  # 0.5000 is not below 0.5000
    assert trainer.best_valid == 0.4999 and trainer.best_epoch == 3
    assert [row["lr"] for row in trainer.history] == [1e-3, 1e-3, 5e-4]  # patience 0: halved after epoch 2
    assert [row["valid_loss"] for row in trainer.history] == list(LOSSES)  # the history keeps the loss unrounded


def test_valid_loss_decimals_none_compares_the_unrounded_loss(tmp_path):
    trainer = fit_scripted(tmp_path, valid_loss_decimals=None)
    assert [row["best"] for row in trainer.history] == [1, 1, 1]
    assert trainer.best_valid == LOSSES[-1] and trainer.best_epoch == 3
    assert [row["lr"] for row in trainer.history] == [1e-3] * 3


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_valid_loss_decimals_must_be_none_or_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="TrainConfig.valid_loss_decimals: expected None or an integer >= 0"):
        TrainConfig(valid_loss_decimals=bad)


@pytest.mark.parametrize(("argv", "expected"), [([], 4), (["--valid-loss-decimals", "6"], 6),
                                                (["--valid-loss-decimals", "none"], None)])  # fmt: skip
def test_dmd_train_valid_loss_decimals_sets_the_rounding(argv, expected):
    args = build_parser().parse_args(["train", "--data", "x.pkl", *argv])
    assert _train_config_from_args(args).valid_loss_decimals == expected


def test_dmd_train_refuses_negative_decimals(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "x.pkl", "--valid-loss-decimals", "-2"])
    assert "expected an integer >= 0 or 'none', found '-2'" in capsys.readouterr().err
