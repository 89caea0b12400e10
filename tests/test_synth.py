"""dmd_core.synth: MMSA layout, determinism, the planted structure, readability by MMSA-style readers."""

from __future__ import annotations

import argparse
import hashlib
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from dmd_core.cli import synth as synth_cli
from dmd_core.config import FEATURE_DIMS, SEQ_LENS
from dmd_core.data import dump_mmsa, synth
from dmd_core.data.synth import SPLITS, SynthSpec, make_mmsa, synth_tokenizer, write_mmsa

SETTINGS = [("mosi", True), ("mosi", False), ("mosei", True), ("mosei", False)]
SMALL = (10, 4, 6)
SPLIT_KEYS = {"raw_text", "id", "text", "text_bert", "audio", "vision", "annotations", "classification_labels",
              "regression_labels"}  # fmt: skip


@pytest.fixture(scope="module")
def small_files() -> dict[tuple[str, bool], dict]:
    return {(d, a): make_mmsa(SynthSpec(dataset=d, aligned=a, sizes=SMALL, seed=3)) for d, a in SETTINGS}


@pytest.mark.parametrize("dataset,aligned", SETTINGS)
def test_every_setting_has_the_official_keys_dtypes_and_shapes(small_files, dataset, aligned):
    data = small_files[(dataset, aligned)]
    assert set(data) == {*SPLITS, "synth"}
    lt, lv, la = SEQ_LENS[(dataset, aligned)]
    _, dv, da = FEATURE_DIMS[dataset]
    for split, n in zip(SPLITS, SMALL):
        d = data[split]
        assert set(d) == SPLIT_KEYS | (set() if aligned else {"audio_lengths", "vision_lengths"})
        assert d["text"].shape == (n, lt, 768) and d["text"].dtype == np.float32
        assert d["text_bert"].shape == (n, 3, lt) and d["text_bert"].dtype == np.float32
        assert d["audio"].shape == (n, la, da) and d["audio"].dtype == np.float32
        assert d["vision"].shape == (n, lv, dv) and d["vision"].dtype == np.float32
        assert d["regression_labels"].shape == (n,) and d["regression_labels"].dtype == np.float32
        assert d["raw_text"].dtype.kind == "U" and d["id"].dtype.kind == "U"
        assert all("$_$" in i for i in d["id"])
        assert set(d["annotations"]) <= {"Negative", "Neutral", "Positive"}
        if dataset == "mosi":
            assert all(t == t.upper() for t in d["raw_text"])
        if not aligned:
            for key, total in (("audio_lengths", la), ("vision_lengths", lv)):
                assert isinstance(d[key], list) and all(isinstance(v, int) and 1 <= v <= total for v in d[key])


@pytest.mark.parametrize("dataset,aligned", SETTINGS)
def test_padding_is_zero_and_only_padded_audio_frames_hold_minus_inf(small_files, dataset, aligned):
    for split in SPLITS:
        d = small_files[(dataset, aligned)][split]
        mask = d["text_bert"][:, 1].astype(bool)
        n_tok = mask.sum(1)
        for key in ("audio", "vision"):
            x = d[key]
            if aligned:  # one frame per word piece, zero at [CLS], [SEP] and the tail
                t = np.arange(x.shape[1])[None]
                valid = mask & (t > 0) & (t < n_tok[:, None] - 1)
            else:
                valid = np.arange(x.shape[1])[None] < np.array(d[f"{key}_lengths"])[:, None]
            assert np.all(np.isfinite(x[valid])) and np.all(np.abs(x[valid]).sum(-1) > 0)
            padded = x[~valid]
            assert np.all((padded == 0) | (np.isneginf(padded) & (key == "audio") & (not aligned)))
        if not aligned:
            assert np.isneginf(d["audio"]).sum() >= 1
        else:
            assert np.all(np.isfinite(d["audio"]))
        assert np.abs(d["text"][~mask]).sum() > 0  # padded text positions are not zero, as in real files


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    spec = SynthSpec(dataset="mosi", aligned=False, sizes=(6, 2, 2), seed=11)
    a, b = write_mmsa(tmp_path / "a.pkl", spec), write_mmsa(tmp_path / "b.pkl", spec)
    c = write_mmsa(tmp_path / "c.pkl", spec.replace(seed=12))
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)}
    assert digest[a] == digest[b] != digest[c]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pkl", "b.pkl", "c.pkl"]  # no temporary files left


