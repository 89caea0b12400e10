"""Shareable models: DMD.save_pretrained / from_pretrained (huggingface_hub's mixin), `dmd export`, strict loading."""

from __future__ import annotations

import argparse
import json
import logging
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from dmd_core import DMD, BertSpec, TrainConfig, load_run, train_seeds
from dmd_core.cli import export as export_cli
from dmd_core.cli import predict as predict_cli
from dmd_core.evaluation import predict
from dmd_core.sharing import ModelUnavailableError, WeightsMismatchError, best_valid_loss, export_run

from .conftest import tiny_bert_text, tiny_config, tiny_inputs
from .test_train import one_thread, tiny_dataset  # noqa: F401  (autouse fixture)

SMALL_BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)  # fmt: skip


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
    _same_predictions(loaded, run.load_model("best"), ds["test"])
    # ... which is what the run wrote when it tested its best weights.
    assert predict(loaded, ds["test"]).prediction.tolist() == run.test_predictions["prediction"].tolist()

    # A chosen seed; and save_pretrained / from_pretrained round trip on their own.
    other = 3 - chosen
    export_run(run_dir, tmp_path / "other", seed=other)
    _same_predictions(DMD.from_pretrained(tmp_path / "other"), runs[other].load_model("best"), ds["valid"])


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


def _saved(tmp_path, **overrides) -> tuple[DMD, object]:
    model = DMD(tiny_config(**overrides)).eval()
    model.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


def test_from_pretrained_names_every_missing_unexpected_or_misshapen_tensor(tmp_path):
    _, folder = _saved(tmp_path)
    file = folder / "model.safetensors"
    state = load_file(file)
    state.pop("final_head.out.weight")
    state["extra.weight"] = torch.zeros(2)
    state["fusion_head.out.bias"] = torch.zeros(3)
    save_file(state, file)
    with pytest.raises(WeightsMismatchError) as err:
        DMD.from_pretrained(folder)
    message = str(err.value)
    for name in ("final_head.out.weight", "extra.weight", "fusion_head.out.bias (3,)"):
        assert name in message
    assert "1 missing tensors" in message and "1 unexpected tensors" in message and "wrong shape" in message

    # strict=False lets missing/unexpected tensors through (logged), never a wrong shape.
    state["fusion_head.out.bias"] = torch.zeros(1)
    save_file(state, file)
    with pytest.raises(WeightsMismatchError, match="final_head.out.weight"):
        DMD.from_pretrained(folder)
    assert DMD.from_pretrained(folder, strict=False) is not None


def test_from_pretrained_checks_the_config(tmp_path):
    model, folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert DMD.from_pretrained(folder).config == model.config

    (folder / "config.json").write_text(json.dumps({**config, "width": 3}))
    with pytest.raises(ValueError, match="width"):
        DMD.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 16}))
    with pytest.raises(ValueError, match="not a DMD config.*'bert'"):
        DMD.from_pretrained(folder)
    # A config that builds another network: the weights do not fit, and every misfit is named.
    (folder / "config.json").write_text(json.dumps({**config, "d": 12, "heads": 2}))
    with pytest.raises(WeightsMismatchError, match="wrong shape.*shared.weight"):
        DMD.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        DMD.from_pretrained(folder)


def test_a_model_with_bert_keeps_bert_in_the_same_folder_and_loads_without_it(tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**SMALL_BERT)).save_pretrained(tmp_path / "bert")
    model = DMD(tiny_config(bert=BertSpec(name_or_path=str(tmp_path / "bert")))).eval()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["bert"]["name_or_path"] is None and config["bert"]["config"]["hidden_size"] == 16
    assert any(k.startswith("text_encoder.bert.") for k in load_file(tmp_path / "m" / "model.safetensors"))

    for f in (tmp_path / "bert").iterdir():  # BERT's own folder is gone, and so is the hub
        f.unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = DMD.from_pretrained(tmp_path / "m")
    _, audio, vision, _ = tiny_inputs(model.config, batch=3)
    text = tiny_bert_text(model.config, 3)
    with torch.no_grad():
        assert torch.allclose(loaded(text, audio, vision).prediction, model(text, audio, vision).prediction, atol=1e-6)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_hub_id_without_network_fails_at_once_and_says_so(trained, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        DMD.from_pretrained("someone/dmd-mosi")
    assert time.perf_counter() - start < 5
    with pytest.raises(FileNotFoundError, match="no such folder"):
        DMD.from_pretrained(str(tmp_path / "missing" / "folder"))
    with caplog.at_level(logging.ERROR):
        assert dmd("predict", "--model", "someone/dmd-mosi", "--data", "x.pkl", "--out", tmp_path / "p.csv") == 2
    assert "hub cannot be reached" in caplog.text and "local folder" in caplog.text
    assert dmd("export", trained[0], "--out", tmp_path / "exp", "--push-to-hub", "someone/dmd-mosi") == 2
    assert not (tmp_path / "exp").exists()  # refused before anything was written
    model = DMD(tiny_config())
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="push to 'someone/dmd-mosi'.*cannot be reached"):
        model.push_to_hub("someone/dmd-mosi")
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        model.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="someone/dmd-mosi")
    assert time.perf_counter() - start < 5


def test_save_pretrained_writes_the_three_files_and_keeps_a_card_already_there(tmp_path):
    model, folder = _saved(tmp_path)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: dmd_core\nlicense: mit\n") and 'DMD.from_pretrained("m")' in card
    (folder / "README.md").write_text("my card\n")
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "my card\n"
    loaded = DMD.from_pretrained(folder)
    assert type(loaded) is DMD and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
