"""The model folder: DMD.save_pretrained / from_pretrained / push_to_hub (huggingface_hub's mixin, dmd_core.hub).

Strict loading names every tensor at fault, the config is checked, BERT travels in the same folder, a hub id
fails at once offline, and folders written before keep loading (same files).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dmd_core import DMD, BertSpec
from dmd_core.hub import ModelUnavailableError, WeightsMismatchError

from .conftest import tiny_bert_text, tiny_config, tiny_inputs

SMALL_BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)  # fmt: skip


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


def test_a_hub_id_without_network_fails_at_once_and_says_so(tmp_path, monkeypatch, connections):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        DMD.from_pretrained("someone/dmd-mosi")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        DMD.from_pretrained(str(tmp_path / "missing" / "folder"))
    model = DMD(tiny_config())
    with pytest.raises(ModelUnavailableError, match="push to 'someone/dmd-mosi'.*cannot be reached"):
        model.push_to_hub("someone/dmd-mosi")
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        model.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="someone/dmd-mosi")
    assert connections == []  # offline: not one connection attempt, so no retries either


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