def test_written_file_equals_make_mmsa_and_uses_numpy1_names_only(tmp_path):
    spec = SynthSpec(dataset="mosei", aligned=True, sizes=(5, 2, 3), seed=4)
    path = write_mmsa(tmp_path / "f.pkl", spec)
    raw = path.read_bytes()
    globals_used = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert globals_used == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    loaded, made = pickle.loads(raw), make_mmsa(spec)
    for split in SPLITS:
        for key, value in made[split].items():
            np.testing.assert_array_equal(np.asarray(loaded[split][key]), np.asarray(value), err_msg=key)
    assert loaded["synth"]["spec"] == spec.to_dict()


def test_aligned_and_unaligned_files_of_one_seed_share_text_labels_and_ids(small_files):
    for dataset in ("mosi", "mosei"):
        a, u = small_files[(dataset, True)]["train"], small_files[(dataset, False)]["train"]
        for key in ("raw_text", "id", "text_bert", "text", "regression_labels"):
            np.testing.assert_array_equal(a[key], u[key])


def test_text_bert_is_the_wordpiece_tokenisation_of_raw_text(small_files):
    tok = synth_tokenizer()
    d = small_files[("mosei", False)]["test"]
    enc = tok(list(d["raw_text"]), padding="max_length", truncation=True, max_length=50)
    np.testing.assert_array_equal(d["text_bert"][:, 0], np.array(enc["input_ids"]))
    np.testing.assert_array_equal(d["text_bert"][:, 1], np.array(enc["attention_mask"]))
    assert np.all(d["text_bert"][:, 2] == 0) and np.all(d["text_bert"][:, 0, 0] == 101)
    n_tok = d["text_bert"][:, 1].sum(1).astype(int)
    assert np.all(d["text_bert"][np.arange(len(n_tok)), 0, n_tok - 1] == 102)
    pieces = tok.tokenize("heartwarming unwatchable cinematography zorblax")
    assert pieces[:5] == ["heart", "##warming", "un", "##watch", "##able"] and "[UNK]" not in pieces


def test_vocab_asset_is_build_vocab_with_bert_special_ids():
    vocab = (synth.VOCAB_DIR / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == synth.build_vocab() and len(vocab) == 30522
    assert {vocab[i]: i for i in (0, 100, 101, 102, 103)} == synth.SPECIAL_IDS
    assert vocab[1] == "[unused0]" and vocab[104] == "[unused99]"
    tok = synth_tokenizer()
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 100, 101, 102)


def test_text_features_depend_on_the_tokens_only_up_to_the_noise():
    spec = SynthSpec(sizes=(8, 2, 2), text_noise=0.0, seed=5)
    tokens = make_mmsa(spec)["train"]["text_bert"].astype(np.int64)
    tokens = np.concatenate([tokens, tokens[:1], tokens[:1]])  # the first sentence again, at other rows
    feats = synth._text_features(spec, synth._world(spec), "train", tokens)
    np.testing.assert_array_equal(feats[0], feats[-1])
    np.testing.assert_array_equal(feats[0], feats[-2])
    assert not np.allclose(feats[0], feats[1])
    noisy = synth._text_features(spec.replace(text_noise=0.1), synth._world(spec), "train", tokens)
    assert 0.05 < np.std(noisy[0] - feats[0]) < 0.15


