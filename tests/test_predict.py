"""Prediction on new data: `dmd predict`, `predict_arrays`, and the loader's label-less mode."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch

from dmd_core import DMD, predict_arrays
from dmd_core.cli import export as export_cli
from dmd_core.cli import predict as predict_cli
from dmd_core.cli import train as train_cli
from dmd_core.data import DataFormatError, dump_mmsa, load_mmsa
from dmd_core.data.synth import SynthSpec, make_mmsa
from dmd_core.distill import EDGE_NAMES
from dmd_core.evaluation import evaluate, predict, scores

from .conftest import tiny_config
from .test_train import one_thread, tiny_dataset  # noqa: F401  (autouse fixture)

SPEC = SynthSpec(dataset="mosi", aligned=True, sizes=(32, 16, 16), text_dim=32, seed=0)
TINY = ["--set", "d=8", "--set", "heads=2", "--set", "nlevels=1", "--batch-size", "8", "--no-progress"]


def dmd(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="dmd")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (train_cli, predict_cli, export_cli):
        module.add_cli(sub)
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


def without_labels(data: dict) -> dict:
    for name in ("train", "valid", "test"):
        for key in ("regression_labels", "classification_labels"):
            data[name].pop(key, None)
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A labelled synthetic MOSI file and a one-seed `dmd train` run on it."""
    folder = tmp_path_factory.mktemp("predict")
    data = folder / "mosi_small.pkl"
    dump_mmsa(make_mmsa(SPEC), data)
    assert dmd("train", "--data", data, "--seeds", "1", "--max-epochs", "1", "--out", folder / "run", *TINY) == 0
    return folder / "run", data


def test_dmd_predict_on_a_file_without_labels_writes_one_row_per_sample(run, tmp_path, capsys):
    run_dir, _ = run
    raw = without_labels(make_mmsa(SPEC))
    file = dump_mmsa(raw, tmp_path / "new.pkl")
    assert dmd("predict", "--model", run_dir, "--data", file, "--out", tmp_path / "preds.csv") == 0
    assert "wrote" in capsys.readouterr().out
    preds = pd.read_csv(tmp_path / "preds.csv", dtype={"id": str})
    assert len(preds) == sum(SPEC.sizes) and "label" not in preds.columns
    assert list(preds.columns[:3]) == ["split", "id", "prediction"]
    for name in ("train", "valid", "test"):
        assert list(preds.loc[preds["split"] == name, "id"]) == [str(i) for i in raw[name]["id"]]
    for unit in ("homo", "hetero"):
        assert preds[[f"{unit}_{e}" for e in EDGE_NAMES]].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-5)

    # The Python API gives the same numbers for the same arrays in memory.
    model = DMD.from_pretrained(_export(run_dir, tmp_path))
    test = raw["test"]
    pred = predict_arrays(model, test["text"], test["audio"], test["vision"], ids=test["id"])
    assert not pred.has_labels and "label" not in pred.rows()[0]
    assert pred.prediction.tolist() == preds.loc[preds["split"] == "test", "prediction"].tolist()

    # A file of new data with one split of any name.
    one = dump_mmsa({"clips": raw["test"]}, tmp_path / "one.pkl")
    assert dmd("predict", "--model", tmp_path / "export", "--data", one, "--out", tmp_path / "one.csv") == 0
    one_preds = pd.read_csv(tmp_path / "one.csv", dtype={"id": str})
    assert set(one_preds["split"]) == {"clips"} and one_preds["prediction"].tolist() == pred.prediction.tolist()


def _export(run_dir, tmp_path):
    out = tmp_path / "export"
    if not out.exists():
        assert dmd("export", run_dir, "--out", out) == 0
    return out


def test_dmd_predict_on_a_labelled_file_gives_dmd_tests_metrics(run, tmp_path):
    run_dir, data = run
    assert dmd("test", run_dir, "--json", tmp_path / "test.json") == 0
    want = json.loads((tmp_path / "test.json").read_text())[str(run_dir / "seed_1")]["metrics"]
    for model in (run_dir, _export(run_dir, tmp_path)):  # the run folder, and its exported folder
        assert dmd("predict", "--model", model, "--data", data, "--split", "test", "--out", tmp_path / "p.csv",
                   "--metrics", tmp_path / "m.json") == 0  # fmt: skip
        assert json.loads((tmp_path / "m.json").read_text()) == {"test": want}
    preds = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    assert len(preds) == SPEC.sizes[2] and set(preds["split"]) == {"test"}
    assert preds["label"].tolist() == load_mmsa(data)["test"].labels.tolist()


