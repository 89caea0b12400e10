"""dmd_core.data: round trips, the broken-file table, cleaning, memory-mapping, batches, configs."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dmd_core.config import FEATURE_DIMS, SEQ_LENS, BertSpec
from dmd_core.data import DataFormatError, MMSADataset, dump_mmsa, load_mmsa
from dmd_core.data.synth import SPLITS, SynthSpec, make_mmsa
from dmd_core.model import DMD

SETTINGS = [("mosi", True), ("mosi", False), ("mosei", True), ("mosei", False)]
SIZES = (8, 3, 5)


@pytest.fixture(scope="module")
def base() -> dict[bool, dict]:
    """Small MOSI files, aligned (True) and unaligned (False), as dicts."""
    return {a: make_mmsa(SynthSpec(dataset="mosi", aligned=a, sizes=SIZES, seed=1)) for a in (True, False)}


def write(tmp_path: Path, data: dict, name: str = "f.pkl", protocol: int = 4) -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


def as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dataset,aligned", SETTINGS)
@pytest.mark.parametrize("text", ["features", "bert"])
def test_every_synthetic_setting_loads_validates_and_batches(tmp_path, dataset, aligned, text):
    spec = SynthSpec(dataset=dataset, aligned=aligned, sizes=SIZES, seed=2)
    path = dump_mmsa(make_mmsa(spec), tmp_path / "f.pkl")
    ds = load_mmsa(path, text=text)
    assert ds.aligned == aligned and ds.dataset_name == dataset and ds.text_mode == text
    assert ds.seq_lens == SEQ_LENS[(dataset, aligned)] and ds.feature_dims == FEATURE_DIMS[dataset]
    cfg = ds.suggest_config(bert=BertSpec(name_or_path=None, config=_tiny_bert()) if text == "bert" else None)
    assert cfg.seq_lens == ds.seq_lens and cfg.dataset == dataset and cfg.aligned == aligned
    ds = load_mmsa(path, config=cfg)  # "auto" follows the config, and the config's sizes are checked
    assert ds.text_mode == text
    (lt, lv, la), (dt, dv, da) = ds.seq_lens, ds.feature_dims
    for name, n in zip(SPLITS, SIZES):
        s = ds[name]
        assert len(s) == n and len(s.ids) == n and len(s.raw_text) == n and len(s.annotations) == n
        assert s.labels.dtype == torch.float32 and s.labels.shape == (n,)
        assert (s.audio_lengths is None) == aligned
        b = next(s.batches(4))
        expected_text = (min(4, n), 3, lt) if text == "bert" else (min(4, n), lt, dt)
        assert b.text.shape == expected_text and b.text.dtype == (torch.int64 if text == "bert" else torch.float32)
        assert b.audio.shape == (min(4, n), la, da) and b.vision.shape == (min(4, n), lv, dv)
        assert torch.isfinite(s.audio).all() and torch.isfinite(s.vision).all()


def _tiny_bert() -> dict:
    return dict(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=64)  # fmt: skip


def test_suggested_config_builds_a_dmd_that_runs_on_a_batch(tmp_path, base):
    path = dump_mmsa(base[True], tmp_path / "a.pkl")
    for bert in (None, BertSpec(name_or_path=None, config=_tiny_bert())):
        ds = load_mmsa(path, config=load_mmsa(path, text="bert" if bert else "features").suggest_config(bert=bert))
        cfg = ds.suggest_config(bert=bert, d=8, heads=2, nlevels=1)
        model = DMD(cfg).eval()
        b = next(ds["test"].batches(2))
        with torch.no_grad():
            out = model(b.text, b.audio, b.vision)
        assert out.prediction.shape == (2, 1) and torch.isfinite(out.prediction).all()


# ----------------------------------------------------------------------------- the broken-file table


def _set(split: str, key: str, fn: Callable) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data[split][key] = fn(data[split][key])

    return mutate


def _drop(split: str, *keys: str) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        for key in keys:
            del data[split][key]

    return mutate


def _tok(channel: int, value: float, split: str = "train") -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data[split]["text_bert"] = data[split]["text_bert"].copy()
        data[split]["text_bert"][1, channel, 2] = value

    return mutate


def _each(key: str, fn: Callable) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        for split in SPLITS:
            data[split][key] = fn(data[split][key])

    return mutate


def _each_drop(*keys: str) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        for split in SPLITS:
            _drop(split, *keys)(data)

    return mutate


def _empty(data: dict) -> None:
    data["test"] = {k: v[:0] for k, v in data["test"].items()}


def _with_config(**kw):
    from dmd_core.config import preset

    return preset("mosi", True, **kw)


# (case id, aligned base?, mutation (edits the dict, or returns what to pickle instead), load kwargs,
#  expected split, expected key, words expected in the message)
BROKEN = [
    ("top-level-list", True, lambda d: [d], {}, None, None, ["a dict with keys train/valid/test", "list"]),
    ("missing-split", True, lambda d: d.pop("valid") and None, {}, "valid", None, ["split 'valid'", "top-level"]),
    ("split-not-dict", True, lambda d: d.update(test=[1, 2]), {}, "test", None, ["a dict of arrays", "list"]),
    ("missing-audio", True, _drop("train", "audio"), {}, "train", "audio", ["this key"]),
    ("missing-labels", True, _drop("valid", "regression_labels"), {}, "valid", "regression_labels", ["this key"]),
    ("missing-text-for-features", True, _drop("train", "text"), {}, "train", "text", ["text='bert'"]),
    ("count-vision", True, _set("train", "vision", lambda v: v[:-1]), {}, "train", "vision", ["8 samples", "7"]),
    ("count-ids", True, _set("test", "id", lambda v: v[:-2]), {}, "test", "id", ["5 samples", "3"]),
    ("labels-2-columns", True, _set("train", "regression_labels", lambda v: np.stack([v, v], 1)), {}, "train",
     "regression_labels", ["(N,) or (N, 1)", "(8, 2)"]),
    ("nan-label", True, _set("valid", "regression_labels", lambda v: np.where(np.arange(len(v)) == 1, np.nan, v)),
     {}, "valid", "regression_labels", ["finite", "index 1"]),
    ("inf-label", True, _set("test", "regression_labels", lambda v: np.where(np.arange(len(v)) == 0, np.inf, v)),
     {}, "test", "regression_labels", ["finite", "index 0"]),
    ("empty-split", True, _empty, {}, "test", "regression_labels", ["at least one sample", "empty"]),
    ("audio-2d", True, _set("train", "audio", lambda v: v[:, :, 0]), {}, "train", "audio", ["3-D", "(8, 50)"]),
    ("audio-object", True, _set("train", "audio", lambda v: np.array([None] * len(v), dtype=object)), {}, "train",
     "audio", ["numeric", "object"]),
    ("feature-size-vs-config", True, _each("audio", lambda v: np.concatenate([v, v[:, :, :1]], 2)),
     {"config": _with_config()}, "train", "audio", ["feature size 5", "6"]),
    ("seq-len-vs-config", True, _each("vision", lambda v: v[:, :49]),
     {"config": _with_config()}, "train", "vision", ["sequence length 50", "49"]),
    ("shape-differs-between-splits", True, _set("test", "vision", lambda v: v[:, :, :19]), {}, "test", "vision",
     ["as in split 'train'", "(50, 19)"]),
    ("token-ids-not-integers", True, _tok(0, 1045.5), {"text": "bert"}, "train", "text_bert",
     ["integer token ids", "1045.5"]),
    ("token-id-beyond-vocab", True, _tok(0, 30522), {"text": "bert"}, "train", "text_bert", ["[0, 30522)", "30522"]),
    ("token-id-negative", True, _tok(0, -3), {"text": "bert"}, "train", "text_bert", ["[0, 30522)", "-3"]),
    ("token-beyond-small-vocab", True, _tok(0, 5000),
     {"config": _with_config(bert=BertSpec(name_or_path=None, config=dict(_tiny_bert(), vocab_size=1000)),
                             text_dim=16)}, "train", "text_bert", ["[0, 1000)", "5000"]),  # fmt: skip
    ("mask-not-binary", True, _tok(1, 2.0), {"text": "bert"}, "train", "text_bert", ["0/1", "2.0"]),
    ("segments-not-binary", True, _tok(2, 5.0), {"text": "bert"}, "train", "text_bert", ["segment", "5.0"]),
    ("text-bert-2-channels", True, _set("valid", "text_bert", lambda v: v[:, :2]), {"text": "bert"}, "valid",
     "text_bert", ["3 channels", "(3, 2, 50)"]),
    ("unaligned-without-lengths", False, _each_drop("audio_lengths", "vision_lengths"),
     {}, "train", "audio_lengths", ["unaligned", "(50, 500, 375)"]),
    ("only-audio-lengths", False, _drop("valid", "vision_lengths"), {}, "valid", "vision_lengths", ["both"]),
    ("lengths-in-one-split-only", False, _drop("test", "audio_lengths", "vision_lengths"), {}, "test",
     "audio_lengths", ["every split", "no lengths"]),
    ("length-zero", False, _set("train", "audio_lengths", lambda v: [0] + v[1:]), {}, "train", "audio_lengths",
     ["[1, 375]", "e.g. 0 at index 0"]),
    ("length-too-long", False, _set("test", "vision_lengths", lambda v: v[:-1] + [501]), {}, "test",
     "vision_lengths", ["[1, 500]", "501"]),
    ("length-not-integer", False, _set("valid", "audio_lengths", lambda v: np.array(v, float) + 0.5), {}, "valid",
     "audio_lengths", ["integer lengths"]),
]  # fmt: skip


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
@pytest.mark.parametrize("mmap", [False, True], ids=["memory", "mmap"])
def test_broken_file_raises_data_format_error_naming_file_split_and_key(tmp_path, base, case, mmap):
    _, aligned, mutate, kwargs, split, key, words = case
    data = copy.deepcopy(base[aligned])
    replaced = mutate(data)
    path = write(tmp_path, data if replaced is None else replaced, "broken.pkl")
    with pytest.raises(DataFormatError) as info:
        load_mmsa(path, mmap_dir=tmp_path / "cache" if mmap else None, **kwargs)
    err = info.value
    message = str(err)
    assert isinstance(err, ValueError) and str(path) in message and "expected" in message and "found" in message
    assert err.split == split and (split is None or f"split {split!r}" in message)
    assert err.key == key and (key is None or f"key {key!r}" in message)
    for word in words:
        assert word in message, (word, message)
    if mmap:  # nothing half-converted is left behind
        assert not any(p.name.startswith(".") for p in (tmp_path / "cache").glob("*"))


@pytest.mark.parametrize("content", [b"not a pickle at all\n", b"", "truncated"])
def test_unreadable_or_truncated_pickle_raises_data_format_error(tmp_path, base, content):
    path = tmp_path / "bad.pkl"
    if content == "truncated":
        full = write(tmp_path, base[True], "full.pkl").read_bytes()
        content = full[: len(full) // 2]
    path.write_bytes(content)
    for mmap_dir in (None, tmp_path / "cache"):
        with pytest.raises(DataFormatError, match="not a readable pickle or is truncated") as info:
            load_mmsa(path, mmap_dir=mmap_dir)
        assert str(path) in str(info.value)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = write(tmp_path, {"train": Evil()})
    with pytest.raises(DataFormatError, match="system"):
        load_mmsa(path)


def test_missing_file_is_file_not_found_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_mmsa(tmp_path / "nope.pkl")


# ----------------------------------------------------------------------------- tolerated variations and cleaning


def test_ids_as_numbers_labels_as_column_tokens_as_int_and_unknown_keys(tmp_path, base):
    data = copy.deepcopy(base[True])
    data["config"] = {"made_by": "MMSA-FET"}
    for i, name in enumerate(SPLITS):
        n = len(data[name]["regression_labels"])
        data[name]["id"] = np.arange(n) * (1.0 if i else 1)  # floats in valid/test, ints in train
        data[name]["regression_labels"] = data[name]["regression_labels"].reshape(-1, 1)
        data[name]["text_bert"] = data[name]["text_bert"].astype(np.int64)
        data[name]["regression_labels_T"] = np.zeros(n)  # CH-SIMS-style extra key, ignored
    ds = load_mmsa(write(tmp_path, data), text="bert")
    assert ds["train"].ids[:3] == ["0", "1", "2"] and ds["valid"].ids[:2] == ["0", "1"]
    assert ds["train"].labels.shape == (SIZES[0],)
    assert set(ds.extra) == {"config", "synth"} and ds.extra["config"] == {"made_by": "MMSA-FET"}


def test_nonfinite_features_become_zero_are_counted_and_the_source_is_untouched(tmp_path, base):
    data = copy.deepcopy(base[False])
    data["train"]["vision"][0, 0, :3] = [np.nan, np.inf, -np.inf]
    data["valid"]["text"][1, 4, 7] = np.nan
    n_neg_inf = int(np.isneginf(data["train"]["audio"]).sum())
    assert n_neg_inf >= 1  # the synthetic unaligned audio holds -inf in padded frames
    path = write(tmp_path, data)
    before, mtime = sha(path), path.stat().st_mtime_ns
    for mmap_dir in (None, tmp_path / "cache"):
        ds = load_mmsa(path, mmap_dir=mmap_dir)
        vision = as_numpy(ds["train"].vision)
        assert np.array_equal(vision[0, 0, :3], np.zeros(3))
        assert float(as_numpy(ds["valid"].text)[1, 4, 7]) == 0.0
        assert ds.stats["train"]["nonfinite_replaced"]["vision"] == {"nan": 1, "posinf": 1, "neginf": 1}
        assert ds.stats["train"]["nonfinite_replaced"]["audio"]["neginf"] == n_neg_inf
        assert ds.stats["valid"]["nonfinite_replaced"]["text"]["nan"] == 1
        for split in ds.splits.values():
            for x in (split.text, split.audio, split.vision):
                assert np.isfinite(as_numpy(x)).all()
    assert sha(path) == before and path.stat().st_mtime_ns == mtime


def test_ch_sims_shaped_file_loads_and_is_recognised(tmp_path):
    rng = np.random.default_rng(0)

    def split(n: int) -> dict:
        return {"raw_text": np.array(["x"] * n), "id": np.array([f"v$_${i}" for i in range(n)]),
                "text": rng.standard_normal((n, 39, 768)).astype(np.float32),
                "text_bert": np.stack([np.full((n, 39), 101), np.ones((n, 39)), np.zeros((n, 39))], 1),
                "audio": rng.standard_normal((n, 400, 33)).astype(np.float32),
                "vision": rng.standard_normal((n, 55, 709)).astype(np.float32),
                "audio_lengths": [400] * n, "vision_lengths": [55] * n,
                "regression_labels": rng.uniform(-1, 1, n).astype(np.float32),
                "regression_labels_T": np.zeros(n), "regression_labels_A": np.zeros(n),
                "regression_labels_V": np.zeros(n), "annotations": np.array(["Neutral"] * n)}  # fmt: skip

    ds = load_mmsa(write(tmp_path, {s: split(3) for s in SPLITS}), text="bert")
    assert ds.dataset_name == "sims" and ds.seq_lens == (39, 55, 400) and ds.feature_dims == (768, 709, 33)
    assert ds.suggest_config(bert=None).feature_dims == (768, 709, 33)


def test_protocol5_float64_file_converts_to_float32_memory_maps(tmp_path, base, monkeypatch):
    from dmd_core.data import pickles

    monkeypatch.setattr(pickles, "SPILL_MIN_BYTES", 1024)  # spill even these small arrays
    data = copy.deepcopy(base[False])
    for s in SPLITS:
        data[s]["audio"] = data[s]["audio"].astype(np.float64)
        data[s]["vision"] = np.asfortranarray(data[s]["vision"])
    path = write(tmp_path, data, protocol=5)
    ds = load_mmsa(path, mmap_dir=tmp_path / "cache")
    mem = load_mmsa(path)
    for s in SPLITS:
        assert isinstance(ds[s].audio, np.memmap) and ds[s].audio.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(ds[s].audio), mem[s].audio.numpy())
        np.testing.assert_array_equal(np.asarray(ds[s].vision), mem[s].vision.numpy())
        np.testing.assert_array_equal(np.asarray(ds[s].text), mem[s].text.numpy())
    assert not list((tmp_path / "cache").rglob("spill*"))


# ----------------------------------------------------------------------------- the memory-mapped cache


def test_mmap_cache_is_reused_then_rebuilt_when_the_source_changes(tmp_path, base, caplog):
    path = dump_mmsa(base[True], tmp_path / "f.pkl")
    cache = tmp_path / "cache"
    caplog.set_level("INFO", logger="dmd_core.data")
    first = load_mmsa(path, mmap_dir=cache)
    second = load_mmsa(path, mmap_dir=cache)
    assert sum("converting" in r.message for r in caplog.records) == 1
    (folder,) = [p for p in cache.iterdir()]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["size"] == path.stat().st_size and set(manifest["splits"]) == set(SPLITS)
    np.testing.assert_array_equal(np.asarray(first["train"].text), np.asarray(second["train"].text))
    changed = copy.deepcopy(base[True])
    changed["train"]["regression_labels"] = changed["train"]["regression_labels"] + 1
    dump_mmsa(changed, path)
    os.utime(path, ns=(manifest["mtime_ns"] + 10**9, manifest["mtime_ns"] + 10**9))
    third = load_mmsa(path, mmap_dir=cache)
    assert sum("converting" in r.message for r in caplog.records) == 2
    assert torch.equal(third["train"].labels, first["train"].labels + 1)
    assert [p.name for p in cache.iterdir()] == [folder.name]


def test_mmap_and_in_memory_loading_give_identical_batches(tmp_path, base):
    path = dump_mmsa(base[False], tmp_path / "f.pkl")
    mem, mm = load_mmsa(path, text="bert"), load_mmsa(path, text="bert", mmap_dir=tmp_path / "c")
    assert isinstance(mm["train"].audio, np.memmap) and isinstance(mem["train"].audio, torch.Tensor)
    for shuffle in (False, True):
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        for a, b in zip(mem["train"].batches(3, shuffle, g1), mm["train"].batches(3, shuffle, g2), strict=True):
            for x, y in zip(a, b):
                assert torch.equal(x, y)
    assert torch.equal(mm["train"].audio_lengths, mem["train"].audio_lengths)
    assert mm["valid"].ids == mem["valid"].ids and mm["valid"].raw_text == mem["valid"].raw_text


# ----------------------------------------------------------------------------- batches, subsets, devices


def test_shuffled_batches_are_reproducible_and_cover_the_split_once(tmp_path, base):
    ds = load_mmsa(dump_mmsa(base[True], tmp_path / "f.pkl"))
    s = ds["train"]

    def order(seed: int | None, **kw) -> list[int]:
        g = None if seed is None else torch.Generator().manual_seed(seed)
        return torch.cat([b.index for b in s.batches(3, shuffle=True, generator=g, **kw)]).tolist()

    assert order(1) == order(1) != order(2)
    assert sorted(order(1)) == list(range(len(s)))
    assert len(order(1, drop_last=True)) == 6 and s.num_batches(3, drop_last=True) == 2 and s.num_batches(3) == 3
    b = next(s.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(b.audio, s.audio[b.index]) and torch.equal(b.labels, s.labels[b.index])
    plain = list(s.batches(5))
    assert [len(x.index) for x in plain] == [5, 3] and plain[1].index.tolist() == [5, 6, 7]


def test_subset_and_to_keep_every_field_aligned(tmp_path, base):
    ds = load_mmsa(dump_mmsa(base[False], tmp_path / "f.pkl"), mmap_dir=tmp_path / "c")
    s = ds["train"]
    sub = s.subset([4, 1])
    assert sub.ids == [s.ids[4], s.ids[1]] and sub.raw_text == [s.raw_text[4], s.raw_text[1]]
    assert torch.equal(sub.audio, torch.from_numpy(np.asarray(s.audio)[[4, 1]]))
    assert torch.equal(sub.vision_lengths, s.vision_lengths[[4, 1]])
    moved = ds.to("cpu")
    assert isinstance(moved, MMSADataset) and isinstance(moved["test"].text, torch.Tensor)
    assert torch.equal(moved["test"].text, torch.from_numpy(np.array(ds["test"].text)))
    with pytest.raises(IndexError):
        s.subset([len(s)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_match_cpu_batches(tmp_path, base):
    ds = load_mmsa(dump_mmsa(base[True], tmp_path / "f.pkl"))
    on_gpu = ds["train"].to("cuda")
    for cpu, via_pin, resident in zip(ds["train"].batches(3), ds["train"].batches(3, device="cuda"),
                                      on_gpu.batches(3)):  # fmt: skip
        for x, y, z in zip(cpu[:4], via_pin[:4], resident[:4]):
            assert y.is_cuda and z.is_cuda and torch.equal(x, y.cpu()) and torch.equal(x, z.cpu())


def test_text_mode_must_agree_with_config(tmp_path, base):
    path = dump_mmsa(base[True], tmp_path / "f.pkl")
    cfg = load_mmsa(path).suggest_config()
    with pytest.raises(ValueError, match="config.bert"):
        load_mmsa(path, text="bert", config=cfg)
    with pytest.raises(ValueError, match="text must be"):
        load_mmsa(path, text="glove")
