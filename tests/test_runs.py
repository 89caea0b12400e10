"""dmd_core.runs: atomic writes, reading runs back, summaries over seeds."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat

import pandas as pd
import pytest
import torch

import dmd_core.runs
from dmd_core import runs
from dmd_core.config import DMDConfig, TrainConfig
from dmd_core.export import load_model
from dmd_core.metrics import METRIC_NAMES
from dmd_core.model import DMD
from dmd_core.seeds import train_seeds

from .conftest import tiny_config
from .test_train import one_thread, tiny_dataset  # noqa: F401  (one_thread: autouse fixture)


def test_atomic_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    runs.write_json(target, {"x": 1})
    runs.write_json(target, {"x": 2, "nan": math.nan, "t": (1, 2)})
    assert json.loads(target.read_text()) == {"x": 2, "nan": None, "t": [1, 2]}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # like open(), not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    runs.save_checkpoint(target, {"epoch": 1})
    before = target.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C between writing the temporary file and renaming it

    monkeypatch.setattr(runs.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        runs.save_checkpoint(target, {"epoch": 2})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_the_file_writer_writes_in_order_in_the_background_and_drops_what_follows_a_failure(tmp_path, monkeypatch):
    files = runs.FileWriter()
    for i in range(3):
        files.write(tmp_path / "a.txt", f"{i}".encode())
    files.write(tmp_path / "b.pt", runs.checkpoint_bytes({"w": torch.arange(4)}))
    files.flush()
    assert (tmp_path / "a.txt").read_text() == "2"
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["w"], torch.arange(4))
    write = runs.atomic_write_bytes

    def failing(path, data):
        if path.name == "bad":
            raise OSError(f"cannot write {path}")
        return write(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", failing)
    files.write(tmp_path / "bad", b"x")
    files.write(tmp_path / "a.txt", b"after")  # dropped: the folder stays as it was before the failure
    with pytest.raises(OSError, match="cannot write .*bad"):
        files.flush()
    assert (tmp_path / "a.txt").read_text() == "2" and not (tmp_path / "bad").exists()
    files.write(tmp_path / "a.txt", b"again")  # after the failure was raised, writes go on
    files.close()
    assert (tmp_path / "a.txt").read_text() == "again"


def test_csv_floats_read_back_bit_for_bit(tmp_path):
    values = [0.1 + 0.2, 1 / 3, 1e-300, -2.5e17]
    runs.write_csv(tmp_path / "h.csv", [{"epoch": i, "v": v} for i, v in enumerate(values)])
    with open(tmp_path / "h.csv") as f:
        assert [float(row["v"]) for row in csv.DictReader(f)] == values


def test_summary_has_mean_and_population_std_as_plain_numbers(tmp_path):
    per_seed = {1111: {"MAE": 0.5, "Corr": 0.2}, 1112: {"MAE": 0.7, "Corr": 0.4}}
    summary = runs.write_summary(tmp_path, per_seed)
    assert summary["metrics"]["MAE"]["mean"] == pytest.approx(0.6)
    assert summary["metrics"]["MAE"]["std"] == pytest.approx(0.1)  # ddof=0, as MMSA
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert isinstance(on_disk["metrics"]["Corr"]["mean"], float) and on_disk["seeds"] == [1111, 1112]
    table = pd.read_csv(tmp_path / "summary.csv")
    assert table.columns.tolist() == ["metric", "mean", "std", "n", "seed_1111", "seed_1112"]
    assert table["mean"].dtype == float and table.set_index("metric").loc["MAE", "seed_1112"] == 0.7


def test_load_run_gives_configs_history_metrics_predictions_and_models(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    tc = TrainConfig(batch_size=4, accumulation=3, max_epochs=2)
    result = train_seeds(cfg, ds, tc, tmp_path / "runs", seeds=(3, 4), progress=False)
    seeds = runs.load_seeds(tmp_path / "runs")
    assert sorted(seeds.runs) == [3, 4]
    run = runs.load_run(tmp_path / "runs" / "seed_3")
    assert isinstance(run.config, DMDConfig) and run.config == cfg
    assert run.train_config == tc and run.seed == 3
    assert isinstance(run.history, pd.DataFrame) and len(run.history) == 2
    assert run.test_metrics["MAE"] == result.results[3].test_metrics["MAE"]
    assert isinstance(run.test_predictions, pd.DataFrame) and len(run.test_predictions) == len(ds["test"])
    model = load_model(run, "best")
    assert isinstance(model, DMD) and not model.training
    last, saved = load_model(run, "last").state_dict(), run.checkpoint("last")["model"]
    assert all(torch.equal(last[k], saved[k]) for k in saved)
    # The summary is the mean over the two seeds' test metrics.
    per_seed = seeds.test_metrics
    assert per_seed["seed"].tolist() == [3, 4]
    summary = seeds.summary.set_index("metric")
    assert set(summary.index) == {*METRIC_NAMES, "loss"}
    assert summary.loc["MAE", "mean"] == pytest.approx(per_seed["MAE"].mean())
    with pytest.raises(FileNotFoundError, match="load_seeds"):
        runs.load_run(tmp_path / "runs")


def test_every_history_column_is_documented_in_the_runs_module():
    doc = dmd_core.runs.__doc__
    for name in ("epoch", "lr", "time_s", "steps", "best", "best_valid_loss", "valid_loss"):
        assert f"``{name}``" in doc
    from dmd_core.trainer import PARTS

    for part in PARTS:
        assert f"``train_{part}``" in doc
    assert re.search(r"``train_homo_<edge>``", doc) and "``valid_<metric>``" in doc