def test_the_loader_accepts_missing_labels_only_when_asked(tmp_path):
    file = dump_mmsa(without_labels(make_mmsa(SPEC)), tmp_path / "new.pkl")
    with pytest.raises(DataFormatError, match="regression_labels.*dmd predict"):
        load_mmsa(file)
    ds = load_mmsa(file, labels="optional")
    assert all(torch.isnan(s.labels).all() and len(s) == n for s, n in zip(ds.splits.values(), SPEC.sizes))

    # Every other problem is still refused.
    for mutate, match in (
        (lambda d: d["valid"].__setitem__("vision", d["valid"]["vision"][:3]), "'vision'.*as audio"),
        (lambda d: d["test"].pop("id"), "'id'"),
        (lambda d: d["test"].__setitem__("regression_labels", np.full(16, np.nan)), "finite sentiment labels"),
        (lambda d: d["train"].__setitem__("audio", d["train"]["audio"][..., :2]), "per-sample shape"),
    ):
        broken = without_labels(make_mmsa(SPEC))
        mutate(broken)
        with pytest.raises(DataFormatError, match=match):
            load_mmsa(dump_mmsa(broken, tmp_path / "broken.pkl"), labels="optional")

    # splits="all": whatever the file holds; the memory-mapped cache keeps the difference.
    one = dump_mmsa({"clips": without_labels(make_mmsa(SPEC))["test"], "note": {"x": 1}}, tmp_path / "one.pkl")
    assert list(load_mmsa(one, splits="all", labels="optional").splits) == ["clips"]
    with pytest.raises(DataFormatError, match="at least one split"):
        load_mmsa(dump_mmsa({"note": {"x": 1}}, tmp_path / "none.pkl"), splits="all")
    load_mmsa(file, labels="optional", mmap_dir=tmp_path / "mm")
    with pytest.raises(DataFormatError, match="no labels"):
        load_mmsa(file, mmap_dir=tmp_path / "mm")


def test_predict_arrays_equals_predict_and_checks_shapes():
    cfg = tiny_config()
    model = DMD(cfg).eval()
    split = tiny_dataset(cfg)["test"]
    want = predict(model, split)
    got = predict_arrays(model, split.text.numpy(), split.audio, split.vision, labels=split.labels, ids=split.ids)
    assert torch.equal(got.prediction, want.prediction) and torch.equal(got.hetero_edges, want.hetero_edges)
    assert scores(got) == evaluate(model, split)
    unlabelled = predict_arrays(model, split.text, split.audio, split.vision)
    assert unlabelled.ids == [str(i) for i in range(len(split))] and not unlabelled.has_labels
    with pytest.raises(ValueError, match="without labels"):
        scores(unlabelled)
    audio = split.audio.clone()
    audio[0, 0, 0] = -float("inf")  # as COVAREP writes; the loader makes it 0, and so does predict_arrays
    zeroed = audio.clone()
    zeroed[0, 0, 0] = 0
    assert torch.equal(predict_arrays(model, split.text, audio, split.vision).prediction,
                       predict_arrays(model, split.text, zeroed, split.vision).prediction)  # fmt: skip
    with pytest.raises(ValueError, match="audio"):
        predict_arrays(model, split.text, split.audio[:, :, :2], split.vision)
    with pytest.raises(ValueError, match="vision holds 3 samples"):
        predict_arrays(model, split.text, split.audio, split.vision[:3])


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_bad_model_folder_is_one_line_without_a_traceback(tmp_path, command):
    import subprocess
    import sys

    argv = ["--model", tmp_path, "--data", tmp_path / "x.pkl"] if command == "predict" else [tmp_path]
    result = subprocess.run([sys.executable, "-m", "dmd_core.cli", command, *map(str, argv), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and str(tmp_path) in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
