"""A run as a shareable model: dmd_core.export (export_run, its model card, load_model) and `dmd export`."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch

from dmd_core import DMD, TrainConfig, load_run, train_seeds
from dmd_core.cli import export as export_cli
from dmd_core.cli import predict as predict_cli
from dmd_core.evaluation import predict
from dmd_core.export import best_valid_loss, export_run, load_model

from .conftest import tiny_config
from .test_train import one_thread, tiny_dataset  # noqa: F401  (autouse fixture)


def dmd(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="dmd")
    sub = p.add_subparsers(dest="command", required=True)
    export_cli.add_cli(sub)
    predict_cli.add_cli(sub)
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-seed run of a tiny DMD on tiny in-memory data."""
    cfg = tiny_config()
    ds = tiny_dataset(cfg)
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    tc = TrainConfig(batch_size=8, accumulation=2, max_epochs=2, seeds=(1, 2))
    train_seeds(cfg, ds, tc, run_dir, progress=False)
    return run_dir, ds


def _same_predictions(a: DMD, b: DMD, split) -> None:
    pa, pb = predict(a, split), predict(b, split)
    assert torch.equal(pa.prediction, pb.prediction)
    assert torch.equal(pa.homo_edges, pb.homo_edges) and torch.equal(pa.hetero_edges, pb.hetero_edges)


def test_an_exported_run_loads_back_and_predicts_exactly_what_its_best_checkpoint_predicts(trained, tmp_path):
    run_dir, ds = trained
    out = export_run(run_dir, tmp_path / "dmd-tiny")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md", "training.json"}
    info = json.loads((out / "training.json").read_text())
    runs = {s: load_run(run_dir / f"seed_{s}") for s in (1, 2)}
    chosen = min((1, 2), key=lambda s: best_valid_loss(runs[s]))  # validation chooses, never the test split
    assert info["seed"] == chosen and info["weights"] == "best"
    run = runs[chosen]

    loaded = DMD.from_pretrained(out)
    assert not loaded.training and loaded.config == run.config
    _same_predictions(loaded, load_model(run, "best"), ds["test"])
    # ... which is what the run wrote when it tested its best weights.
    assert predict(loaded, ds["test"]).prediction.tolist() == run.test_predictions["prediction"].tolist()

    # A chosen seed; and save_pretrained / from_pretrained round trip on their own.
    other = 3 - chosen
    export_run(run_dir, tmp_path / "other", seed=other)
    _same_predictions(DMD.from_pretrained(tmp_path / "other"), load_model(runs[other], "best"), ds["valid"])


def test_the_model_card_is_generated_from_the_run(trained, tmp_path):
    run_dir, _ = trained
    out = export_run(run_dir, tmp_path / "card")
    card = (out / "README.md").read_text()
    info = json.loads((out / "training.json").read_text())
    assert card.startswith("---\n") and "library_name: dmd_core" in card  # hub metadata
    for text in ("## The run", "preset, changed: `d=8`", "`batch_size=8`", "`max_epochs=2`", "## Test metrics",
                 "mean over 2 seeds", "## GD-Unit graphs", "| V->L |", "DMD.from_pretrained", "dmd predict"):  # fmt: skip
        assert text in card, text
    summary = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert f"| MAE | {info['test_metrics']['MAE']:.4f} | {summary['MAE']['mean']:.4f} |" in card
    edges = load_run(run_dir / f"seed_{info['seed']}").test_predictions
    assert info["edges"]["seed"]["homo"]["V->L"] == pytest.approx(edges["homo_V->L"].mean())
    assert sum(info["edges"]["mean_over_seeds"]["hetero"].values()) == pytest.approx(1.0, abs=1e-5)


def test_dmd_export_writes_the_folder_and_refuses_a_used_one(trained, tmp_path, capsys, caplog):
    run_dir, _ = trained
    assert dmd("export", run_dir, "--out", tmp_path / "exp", "--seed", "2", "--which", "last") == 0
    assert "seed 2" in capsys.readouterr().out
    info = json.loads((tmp_path / "exp" / "training.json").read_text())
    assert info["seed"] == 2 and info["weights"] == "last" and info["epoch"] == 2
    with caplog.at_level(logging.ERROR):
        assert dmd("export", run_dir, "--out", tmp_path / "exp") == 2
    assert "--overwrite" in caplog.text
    assert dmd("export", run_dir, "--out", tmp_path / "exp", "--overwrite") == 0


def test_dmd_predict_and_export_without_network_fail_at_once_before_writing(trained, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with caplog.at_level(logging.ERROR):
        assert dmd("predict", "--model", "someone/dmd-mosi", "--data", "x.pkl", "--out", tmp_path / "p.csv") == 2
    assert "hub cannot be reached" in caplog.text and "local folder" in caplog.text
    assert dmd("export", trained[0], "--out", tmp_path / "exp", "--push-to-hub", "someone/dmd-mosi") == 2
    assert not (tmp_path / "exp").exists()  # refused before anything was written
