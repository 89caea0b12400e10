"""The DMD module: shapes, gradients, devices, BERT loading, configuration."""

from __future__ import annotations

import pathlib

import pytest
import torch

import dmd_core
from dmd_core.config import BertSpec, DMDConfig, preset
from dmd_core.losses import total_loss
from dmd_core.text_encoder import BertUnavailableError

from .conftest import tiny_bert_text, tiny_config, tiny_inputs

SMALL_BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)  # fmt: skip


def test_output_shapes_follow_the_spec():
    cfg = tiny_config()
    text, audio, vision, labels = tiny_inputs(cfg, batch=5)
    out = dmd_core.DMD(cfg)(text, audio, vision)
    d, B = cfg.d, 5
    assert out.prediction.shape == (B, 1) and out.logit_c.shape == (B, 1)
    assert out.homo.logits.shape == (3, B, 1) and out.homo.reprs.shape == (3, B, d)
    assert out.hetero.logits.shape == (3, B, 1) and out.hetero.reprs.shape == (3, B, 2 * d)
    assert out.homo_graph.edges.shape == (6, B) and out.hetero_graph.edges.shape == (6, B)
    torch.testing.assert_close(out.homo_graph.edges.sum(0), torch.ones(B))
    for m, t in zip("LVA", cfg.conv_lens):
        for name in ("x", "private", "shared", "recon", "private_cycle"):
            assert getattr(out.decoupled, name)[m].shape == (B, d, t), (name, m)
        assert out.decoupled.shared_sim[m].shape == (B, d)


def test_gradients_reach_every_parameter_some_loss_depends_on():
    cfg = tiny_config()
    text, audio, vision, labels = tiny_inputs(cfg, batch=5)  # odd batch: L1 signs cannot cancel
    torch.manual_seed(0)
    model = dmd_core.DMD(cfg).train()
    total_loss(model, model(text, audio, vision), labels).total.backward()
    # W_edge's bias shifts all six edge scores alike; the softmax over edges cancels it, so no loss depends on it.
    shift_invariant = {"homo_gd.W_edge.bias", "hetero_gd.W_edge.bias"}
    for name, p in model.named_parameters():
        if name in shift_invariant:
            assert p.grad is None or p.grad.abs().max() < 1e-6, name
        else:
            assert p.grad is not None, f"no gradient reaches {name}"
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


def test_projection_is_skipped_when_the_input_already_has_width_d():
    cfg = tiny_config(feature_dims=(16, 8, 4))  # vision width == d
    model = dmd_core.DMD(cfg).eval()
    text, audio, vision, _ = tiny_inputs(cfg)
    assert cfg.conv_lens[1] == cfg.seq_lens[1]
    out = model(text, audio, vision)
    torch.testing.assert_close(out.decoupled.x["V"], vision.transpose(1, 2))


def test_eval_forward_is_deterministic_and_train_forward_uses_dropout():
    cfg = tiny_config()
    text, audio, vision, _ = tiny_inputs(cfg)
    model = dmd_core.DMD(cfg)
    model.eval()
    torch.testing.assert_close(model(text, audio, vision).prediction, model(text, audio, vision).prediction)
    model.train()
    assert not torch.allclose(model(text, audio, vision).prediction, model(text, audio, vision).prediction)


def test_one_state_dict_holds_the_network_and_both_gd_units():
    keys = dmd_core.DMD(tiny_config()).state_dict().keys()
    assert any(k.startswith("homo_gd.W_edge") for k in keys) and any(k.startswith("hetero_gd.W_edge") for k in keys)


def test_model_with_bert_from_a_config_takes_token_ids():
    cfg = tiny_config(feature_dims=(16, 6, 4), bert=BertSpec(name_or_path=None, config=SMALL_BERT))
    model = dmd_core.DMD(cfg).eval()
    B = 3
    text = tiny_bert_text(cfg, B)
    _, audio, vision, _ = tiny_inputs(cfg, batch=B)
    assert model(text, audio, vision).prediction.shape == (B, 1)


def test_bert_loads_from_a_local_folder(tmp_path):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(**SMALL_BERT))
    bert.save_pretrained(tmp_path / "bert")
    cfg = tiny_config(bert=BertSpec(name_or_path=str(tmp_path / "bert")))
    model = dmd_core.DMD(cfg)
    for (name, a), b in zip(bert.state_dict().items(), model.text_encoder.bert.state_dict().values()):
        assert torch.equal(a, b), name


def test_nothing_the_losses_do_not_use_is_built_bert_pooler_and_projections_of_s(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**SMALL_BERT)).save_pretrained(tmp_path / "bert")  # a checkpoint with a pooler
    for spec in (BertSpec(name_or_path=None, config=SMALL_BERT), BertSpec(name_or_path=str(tmp_path / "bert"))):
        model = dmd_core.DMD(tiny_config(bert=spec))
        names = [n for n, _ in model.named_parameters()]
        assert not any("pooler" in n for n in names), spec
        assert not any(n.startswith("private_proj") for n in names)