def test_labels_lie_on_the_annotator_grid_with_a_few_exact_zeros():
    for dataset, steps in (("mosi", (3, 5)), ("mosei", (3,))):
        lat = synth._latent(SynthSpec(dataset=dataset), "train", 4000)
        y = lat.labels.astype(np.float64)
        on_grid = np.zeros(len(y), bool)
        for k in steps:
            on_grid |= np.isclose(y * k, np.round(y * k), atol=1e-5)
        assert on_grid.all() and y.min() >= -3 and y.max() <= 3
        assert 0.03 < np.mean(y == 0) < 0.12
        assert np.corrcoef(y, lat.z)[0, 1] > 0.9


def test_incongruent_words_are_unrelated_and_the_carrier_is_stronger():
    spec = SynthSpec(incongruent=0.3, incongruent_modality="A", seed=2)
    lat = synth._latent(spec, "train", 6000)
    inc = lat.incongruent
    assert 0.27 < inc.mean() < 0.33
    corr = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    assert abs(corr(lat.level[inc], lat.z[inc])) < 0.08 < 0.6 < corr(lat.level[~inc], lat.z[~inc])
    assert corr(lat.expressed[inc, 2], lat.z[inc]) > corr(lat.expressed[~inc, 2], lat.z[~inc]) + 0.3
    for m in range(3):  # exclusive factors carry no label information
        for k in range(spec.n_exclusive):
            assert abs(corr(lat.exclusive[:, m, k], lat.z)) < 0.05


def _pooled(split: dict) -> dict[str, np.ndarray]:
    mask = split["text_bert"][:, 1]
    out = {"L": (split["text"] * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)}
    for m, key in (("V", "vision"), ("A", "audio")):
        x = np.where(np.isfinite(split[key]), split[key], 0.0)
        if "audio_lengths" in split:
            valid = np.arange(x.shape[1])[None] < np.array(split[f"{key}_lengths"])[:, None]
        else:
            valid = np.abs(x).sum(-1) > 0
        out[m] = (x * valid[:, :, None]).sum(1) / valid.sum(1, keepdims=True)
    return out


def _ridge_r2(x_tr, y_tr, x_te, y_te, lam=30.0) -> float:
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y_tr - y_tr.mean()))
    pred = b @ w + y_tr.mean()
    return 1 - np.mean((pred - y_te) ** 2) / np.var(y_te)


@pytest.mark.parametrize(
    "strengths,order", [((1.5, 0.6, 0.4), "LVA"), ((0.2, 0.3, 1.0), "AVL")], ids=["default", "audio-carries"]
)
def test_linear_probe_per_modality_recovers_the_planted_strength_order(strengths, order):
    spec = SynthSpec(dataset="mosi", aligned=True, sizes=(700, 2, 500), strengths=strengths, seed=7)
    data = make_mmsa(spec)
    tr, te = _pooled(data["train"]), _pooled(data["test"])
    z = {s: data["synth"]["latent"][s]["factor"] for s in ("train", "test")}
    y = {s: data[s]["regression_labels"] for s in ("train", "test")}
    r2_label = {m: _ridge_r2(tr[m], y["train"], te[m], y["test"]) for m in "LVA"}
    r2_factor = {m: _ridge_r2(tr[m], z["train"], te[m], z["test"]) for m in "LVA"}
    assert sorted("LVA", key=lambda m: -r2_label[m]) == list(order), r2_label
    expected = spec.linear_r2()
    for m in "VA":  # frames average out: the probe reaches the analytic ceiling
        assert abs(r2_factor[m] - expected[m]) < 0.1, (m, r2_factor[m], expected[m])
    assert r2_factor["L"] < expected["L"] + 0.05


