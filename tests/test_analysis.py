"""What the chapters compute: settings and run reuse, data summaries, probes, similarities, attention, edges."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import dmd_book as book  # the chapters' helpers (book/dmd_book/): settings, prose, tables
from dmd_core import analysis
from dmd_core.config import TrainConfig, preset
from dmd_core.distill import EDGE_NAMES, GraphDistillation
from dmd_core.model import DMD

TINY = dict(d=8, heads=2, nlevels=1)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("book-work")


@pytest.fixture(scope="module")
def settings(work) -> book.BookSettings:
    return book.BookSettings(work_dir=str(work), scale=0.02, epochs=1, seeds=[7, 8], lr=1e-3, accumulation=1,
                                 **TINY)  # fmt: skip


@pytest.fixture(scope="module")
def data_file(settings) -> Path:
    return settings.data_file()


@pytest.fixture(scope="module")
def ds(settings, data_file):
    return settings.load(data_file)


# --------------------------------------------------------------------------- settings


def test_paper_scale_restores_the_recipe_full_data_and_five_seeds():
    s = book.BookSettings(paper_scale=True, d=16, nlevels=1, lr=1e-3, accumulation=1, epochs=3, scale=0.1, threads=1)
    assert (s.scale, s.epochs, s.d, s.heads, s.nlevels, s.lr, s.accumulation) == (
        1.0,
        None,
        None,
        None,
        None,
        None,
        None,
    )
    assert s.seeds == TrainConfig().seeds and s.threads is None
    tc = s.train_config()
    assert (tc.lr, tc.accumulation, tc.max_epochs) == (1e-4, 10, None)


def test_settings_from_notebook_parameters_ignore_other_names():
    s = book.BookSettings.from_namespace({"device": "cpu", "seeds": [1, 2], "epochs": None, "plt": object()})
    assert s.device == "cpu" and s.seeds == (1, 2) and s.epochs is None


def test_settings_reject_bad_scale_and_empty_seeds():
    with pytest.raises(ValueError, match="scale"):
        book.BookSettings(scale=0)
    with pytest.raises(ValueError, match="seeds"):
        book.BookSettings(seeds=[])


def test_train_config_maps_epochs_and_keeps_the_recipe_where_unset():
    tc = book.BookSettings(epochs=5, lr=None, accumulation=None, seeds=[3]).train_config()
    assert (tc.max_epochs, tc.lr, tc.accumulation, tc.seeds) == (5, 1e-4, 10, (3,))


def test_model_config_applies_the_size_overrides(settings, ds):
    cfg = settings.model_config(ds)
    assert (cfg.d, cfg.heads, cfg.nlevels) == (8, 2, 1)
    assert cfg.seq_lens == ds.seq_lens and cfg.bert is None
    assert book.BookSettings().model_config(ds).d == preset("mosi").d


def test_synthetic_file_is_written_once_and_variants_are_separate_files(settings, data_file):
    mtime = data_file.stat().st_mtime_ns
    assert settings.data_file() == data_file and data_file.stat().st_mtime_ns == mtime
    audio = settings.data_file("audio", strengths=(0.4, 0.6, 1.5))
    assert audio != data_file and audio.is_file()
    assert settings.data_file("audio", strengths=(0.4, 0.6, 1.5)) == audio


def test_a_real_data_path_is_used_as_given_and_must_exist(tmp_path, data_file):
    assert book.BookSettings(data_path=str(data_file)).data_file() == data_file
    with pytest.raises(FileNotFoundError, match="data_path"):
        book.BookSettings(data_path=str(tmp_path / "missing.pkl")).data_file()


def test_mmap_dir_loads_memory_mapped_arrays(settings, data_file, tmp_path):
    ds = settings.replace(mmap_dir=str(tmp_path / "mmap")).load(data_file)
    assert isinstance(ds["train"].audio, np.ndarray) and any((tmp_path / "mmap").rglob("*.npy"))


def test_run_dir_names_change_with_the_model_train_config_and_data_but_not_the_seeds(settings, ds, data_file):
    cfg, tc = settings.model_config(ds), settings.train_config()
    base = settings.run_dir("training", cfg, data_file, tc)
    assert base == settings.run_dir("training", cfg, data_file, tc.replace(seeds=(1,)))
    assert base.name.startswith("training-")
    assert base != settings.run_dir("training", cfg.replace(homo_prior=(0.0,) * 6), data_file, tc)
    assert base != settings.run_dir("training", cfg, data_file, tc.replace(max_epochs=2))
    assert base != settings.run_dir("training", cfg, data_file.with_name("other.pkl"), tc)


def test_a_run_is_trained_once_then_read_back_by_every_later_caller(settings, ds, data_file, monkeypatch):
    cfg, tc = settings.model_config(ds), settings.train_config()
    run = settings.single_run("training", cfg, data_file, tc, progress=False)
    assert run.seed == 7 and run.test_metrics is not None
    assert run.path.parent == settings.run_dir("training", cfg, data_file, tc)

    import dmd_core.seeds

    calls = []
    real = dmd_core.seeds.train_runs
    monkeypatch.setattr(dmd_core.seeds, "train_runs", lambda *a, **k: pytest.fail("trained a finished run again"))
    assert settings.single_run("training", cfg, data_file, tc, progress=False).path == run.path
    monkeypatch.setattr(
        dmd_core.seeds, "train_runs", lambda jobs, *a, **k: calls.append(len(jobs)) or real(jobs, *a, **k)
    )
    seeds = settings.seed_runs("training", cfg, data_file, tc, progress=False)
    assert sorted(seeds.runs) == [7, 8] and calls == [1]  # only the missing seed 8 needed training
    assert json.loads((seeds.path / "summary.json").read_text())["seeds"] == [7, 8]
    assert settings.seed_runs("training", cfg, data_file, tc, progress=False).path == seeds.path
    assert calls == [1]


# --------------------------------------------------------------------------- chapter 1


def test_describe_mmsa_lists_every_key_of_every_split(data_file):
    table = analysis.describe_mmsa(data_file)
    assert set(table["split"]) == {"train", "valid", "test"}
    train = table.query("split == 'train'").set_index("key")
    for key in ("raw_text", "id", "text", "text_bert", "audio", "vision", "regression_labels"):
        assert key in train.index
    assert train.loc["text_bert", "shape"][1:] == (3, 50)
    assert "to" in train.loc["regression_labels", "values"]


def test_real_data_table_holds_the_official_split_sizes():
    table = book.real_data_table()
    assert tuple(table.loc[("MOSI", "aligned_50"), ["train", "valid", "test"]]) == (1284, 229, 686)
    assert tuple(table.loc[("MOSEI", "unaligned_50"), ["train", "valid", "test"]]) == (16326, 1871, 4659)


def test_layout_example_shows_fixed_and_own_lengths(settings):
    norms = book.layout_example(settings)
    assert {len(v) for v in norms["aligned_50"].values()} == {50}
    assert [len(norms["unaligned_50"][m]) for m in "LVA"] == [50, 500, 375]
    assert norms["aligned_50"]["A"][0] == 0  # [CLS] position is zero in aligned files


def test_synth_parameters_report_the_planted_strengths(ds):
    table = book.synth_parameters(ds)
    assert table.loc["strengths", "value"] == str((1.5, 0.6, 0.4))
    assert "best linear R^2, L" in table.index


def test_unimodal_probes_recover_the_planted_order_language_vision_audio(work):
    from dmd_core.data import load_mmsa
    from dmd_core.data.synth import SynthSpec, write_mmsa

    path = write_mmsa(work / "probe.pkl", SynthSpec(sizes=(500, 10, 400), text_dim=32, seed=3))
    ds = load_mmsa(path)
    probes = analysis.unimodal_probes(ds["train"], ds["test"])
    assert list(probes.index) == ["L", "V", "A", "all"]
    corr = probes["Corr"]
    assert corr["L"] > corr["V"] > corr["A"]
    assert analysis.ranking(corr.drop("all")) == "language > vision > audio"
    assert probes.loc["all", "MAE"] < probes.loc["A", "MAE"]


def test_pooled_features_refuse_token_ids(settings, data_file):
    ds = settings.load(data_file, text="bert")
    with pytest.raises(ValueError, match="token ids"):
        analysis.pooled_features(ds["train"], "L")


# --------------------------------------------------------------------------- chapter 2


def test_feature_similarity_is_a_symmetric_cosine_table_with_unit_diagonal(settings, ds):
    torch.manual_seed(0)
    model = DMD(settings.model_config(ds))
    feats = analysis.decoupled_features(model, ds["test"], max_samples=9, batch_size=4)
    assert list(feats) == ["c_L", "c_V", "c_A", "s_L", "s_V", "s_A"]
    assert feats["c_L"].shape == (9, 8)
    table = analysis.feature_similarity(feats)
    np.testing.assert_allclose(np.diag(table), 1.0, atol=1e-5)
    np.testing.assert_allclose(table.to_numpy(), table.to_numpy().T, atol=1e-6)
    expected = F.cosine_similarity(feats["c_L"], feats["s_V"], dim=1).mean().item()
    assert table.loc["c_L", "s_V"] == pytest.approx(expected)
    cross = analysis.cross_modal_similarity(table)
    assert cross["shared"] == pytest.approx(np.mean([table.loc["c_L", "c_V"], table.loc["c_L", "c_A"],
                                                     table.loc["c_V", "c_A"]]))  # fmt: skip
    model.train()
    projected = analysis.decoupled_features(model, ds["test"], max_samples=4, view="projected")
    assert projected["c_A"].shape == (4, 8) and "s_A" not in projected  # s_m has no projection (not built)
    assert model.training  # the caller's mode is restored
    with pytest.raises(ValueError, match="view"):
        analysis.decoupled_features(model, ds["test"], view="raw")


def test_shape_table_and_toy_decoupled(settings, ds):
    cfg = settings.model_config(ds)
    model = DMD(cfg).eval()
    batch = next(ds["test"].batches(3))
    with torch.no_grad():
        dec = model.decouple(batch.text, batch.audio, batch.vision)
    table = book.shape_table(dec, cfg)
    assert table.loc["L", "shared c"] == (3, 8, cfg.conv_lens[0]) and table.loc["A", "T_m"] == cfg.conv_lens[2]
    toy = book.toy_decoupled(torch.ones(2, 3, 1), torch.zeros(2, 3, 1))
    assert toy.private["V"].shape == (2, 3, 1) and toy.shared["A"].sum() == 0


# --------------------------------------------------------------------------- chapter 3


def test_attention_weights_are_what_the_attention_layer_applies():
    cfg = preset("mosi", True, text_dim=12, d=8, heads=1, nlevels=1, seq_lens=(10, 12, 9))
    torch.manual_seed(0)
    model = DMD(cfg).eval()
    text, audio, vision = torch.randn(2, 10, 12), torch.randn(2, 9, 5), torch.randn(2, 12, 20)
    weights = analysis.attention_weights(model, text, audio, vision, target="L", source="A")
    t_l, t_a = cfg.conv_lens[0], cfg.conv_lens[2]
    assert weights.shape == (2, t_l, t_a)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, t_l))
    offset = abs(t_a - t_l)
    assert weights[:, 0, 1 + offset :].abs().max() == 0  # masked keys get no weight

    attn = model.cross["LA"].layers[0].self_attn
    seen = {}
    hooks = [attn.register_forward_pre_hook(lambda m, a: seen.update(value=a[2])),
             attn.register_forward_hook(lambda m, a, out: seen.update(out=out))]  # fmt: skip
    with torch.no_grad():
        model(text, audio, vision)
    for h in hooks:
        h.remove()
    v = F.linear(seen["value"], attn.in_proj_weight[16:], attn.in_proj_bias[16:]).transpose(0, 1)  # (B, Tk, d)
    rebuilt = attn.out_proj(weights @ v).transpose(0, 1)  # (Tq, B, d)
    torch.testing.assert_close(rebuilt, seen["out"], atol=1e-5, rtol=1e-4)


def test_gd_unit_table_contrasts_the_two_units():
    model = DMD(preset("mosi", True, text_dim=12, d=8, heads=2, nlevels=1))
    table = book.gd_unit_table(model)
    assert table.loc["prior favours", "HomoGD"] == "L->V, L->A"
    assert table.loc["prior favours", "HeteroGD"] == "L->V, L->A, V->A"
    assert table.loc["representation size H", "HeteroGD"] == 16
    assert table.loc["representation loss in total", "HomoGD"] is False


# --------------------------------------------------------------------------- chapter 4


def test_recipe_table_and_note_name_every_departure_from_the_recipe(settings, ds):
    cfg, tc = settings.model_config(ds), settings.train_config()
    table = book.recipe_table(cfg, tc, preset("mosi"))
    assert table.loc["learning rate", "this run"] == "0.001"
    assert table.loc["learning rate", "reference code's recipe"] == "0.0001"
    note = book.recipe_note(settings, cfg, tc)
    assert "smaller model" in note and "every mini-batch" in note and "at most 1 epoch;" in note
    official = book.BookSettings(paper_scale=True)
    assert "follows the reference code's recipe" in book.recipe_note(official, preset("mosi"), official.train_config())


def test_published_table_quotes_the_papers_numbers_in_a_table_of_their_own():
    table = book.published_table()
    assert list(table.index) == ["MOSI", "MOSEI"] and list(table.columns) == ["Acc-7", "Acc-2", "F1"]
    assert table.loc["MOSI", "Acc-2"] == 86.0 and table.loc["MOSEI", "Acc-7"] == 54.5
    assert list(book.published_table("mosi").index) == ["MOSI"]
    with pytest.raises(ValueError, match="mosi or mosei"):
        book.published_table("iemocap")


def test_honest_note_says_synthetic_numbers_are_not_comparable():
    assert "say nothing about how DMD compares" in book.honest_note(book.BookSettings())
    assert "data_path" in book.honest_note(book.BookSettings(data_path="x.pkl"))


# --------------------------------------------------------------------------- chapter 5


def _predictions(n: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": [str(i) for i in range(n)], "label": [-2.0, -0.4, 0.0, 0.0, 1.2, 3.0][:n]})
    for branch in analysis.BRANCHES:
        w = rng.dirichlet(np.ones(6), n)
        for k, edge in enumerate(EDGE_NAMES):
            frame[f"{branch}_{edge}"] = w[:, k]
    return frame


def test_edge_history_reads_the_trainers_columns():
    history = pd.DataFrame({"epoch": [1, 2]})
    for k, edge in enumerate(EDGE_NAMES):
        history[f"train_homo_{edge}"] = [1 / 6, k / 10]
        history[f"valid_homo_{edge}"] = [0.0, 0.0]
    frame = analysis.edge_history(history, "homo")
    assert list(frame.columns) == list(EDGE_NAMES) and list(frame.index) == [1, 2]
    assert frame.loc[2, "L->V"] == pytest.approx(0.2)
    assert analysis.edge_history(history, "homo", split="valid").to_numpy().sum() == 0
    with pytest.raises(KeyError, match="train_hetero_V->L"):
        analysis.edge_history(history, "hetero")
    with pytest.raises(ValueError, match="branch"):
        analysis.edge_history(history, "both")


def test_mean_edges_and_edges_by_class_average_the_right_samples():
    preds = _predictions()
    mean = analysis.mean_edges(preds, "hetero")
    assert mean.sum() == pytest.approx(1.0)
    table = analysis.edges_by_class(preds, "homo")
    assert list(table.index) == ["negative", "neutral", "positive"] and list(table["n"]) == [2, 2, 2]
    assert table.loc["neutral", "L->A"] == pytest.approx(preds["homo_L->A"].iloc[2:4].mean())
    assert analysis.class_spread(table) == pytest.approx(
        (table[list(EDGE_NAMES)].max() - table[list(EDGE_NAMES)].min()).max()
    )
    seven = analysis.edges_by_class(preds, "homo", classes=7)
    assert list(seven.index) == ["-2", "0", "1", "3"]


def test_sentiment_classes_follow_the_sign_and_the_rounded_score():
    y = np.array([-3.0, -0.2, 0.0, 0.5, 2.6])
    assert list(analysis.sentiment_class(y)) == ["negative", "negative", "neutral", "positive", "positive"]
    assert list(analysis.sentiment_class(y, 7)) == ["-3", "0", "0", "0", "3"]
    with pytest.raises(ValueError):
        analysis.sentiment_class(y, 5)


def test_teacher_mass_prior_and_excess():
    uniform = pd.Series(1 / 6, index=list(EDGE_NAMES))
    assert analysis.teacher_mass(uniform, "L") == pytest.approx(1 / 3)
    cfg = preset("mosi")
    prior = analysis.prior_weights(cfg, "homo")
    unit_prior = GraphDistillation.homo(cfg).prior
    torch.testing.assert_close(torch.tensor(prior.to_numpy(), dtype=torch.float32), unit_prior)
    assert analysis.teacher_mass(prior, "L") == pytest.approx(2 * float(prior["L->V"]))
    assert analysis.excess_left(0.9, 1 / 3) == pytest.approx(0.0)
    assert analysis.excess_left(0.9, 0.9) == pytest.approx(1.0)
    assert np.isnan(analysis.excess_left(1 / 3, 0.5))


def test_edge_summary_and_comparison_collect_every_run():
    runs = {name: SimpleNamespace(test_predictions=_predictions(seed=i), test_metrics={"Non0_acc_2": 0.8, "MAE": 0.7})
            for i, name in enumerate(["language carries, paper prior", "language carries, uniform prior",
                                      "audio carries, paper prior", "audio carries, uniform prior"])}  # fmt: skip
    summary = analysis.edge_summary(runs, source="test")
    assert summary.shape == (4, 8)
    np.testing.assert_allclose(summary[[f"homo {m}" for m in "LVA"]].sum(axis=1), 1.0)
    assert summary["Acc-2 (%)"].iloc[0] == pytest.approx(80.0)
    comparison = analysis.EdgeComparison.from_runs(runs, "homo", source="test")
    np.testing.assert_allclose(comparison.teacher_mass()["A"], summary["homo A"])


def test_final_edges_are_the_last_epochs_validation_means():
    history = pd.DataFrame({"epoch": [1, 2]})
    for k, edge in enumerate(EDGE_NAMES):
        history[f"valid_homo_{edge}"] = [1 / 6, k / 15]
        history[f"train_homo_{edge}"] = [1 / 6, 0.0]
    run = SimpleNamespace(history=history, test_predictions=_predictions())
    assert analysis.final_edges(run)["L->A"] == pytest.approx(4 / 15)
    assert analysis.run_edges(run, "homo", "test").sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="source"):
        analysis.run_edges(run, "homo", "best")


def test_edge_discrepancy_pairs_each_edges_weight_with_its_logit_gap(settings, ds):
    torch.manual_seed(0)
    model = DMD(settings.model_config(ds)).eval()
    table = analysis.edge_discrepancy(model, ds["test"], "hetero", batch_size=5)
    assert list(table.index) == list(EDGE_NAMES)
    assert table["mean weight"].sum() == pytest.approx(1.0, abs=1e-5)
    batch = next(ds["test"].batches(len(ds["test"])))
    with torch.no_grad():
        out = model(batch.text, batch.audio, batch.vision)
    logits = out.hetero.logits.squeeze(-1)  # (3, N) L, V, A
    assert table.loc["L->V", "mean |logit difference|"] == pytest.approx(
        float((logits[1] - logits[0]).abs().mean()), rel=1e-5
    )