def test_checkpoints_of_earlier_versions_with_the_unbuilt_layers_still_load():
    cfg = tiny_config(bert=BertSpec(name_or_path=None, config=SMALL_BERT))
    model = dmd_core.DMD(cfg)
    old = dict(model.state_dict())
    old["private_proj.L.weight"] = torch.zeros(cfg.d, cfg.d * cfg.conv_lens[0])
    old["text_encoder.bert.pooler.dense.weight"] = torch.zeros(16, 16)
    model.load_state_dict(old)
    with pytest.raises(RuntimeError, match="other.weight"):
        model.load_state_dict({**old, "other.weight": torch.zeros(1)})


def test_unavailable_bert_fails_at_once_with_advice(monkeypatch, tmp_path, connections):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BertUnavailableError, match="local folder") as err:
        dmd_core.DMD(tiny_config(bert=BertSpec(name_or_path="bert-base-uncased")))
    assert "text features" in str(err.value)
    assert connections == []  # offline: not one connection attempt


def test_unreachable_hub_fails_at_once_without_download_retries(monkeypatch, tmp_path, connections):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(BertUnavailableError, match="127.0.0.1"):
        dmd_core.DMD(tiny_config(bert=BertSpec(name_or_path="bert-base-uncased")))
    assert connections == [("127.0.0.1", 9)]  # one probe of the hub, no download retries


def test_bert_spec_needs_exactly_one_source():
    with pytest.raises(ValueError):
        BertSpec(name_or_path=None, config=None)
    with pytest.raises(ValueError):
        BertSpec(name_or_path="x", config=SMALL_BERT)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_on_cuda_runs_forward_and_backward():
    cfg = tiny_config()
    text, audio, vision, labels = (t.cuda() for t in tiny_inputs(cfg))
    model = dmd_core.DMD(cfg).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        parts = total_loss(model, model(text, audio, vision), labels)
    parts.total.backward()
    assert torch.isfinite(parts.total)


def test_cpu_autocast_bf16_forward_runs():
    cfg = tiny_config()
    text, audio, vision, labels = tiny_inputs(cfg)
    model = dmd_core.DMD(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = total_loss(model, model(text, audio, vision), labels)
    assert torch.isfinite(parts.total)


def test_the_package_never_hardcodes_cuda():
    root = pathlib.Path(dmd_core.__file__).parent
    for path in root.rglob("*.py"):
        assert ".cuda(" not in path.read_text(), f"{path} calls .cuda(); move tensors with .to(device)"


@pytest.mark.parametrize("dataset,aligned", [("mosi", True), ("mosi", False), ("mosei", True), ("mosei", False)])
def test_official_presets_follow_the_spec_table(dataset, aligned):
    cfg = preset(dataset, aligned)
    table = {
        "mosi": dict(d=50, heads=10, nlevels=4, kernel_sizes=(5, 5, 5), text_dropout=0.5, attn_dropout=0.3,
                     attn_dropout_a=0.2, attn_dropout_v=0.0, embed_dropout=0.2, relu_dropout=0.0, res_dropout=0.0,
                     output_dropout=0.5, feature_dims=(768, 20, 5)),
        "mosei": dict(d=30, heads=6, nlevels=4, kernel_sizes=(5, 3, 1), text_dropout=0.3, attn_dropout=0.4,
                      attn_dropout_a=0.0, attn_dropout_v=0.0, embed_dropout=0.0, relu_dropout=0.0, res_dropout=0.0,
                      output_dropout=0.5, feature_dims=(768, 35, 74)),
    }[dataset]  # fmt: skip
    for key, value in table.items():
        assert getattr(cfg, key) == value, key
    lens = {("mosi", True): (50, 50, 50), ("mosi", False): (50, 500, 375),
            ("mosei", True): (50, 50, 50), ("mosei", False): (50, 500, 500)}  # fmt: skip
    assert cfg.seq_lens == lens[(dataset, aligned)]
    assert cfg.ort_axis == "batch" and cfg.homo_repr_in_total is False and cfg.bert is None


def test_mosei_preset_forward_runs_at_official_shapes():
    cfg = preset("mosei", True)
    model = dmd_core.DMD(cfg).eval()
    B = 2
    out = model(torch.randn(B, 50, 768), torch.randn(B, 50, 74), torch.randn(B, 50, 35))
    assert out.prediction.shape == (B, 1)
    assert [out.decoupled.x[m].shape[-1] for m in "LVA"] == [46, 48, 50]


def test_config_round_trips_through_a_dict():
    cfg = preset("mosi", False, bert=BertSpec(name_or_path=None, config=SMALL_BERT), ort_axis="feature")
    assert DMDConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "changes,match",
    [(dict(d=10, heads=3), "divisible"), (dict(seq_lens=(4, 50, 50)), "shorter than kernel"),
     (dict(ort_axis="time"), "ort_axis"), (dict(homo_prior=(1, 0)), "homo_prior"),
     (dict(kernel_sizes=(5, 5)), "kernel_sizes")],
)  # fmt: skip
def test_invalid_configs_are_rejected_with_the_field_named(changes, match):
    with pytest.raises(ValueError, match=match):
        DMDConfig(**changes)
