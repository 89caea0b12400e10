"""dmd_core computes what the reference implementation computes (fixtures), and loads its weights."""

from __future__ import annotations

import json

import pytest
import torch

import dmd_core
from dmd_core import reference as R
from dmd_core.config import preset

from .conftest import DATA, tiny_config, tiny_inputs

ATOL, RTOL = 1e-5, 1e-4


def model_from_fixture(fx: dict) -> dmd_core.DMD:
    cfg = R.config_from_args(fx["official_args"], fx["setting"]["seq_lens_LVA"], fx["bert_config"])
    model = dmd_core.DMD(cfg)
    R.load_state_dict(model, fx["state_dict"], fx["homo_state_dict"], fx["hetero_state_dict"])
    return model


def probe_fixture(fx: dict) -> dict:
    inp = fx["inputs"]
    return R.probe(model_from_fixture(fx), inp["text"], inp["audio"], inp["vision"], inp["labels"])


def test_config_from_args_reads_the_fixture_setting(fixture):
    cfg = R.config_from_args(fixture["official_args"], fixture["setting"]["seq_lens_LVA"], fixture["bert_config"])
    s = fixture["setting"]
    assert (cfg.d, cfg.heads, cfg.nlevels) == (s["d"], s["heads"], s["nlevels"])
    assert cfg.seq_lens == tuple(s["seq_lens_LVA"])
    dim_l, dim_a, dim_v = s["feature_dims_LAV"]
    assert cfg.feature_dims == (dim_l, dim_v, dim_a)
    assert cfg.use_bert == s["bert"]


def test_every_forward_output_matches_the_reference(fixture):
    ours = probe_fixture(fixture)["outputs"]
    # The reference's projections of s_m (proj_s_*) feed no loss: dmd_core does not build them.
    assert set(ours) == set(fixture["outputs"]) - set(R.UNBUILT_OUTPUTS)
    for name, expected in fixture["outputs"].items():
        if name in R.UNBUILT_OUTPUTS:
            continue
        assert ours[name].shape == expected.shape, name
        torch.testing.assert_close(ours[name], expected, atol=ATOL, rtol=RTOL, msg=lambda m, name=name: f"{name}: {m}")


def test_both_gd_units_edges_and_losses_match_the_reference(fixture):
    ours = probe_fixture(fixture)["gd"]
    assert set(ours) == set(fixture["gd"])
    for name, expected in fixture["gd"].items():
        torch.testing.assert_close(ours[name], expected, atol=ATOL, rtol=RTOL, msg=lambda m, name=name: f"{name}: {m}")


