"""dmd_core.seeds: several seeds into one folder, and runs trained side by side in local processes."""

from __future__ import annotations

import json

import pytest
import torch

from dmd_core.config import TrainConfig
from dmd_core.runs import load_checkpoint, load_seeds
from dmd_core.seeds import RunJob, train_runs, train_seeds

from .conftest import tiny_config
from .test_cli import TINY, dmd, synth_file  # noqa: F401  (synth_file: fixture)
from .test_train import one_thread, tiny_dataset  # noqa: F401  (one_thread: autouse fixture)

RECIPE = TrainConfig(batch_size=8, accumulation=2, lr=1e-3, max_epochs=2, seeds=(5, 6, 7))


def _weights(folder, seed):
    return load_checkpoint(folder / f"seed_{seed}" / "best.pt")["model"]


def test_seeds_in_two_processes_give_the_same_bits_as_one_after_another(tmp_path):
    cfg = tiny_config()
    data = tiny_dataset(cfg)
    one = train_seeds(cfg, data, RECIPE, tmp_path / "one", progress=False)
    two = train_seeds(cfg, data, RECIPE, tmp_path / "two", progress=False, workers=2)
    for seed in RECIPE.seeds:
        a, b = _weights(tmp_path / "one", seed), _weights(tmp_path / "two", seed)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"seed {seed} differs"
        untimed = [
            [{k: v for k, v in row.items() if k != "time_s"} for row in r.results[seed].history] for r in (one, two)
        ]
        assert untimed[0] == untimed[1]
        assert one.results[seed].test_metrics == two.results[seed].test_metrics
        # The returned model holds the best weights, read back from the worker's best.pt.
        returned = two.results[seed].model.state_dict()
        assert not two.results[seed].model.training and all(torch.equal(returned[k], a[k]) for k in a)
    assert one.summary["metrics"]["MAE"] == two.summary["metrics"]["MAE"]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["seeds"] == [5, 6, 7]
    assert sorted(load_seeds(tmp_path / "two").runs) == [5, 6, 7]


def test_a_failing_job_raises_its_own_error_here(tmp_path):
    cfg = tiny_config()
    good = RunJob(cfg, tiny_dataset(cfg), RECIPE.replace(max_epochs=1), tmp_path / "good", 1)
    bad = RunJob(cfg, tmp_path / "missing.pkl", RECIPE.replace(max_epochs=1), tmp_path / "bad", 2)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        train_runs([good, bad], workers=2, progress=False)
    assert not (tmp_path / "bad" / "config.json").exists()


def test_workers_must_be_at_least_one(tmp_path):
    with pytest.raises(ValueError, match="workers must be at least 1, found 0"):
        train_runs([], workers=0)


def test_dmd_train_workers_trains_the_seeds_in_processes_and_refuses_zero(synth_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "runs"
    assert dmd("train", "--data", synth_file, "--seeds", "1", "2", "--max-epochs", "1", "--workers", "2",
               "--out", out, *TINY) == 0  # fmt: skip
    assert "mean (std) over 2 seed(s)" in capsys.readouterr().out
    assert sorted(load_seeds(out).runs) == [1, 2] and (out / "summary.csv").is_file()
    with pytest.raises(SystemExit):
        dmd("train", "--data", synth_file, "--workers", "0", "--out", tmp_path / "zero", *TINY)
    assert "--workers: expected at least 1, found 0" in capsys.readouterr().err