@pytest.mark.parametrize("dataset,aligned", SETTINGS)
def test_reference_style_reader_accepts_the_files_unchanged(small_files, tmp_path, dataset, aligned):
    """What the reference DMD loader does: pickle.load, float32 casts, -inf -> 0, per-sample dicts, collate."""
    path = dump_mmsa(small_files[(dataset, aligned)], tmp_path / "f.pkl")
    with open(path, "rb") as f:
        data = pickle.load(f)
    for use_bert in (False, True):
        for mode in SPLITS:
            d = data[mode]
            text = d["text_bert" if use_bert else "text"].astype(np.float32)
            vision, audio = d["vision"].astype(np.float32), d["audio"].astype(np.float32)
            labels = np.array(d["regression_labels"]).astype(np.float32)
            audio[audio == -np.inf] = 0
            assert all(np.isfinite(a).all() for a in (text, vision, audio, labels))
            seq = (text.shape[2] if use_bert else text.shape[1], audio.shape[1], vision.shape[1])
            lt, lv, la = SEQ_LENS[(dataset, aligned)]
            assert seq == (lt, la, lv)
            samples = []
            for i in range(3):
                s = {"raw_text": d["raw_text"][i], "text": torch.Tensor(text[i]), "audio": torch.Tensor(audio[i]),
                     "vision": torch.Tensor(vision[i]), "index": i, "id": d["id"][i],
                     "labels": {"M": torch.Tensor(labels[i].reshape(-1))}}  # fmt: skip
                if not aligned:
                    s["audio_lengths"], s["vision_lengths"] = d["audio_lengths"][i], d["vision_lengths"][i]
                samples.append(s)
            batch = default_collate(samples)
            assert batch["labels"]["M"].shape == (3, 1) and isinstance(batch["id"][0], str)


def cli_main(argv: list[str]) -> int:
    """``dmd synth`` through the same ``add_cli`` hook the ``dmd`` command uses."""
    parser = argparse.ArgumentParser(prog="dmd")
    synth_cli.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_synth_writes_the_file_and_help_explains_every_option(tmp_path, capsys):
    out = tmp_path / "cli.pkl"
    args = ["synth", "--dataset", "mosei", "--unaligned", "--sizes", "3", "2", "2", "--seed", "9",
            "--strengths", "0.2", "0.3", "1.0", "--incongruent", "0.2", "--out", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    data = pickle.loads(out.read_bytes())
    assert data["synth"]["spec"]["strengths"] == [0.2, 0.3, 1.0] and data["train"]["audio"].shape == (3, 500, 74)
    with pytest.raises(SystemExit):
        cli_main(["synth", "--help"])
    text = capsys.readouterr().out
    for option in ("--dataset", "--aligned", "--unaligned", "--scale", "--sizes", "--seed", "--strengths",
                   "--incongruent", "--incongruent-modality", "--exclusive", "--noise", "--out"):  # fmt: skip
        assert option in text


@pytest.mark.parametrize(
    "field,value",
    [("dataset", "iemocap"), ("strengths", (1.0, 0.5)), ("strengths", (1.0, -0.1, 0.2)), ("sizes", (10, 0, 5)),
     ("scale", 0.0), ("n_exclusive", 5), ("incongruent", 1.5), ("incongruent_modality", "L")],
)  # fmt: skip
def test_spec_rejects_invalid_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"SynthSpec.{field}"):
        SynthSpec(**{field: value})


def test_vocab_is_regenerated_when_the_asset_is_not_installed(tmp_path, monkeypatch):
    from dmd_core.data import synth_vocab

    monkeypatch.setattr(synth_vocab, "VOCAB_DIR", tmp_path / "absent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = synth_vocab.vocab_dir()
    assert folder == tmp_path / "cache" / "dmd_core" / "synth_wordpiece"
    assert (folder / "vocab.txt").read_text(encoding="utf-8").splitlines() == synth.build_vocab()


def test_scaled_sizes_and_spec_round_trip_through_dict():
    spec = SynthSpec(dataset="mosei", scale=0.01)
    assert spec.split_sizes == {"train": 163, "valid": 19, "test": 47}
    assert SynthSpec.from_dict(spec.to_dict()) == spec
    assert synth.default_path(spec) == Path("data/synth_mosei_aligned_50.pkl")