def test_margin_and_orthogonality_losses_match_the_reference(fixture):
    ours = probe_fixture(fixture)
    torch.testing.assert_close(ours["margin_loss"], fixture["margin_loss"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(ours["ort_loss_batch_axis"], fixture["ort_loss_batch_axis"], atol=ATOL, rtol=RTOL)


def test_probe_leaves_the_model_in_training_mode_if_it_was():
    fx = torch.load(DATA / "fixtures" / "mosi_aligned_features.pt", weights_only=True)
    model = model_from_fixture(fx).train()
    inp = fx["inputs"]
    R.probe(model, inp["text"], inp["audio"], inp["vision"], inp["labels"])
    assert model.training


def test_every_reference_key_is_used_exactly_once(fixture):
    keys = list(fixture["state_dict"].keys())
    mapping, ignored, unknown = R.reference_name_map(keys)
    assert unknown == []
    assert sorted([*mapping, *ignored]) == sorted(keys), "a key is both mapped and ignored, or neither"
    # Ignored: value-less buffers, and the layers no loss uses (projections of s_m, BERT's pooler), not built.
    unbuilt = [k for k in keys if k.startswith(("proj_cosine_", "text_model.model.pooler."))]
    assert len(unbuilt) == (8 if fixture["setting"]["bert"] else 6)
    assert sorted(k for k in ignored if not k.endswith(("version", "_float_tensor"))) == sorted(unbuilt)
    targets = list(mapping.values())
    assert len(targets) == len(set(targets)), "two reference keys map to the same parameter"
    model = model_from_fixture(fixture)
    ours = {k for k in model.state_dict() if not k.startswith(("homo_gd.", "hetero_gd."))}
    assert set(targets) == ours


def _reference_state_dict(model: dmd_core.DMD) -> dict[str, torch.Tensor]:
    """Our weights under the reference's names (the name map run backwards), plus its value-less buffers."""
    inverse = {ours: ref for ref, ours in _all_reference_names(model).items()}
    sd = {inverse[k]: v.clone() for k, v in model.state_dict().items() if not k.startswith(("homo_gd", "hetero_gd"))}
    sd["trans_l_mem.version"] = torch.tensor([2.0])
    return sd


def _all_reference_names(model: dmd_core.DMD) -> dict[str, str]:
    """Build reference names for every parameter of ``model`` by running the prefix table backwards."""
    names = {}
    for ours in model.state_dict():
        if ours.startswith(("homo_gd", "hetero_gd")):
            continue
        matches = [(ref_p, our_p) for ref_p, our_p in R.PREFIXES.items() if ours.startswith(our_p)]
        ref_p, our_p = max(matches, key=lambda rp: len(rp[1]))
        names[ref_p + ours[len(our_p) :]] = ours
    return names


@pytest.mark.parametrize("dataset", ["mosi", "mosei"])
@pytest.mark.parametrize("aligned", [True, False])
def test_reference_state_dict_round_trip_for_every_official_preset(dataset, aligned):
    cfg = preset(dataset, aligned, d=12, heads=2, nlevels=1)  # official structure, smaller width
    source = dmd_core.DMD(cfg).eval()
    target = dmd_core.DMD(cfg).eval()
    R.load_state_dict(target, _reference_state_dict(source), source.homo_gd.state_dict(),
                      source.hetero_gd.state_dict())  # fmt: skip
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_state_dict_reports_the_keys_it_ignores_on_purpose(fixture, caplog):
    cfg = R.config_from_args(fixture["official_args"], fixture["setting"]["seq_lens_LVA"], fixture["bert_config"])
    with caplog.at_level("INFO", logger="dmd_core.reference"):
        ignored = R.load_state_dict(dmd_core.DMD(cfg), fixture["state_dict"])
    assert {"proj_cosine_l.weight", "proj_cosine_a.bias"} <= set(ignored)
    assert ("text_model.model.pooler.dense.weight" in ignored) == fixture["setting"]["bert"]
    assert "not built" in caplog.text


def test_load_state_dict_lists_every_unused_missing_and_misshapen_key():
    fx = torch.load(DATA / "fixtures" / "mosi_aligned_features.pt", weights_only=True)
    model = model_from_fixture(fx)
    sd = dict(fx["state_dict"])
    sd["extra_head.weight"] = torch.zeros(3)
    del sd["encoder_c.weight"]
    sd["proj1.bias"] = torch.zeros(7)
    with pytest.raises(KeyError) as err:
        R.load_state_dict(model, sd, fx["homo_state_dict"], fx["hetero_state_dict"])
    msg = str(err.value)
    assert "extra_head.weight" in msg and "shared.weight" in msg and "proj1.bias" in msg


def test_load_state_dict_rejects_a_gd_unit_state_dict_with_wrong_keys():
    fx = torch.load(DATA / "fixtures" / "mosi_aligned_features.pt", weights_only=True)
    model = model_from_fixture(fx)
    homo = dict(fx["homo_state_dict"])
    homo["W_extra.weight"] = homo.pop("W_edge.weight")
    with pytest.raises(KeyError, match="W_extra.weight"):
        R.load_state_dict(model, fx["state_dict"], homo, fx["hetero_state_dict"])


def test_load_state_dict_accepts_a_dataparallel_prefix():
    fx = torch.load(DATA / "fixtures" / "mosi_aligned_features.pt", weights_only=True)
    model = model_from_fixture(fx)
    R.load_state_dict(model, {f"module.{k}": v for k, v in fx["state_dict"].items()})


REFERENCE_CONFIG = {
    "datasetCommonParams": {
        "dataset_root_dir": "dataset",
        "mosi": {
            "aligned": {"featurePath": "MOSI/Processed/aligned_50.pkl", "seq_lens": [50, 50, 50],
                        "feature_dims": [768, 5, 20], "train_samples": 1284, "num_classes": 3,
                        "language": "en", "KeyEval": "Loss"},
            "unaligned": {"featurePath": "MOSI/Processed/unaligned_50.pkl", "seq_lens": [50, 50, 50],
                          "feature_dims": [768, 5, 20], "train_samples": 1284, "num_classes": 3,
                          "language": "en", "KeyEval": "Loss"},
        },
        "mosei": {
            "aligned": {"featurePath": "MOSEI/Processed/aligned_50.pkl", "seq_lens": [50, 50, 50],
                        "feature_dims": [768, 74, 35], "train_samples": 16326, "num_classes": 3,
                        "language": "en", "KeyEval": "Loss"},
            "unaligned": {"featurePath": "MOSEI/Processed/unaligned_50.pkl", "seq_lens": [50, 500, 375],
                          "feature_dims": [768, 74, 35], "train_samples": 16326, "num_classes": 3,
                          "language": "en", "KeyEval": "Loss"},
        },
    },
    "dmd": {
        "commonParams": {"need_data_aligned": True, "need_model_aligned": True, "early_stop": 10,
                         "use_bert": True, "use_finetune": True, "attn_mask": True, "update_epochs": 10},
        "datasetParams": {
            "mosi": {"attn_dropout_a": 0.2, "attn_dropout_v": 0.0, "relu_dropout": 0.0, "embed_dropout": 0.2,
                     "res_dropout": 0.0, "dst_feature_dim_nheads": [50, 10], "batch_size": 16,
                     "learning_rate": 0.0001, "nlevels": 4, "conv1d_kernel_size_l": 5, "conv1d_kernel_size_a": 5,
                     "conv1d_kernel_size_v": 5, "text_dropout": 0.5, "attn_dropout": 0.3, "output_dropout": 0.5,
                     "grad_clip": 0.6, "patience": 5, "weight_decay": 0.005, "transformers": "bert",
                     "pretrained": "bert-base-uncased"},
            "mosei": {"attn_dropout_a": 0.0, "attn_dropout_v": 0.0, "relu_dropout": 0.0, "embed_dropout": 0.0,
                      "res_dropout": 0.0, "dst_feature_dim_nheads": [30, 6], "batch_size": 16,
                      "learning_rate": 0.0001, "nlevels": 4, "conv1d_kernel_size_l": 5, "conv1d_kernel_size_a": 1,
                      "conv1d_kernel_size_v": 3, "text_dropout": 0.3, "attn_dropout": 0.4, "output_dropout": 0.5,
                      "grad_clip": 0.6, "patience": 5, "weight_decay": 0.001, "transformers": "bert",
                      "pretrained": "bert-base-uncased"},
        },
    },
}  # fmt: skip


@pytest.mark.parametrize("dataset", ["mosi", "mosei"])
@pytest.mark.parametrize("aligned", [True, False])
def test_config_from_json_gives_the_official_presets(tmp_path, dataset, aligned):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(REFERENCE_CONFIG))
    cfg = R.config_from_json(str(path), dataset, aligned)
    assert cfg == preset(dataset, aligned, bert="bert-base-uncased")
    train = R.train_config_from_args(R.reference_args(str(path), dataset, aligned))
    assert (train.batch_size, train.lr, train.accumulation, train.grad_clip, train.early_stop) == (
        16, 1e-4, 10, 0.6, 10)  # fmt: skip


def test_config_from_json_names_what_is_missing(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(REFERENCE_CONFIG))
    with pytest.raises(KeyError, match="sims"):
        R.config_from_json(str(path), "sims", True)


def test_margin_loss_definition_runs_on_a_tiny_model():
    cfg = tiny_config()
    text, audio, vision, labels = tiny_inputs(cfg)
    out = dmd_core.DMD(cfg).eval()(text, audio, vision)
    feats = torch.stack([out.decoupled.shared_sim[m] for m in "LVA"])
    from dmd_core.losses import margin_loss, margin_loss_definition

    torch.testing.assert_close(margin_loss(feats, labels), margin_loss_definition(feats, labels))
