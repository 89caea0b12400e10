r"""Synthetic MOSI / MOSEI files in the exact MMSA layout, with a planted, documented structure.

``make_mmsa(SynthSpec(...))`` returns the dict that ``pickle.load`` gives for a real
``aligned_50.pkl`` / ``unaligned_50.pkl``; ``write_mmsa(path, spec)`` writes it
(atomically, streaming one array at a time). ``dmd synth`` is the command line.

Layout (identical to the MMSA files, the book's data-format page)
--------------------------------------------------------
Top level: ``train``, ``valid``, ``test`` and one extra key, ``synth`` (ignored by
MMSA readers), holding the generator's parameters and every latent variable. Per
split: ``raw_text`` (N,) str, ``id`` (N,) str ``"<video>$_$<clip>"``, ``text``
(N, 50, 768) float32, ``text_bert`` (N, 3, 50) float32 (ids, mask, segments),
``audio`` (N, T_a, d_a) float32, ``vision`` (N, T_v, d_v) float32,
``annotations`` (N,) str, ``classification_labels`` (N,) float32 (0/1/2,
deprecated), ``regression_labels`` (N,) float32, and in unaligned files
``audio_lengths`` / ``vision_lengths`` (lists of int, as MMSA's own length script
writes them). Sequence lengths and feature sizes are the official ones
(``config.SEQ_LENS``, ``config.FEATURE_DIMS``); split sizes default to the real
ones (MOSI 1284/229/686, MOSEI 16326/1871/4659) and scale down with ``scale``.
Arrays are pickled under NumPy-1 names (``numpy.core.multiarray._reconstruct``),
so NumPy 1.x and 2.x both read the files.

Planted structure (n a sample, m in {L, V, A}; all draws independent unless stated)
------------------------------------------------------------------------------------
* Sentiment factor ``z_n ~ N(0, 1)``; true sentiment ``s_n = clip(mu_D + sigma_D z_n, -3, 3)``
  (MOSI ``mu=0, sigma=1.5``; MOSEI ``mu=0.4, sigma=1.1``).
* Label: ``k_n`` annotators (MOSI 3 or 5, MOSEI 3) score
  ``r_nj = clip(round(s_n + tau eps_nj), -3, 3)``, ``tau = annotator_noise``; the label
  is their mean ``y_n = mean_j r_nj``: the real grids (MOSI fifths and thirds,
  MOSEI thirds), exact zeros included (about 7 %).
* Incongruent samples: ``iota_n ~ Bernoulli(incongruent)``.
* Expressed sentiment, one scalar per modality, with strengths ``beta = strengths``
  (L, V, A) and ``sigma_eta = expression_noise``:
  ``e_mn = beta_m z_n + sigma_eta eta_mn``. For an incongruent sample the words express an
  unrelated draw, ``e_Ln = beta_L z~_n + sigma_eta eta_Ln`` with ``z~_n ~ N(0, 1)``, and the
  carrier ``c = incongruent_modality`` (V or A) expresses the sentiment more strongly,
  ``e_cn = incongruent_strength * z_n + sigma_eta eta_cn``: there a non-language modality
  carries information the words do not.
* Modality-exclusive factors ``f_mnk ~ N(0, 1)``, ``k < n_exclusive``, independent of
  ``z`` and of each other: they carry no label information.
* Vision and audio frames (``u_m``, ``w_mk`` fixed orthonormal directions, ``mu_m`` a fixed
  offset, ``gamma = exclusive_strength``, ``sigma = frame_noise``):
  ``x_mnt = mu_m + e_mn u_m + gamma sum_k f_mnk w_mk + sigma eps_mnt`` on valid frames, 0
  elsewhere. Valid frames: aligned files, the word-piece positions (zero at ``[CLS]``,
  ``[SEP]`` and the tail padding, as MMSA's word-averaged files); unaligned files, the
  first ``len_mn = clip(round(r_m * words_n * exp(0.2 xi_mn)), 1, T_m)`` frames, with
  ``r_m = 0.3 T_m / 12`` frames per word. A few padded audio frames of unaligned files
  hold ``-inf`` (fraction ``neg_inf_fraction`` of samples), as COVAREP leaves them.
* Words: the sentiment level ``q_n = clip(round(kappa e_Ln), -3, 3)``,
  ``kappa = 1.5 / sqrt(beta_L^2 + sigma_eta^2)``, picks the adjective (``LEXICON``: level
  +-1 "nice"/"dull", +-2 "good"/"boring", +-3 "amazing"/"terrible", ...; level 0 a neutral
  sentence). Exclusive factors of L pick, by their normal quantile, the topic noun
  (k=0), the number of fillers "um", "uh", ... (k=1), the time phrase (k=2) and the plot
  phrase (k=3); word slots without a factor are drawn uniformly. MOSI text is upper case,
  MOSEI sentence case with a full stop. ``text_bert`` is the real WordPiece tokenisation
  of ``raw_text`` (``[CLS] ... [SEP]``, zero padding, mask, segments 0) with a
  bert-base-uncased-shaped vocabulary of 30522 entries (``assets/synth_wordpiece/vocab.txt``).
* Text features, a function of the tokens only (like BERT's last hidden state): for token
  ``w_nt``, ``h_nt = E[w_nt] + a p(w_nt) u_L + b (cbar_n + a pbar_n u_L) + P_t + sigma_T eps_nt``
  with ``E`` a fixed embedding per token id (``N(0, 0.5^2)`` per entry), ``p(w)`` the
  polarity of the sentiment word the token starts (level / 3, else 0), ``pbar_n`` the mean
  polarity of the sentence's sentiment tokens, ``cbar_n`` the mean of ``E`` over its real
  tokens (context), ``P_t`` a fixed position vector, ``a = 2``, ``b = 0.5``,
  ``sigma_T = text_noise``. Padded positions are not zero (``E[PAD]`` plus context).

What a model should find: each modality predicts ``z`` linearly at best with
``R^2_m = Cov(e_m, z)^2 / Var(e_m)`` (``SynthSpec.linear_r2``; language a little lower
because words quantise ``e_L``); with the defaults L > V > A; fusing modalities helps,
most on incongruent samples; the exclusive factors are what the private encoders may
keep and what should not reach the prediction.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MODALITIES
from .dataset import SPLITS  # noqa: F401  (the split names of a file, read here too)
from .pickles import LazyArray, dump_mmsa
from .synth_spec import SynthSpec  # the spec of a file; the formulas its fields enter are above
from .synth_vocab import (  # noqa: F401
    FILLERS,
    INTENSIFIERS,
    LEXICON,
    NEUTRAL_TEMPLATES,
    SENTIMENT_TEMPLATES,
    SPECIAL_IDS,
    THINGS,
    TIMES,
    TOPICS,
    VOCAB_DIR,
    VOCAB_SIZE,
    all_words,
    build_vocab,
    n_real_vocab,
    synth_tokenizer,  # fmt: skip
    token_polarity,
    vocab_dir,
)

log = logging.getLogger(__name__)


EXTRA_KEY = "synth"
FORMAT_VERSION = 1

# True sentiment s = clip(mu + sigma z, -3, 3); annotator counts and their probabilities.
_LABEL_MODEL = {
    "mosi": dict(mu=0.0, sigma=1.5, annotators=(3, 5), p=(0.3, 0.7)),
    "mosei": dict(mu=0.4, sigma=1.1, annotators=(3,), p=(1.0,)),
}
_CHUNK = 256  # samples per random stream for the large arrays (output does not depend on memory)
_WORDS_PER_SAMPLE = 12.0  # typical utterance, sets the frame rate of unaligned files
_TEXT_A, _TEXT_B, _EMBED_STD, _POS_STD = 2.0, 0.5, 0.5, 0.1


# ----------------------------------------------------------------------------- random streams


def _rng(spec: SynthSpec, *keys: str | int) -> np.random.Generator:
    """An independent stream per (seed, purpose, split, chunk): content never depends on call order."""
    words = [spec.seed & 0xFFFFFFFF, spec.seed >> 32]
    words += [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(words)


def _quantile_index(f: np.ndarray, n: int) -> np.ndarray:
    """Bin of each standard-normal value when N(0, 1) is cut into ``n`` equally likely bins."""
    cdf = 0.5 * (1.0 + np.frompyfunc(math.erf, 1, 1)(f / math.sqrt(2.0)).astype(np.float64))
    return np.minimum((cdf * n).astype(np.int64), n - 1)


def _orthonormal(rng: np.random.Generator, dim: int, k: int) -> np.ndarray:
    """``k`` orthonormal rows in ``dim`` dimensions."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, k)))
    return q.T.astype(np.float32)


@dataclass
class _World:
    """Fixed quantities of one file: directions, offsets, token embeddings, positions."""

    u: dict[str, np.ndarray]  # sentiment direction per modality (d_m,)
    w: dict[str, np.ndarray]  # exclusive directions (K, d_m) for V, A
    mu: dict[str, np.ndarray]  # offsets (d_m,) for V, A
    embed: np.ndarray  # (n_real_vocab, d_t)
    positions: np.ndarray  # (T_L, d_t)
    polarity: np.ndarray  # (n_real_vocab,) polarity of each token id


def _world(spec: SynthSpec) -> _World:
    rng = _rng(spec, "world")
    dims = dict(zip(MODALITIES, spec.feature_dims))
    u, w, mu = {}, {}, {}
    for m in ("V", "A"):
        basis = _orthonormal(rng, dims[m], 1 + spec.n_exclusive)
        u[m], w[m] = basis[0], basis[1:]
        mu[m] = (0.5 * rng.standard_normal(dims[m])).astype(np.float32)
    u["L"] = _orthonormal(rng, dims["L"], 1)[0]
    n_real = n_real_vocab()
    embed = (_EMBED_STD * rng.standard_normal((n_real, dims["L"]))).astype(np.float32)
    positions = (_POS_STD * rng.standard_normal((spec.seq_lens[0], dims["L"]))).astype(np.float32)
    return _World(u=u, w=w, mu=mu, embed=embed, positions=positions, polarity=token_polarity())


# ----------------------------------------------------------------------------- per-split generation


@dataclass
class _Latent:
    z: np.ndarray  # (N,) sentiment factor
    s: np.ndarray  # (N,) true sentiment in [-3, 3]
    labels: np.ndarray  # (N,) float32 on the annotators' grid
    incongruent: np.ndarray  # (N,) bool
    expressed: np.ndarray  # (N, 3) e_m, L V A
    exclusive: np.ndarray  # (N, 3, K) f_mk
    level: np.ndarray  # (N,) int, sentiment level of the words


def _latent(spec: SynthSpec, split: str, n: int) -> _Latent:
    rng = _rng(spec, "latent", split)
    lm = _LABEL_MODEL[spec.dataset]
    z = rng.standard_normal(n)
    s = np.clip(lm["mu"] + lm["sigma"] * z, -3, 3)
    k_max = max(lm["annotators"])
    k = rng.choice(np.array(lm["annotators"]), size=n, p=lm["p"])
    scores = np.clip(np.round(s[:, None] + spec.annotator_noise * rng.standard_normal((n, k_max))), -3, 3)
    scores[np.arange(k_max)[None, :] >= k[:, None]] = 0.0
    labels = (scores.sum(1) / k).astype(np.float32)
    incongruent = rng.random(n) < spec.incongruent
    z_other = rng.standard_normal(n)
    eta = spec.expression_noise * rng.standard_normal((n, 3))
    beta = np.array(spec.strengths)
    expressed = beta[None, :] * z[:, None] + eta
    carrier = MODALITIES.index(spec.incongruent_modality)
    expressed[incongruent, 0] = beta[0] * z_other[incongruent] + eta[incongruent, 0]
    expressed[incongruent, carrier] = spec.incongruent_strength * z[incongruent] + eta[incongruent, carrier]
    exclusive = rng.standard_normal((n, 3, spec.n_exclusive))
    kappa = 1.5 / math.sqrt(beta[0] ** 2 + spec.expression_noise**2) if beta[0] or spec.expression_noise else 0
    level = np.clip(np.round(kappa * expressed[:, 0]), -3, 3).astype(np.int64)
    return _Latent(z, s, labels, incongruent, expressed.astype(np.float32), exclusive.astype(np.float32), level)


def _sentences(spec: SynthSpec, split: str, lat: _Latent) -> list[str]:
    """Raw transcripts from the grammar; MOSI upper case, MOSEI sentence case."""
    n = len(lat.z)
    rng = _rng(spec, "words", split)
    f = lat.exclusive[:, 0, :]  # language's exclusive factors

    def pick(k: int, options: tuple[str, ...], size: int = n) -> np.ndarray:
        if k < spec.n_exclusive:
            return _quantile_index(f[:, k], len(options))
        return rng.integers(0, len(options), size)

    topic, time_i, thing = pick(0, TOPICS), pick(2, TIMES), pick(3, THINGS)
    n_fill = np.clip(np.round(1.0 + f[:, 1]), 0, 3).astype(int) if spec.n_exclusive > 1 else rng.integers(0, 3, n)
    fill_words = rng.integers(0, len(FILLERS), (n, 3))
    tmpl_s, tmpl_n = rng.integers(0, len(SENTIMENT_TEMPLATES), n), rng.integers(0, len(NEUTRAL_TEMPLATES), n)
    adj, adj2, topic2 = rng.integers(0, 100, n), rng.integers(0, 100, n), rng.integers(0, len(TOPICS), n)
    intens, second = rng.integers(0, 100, n), rng.random(n) < 0.3
    tail, tail_len, tail_things = rng.random(n) < 0.1, rng.integers(2, 13, n), rng.integers(0, len(THINGS), (n, 12))
    out = []
    for i in range(n):
        q = int(lat.level[i])
        slots = dict(topic=TOPICS[topic[i]], time=TIMES[time_i[i]], thing=THINGS[thing[i]])
        if q == 0:
            body = NEUTRAL_TEMPLATES[tmpl_n[i]].format(**slots)
        else:
            words = LEXICON[q]
            word = words[adj[i] % len(words)]
            boost = INTENSIFIERS[abs(q)][intens[i] % len(INTENSIFIERS[abs(q)])]
            body = SENTIMENT_TEMPLATES[tmpl_s[i]].format(adj=f"{boost} {word}".strip(), **slots)
            if second[i]:
                body += f" and the {TOPICS[topic2[i]]} was {words[adj2[i] % len(words)]}"
        fillers = " ".join(FILLERS[j] for j in fill_words[i, : n_fill[i]])
        text = f"{fillers} {body}".strip()
        if tail[i]:
            text += " and then there is " + " and ".join(THINGS[j] for j in tail_things[i, : tail_len[i]])
        if spec.dataset == "mosi":
            text = text.upper()
        else:
            text = (text[0].upper() + text[1:]).replace(" i ", " I ") + "."
        out.append(text)
    return out


def _tokenize(raw_text: list[str], length: int) -> np.ndarray:
    """``(N, 3, length)`` ids / attention mask / segments from the real WordPiece tokenizer."""
    unique, inverse = np.unique(np.array(raw_text), return_inverse=True)
    enc = synth_tokenizer()(list(unique), padding="max_length", truncation=True, max_length=length,
                            return_tensors="np")  # fmt: skip
    stacked = np.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]], axis=1)
    return stacked[inverse.reshape(-1)].astype(np.int64)


def _video_ids(spec: SynthSpec, split: str, n: int) -> list[str]:
    """``"<video>$_$<clip>"``: 11-character YouTube-like video ids, several clips per video."""
    rng = _rng(spec, "ids", split)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    mean_clips = 23.0 if spec.dataset == "mosi" else 7.0
    ids, clip, video = [], 0, ""
    for _ in range(n):
        if clip == 0 or rng.random() < 1.0 / mean_clips:
            video, clip = "".join(rng.choice(alphabet, 11)), 0
        clip += 1
        ids.append(f"{video}$_${clip}")
    return ids


def _frame_lengths(spec: SynthSpec, split: str, n_words: np.ndarray) -> dict[str, np.ndarray]:
    """Unaligned files: valid frames per sample, proportional to the number of words."""
    rng = _rng(spec, "lengths", split)
    out = {}
    for m, total in zip(("V", "A"), (spec.seq_lens[1], spec.seq_lens[2])):
        rate = 0.3 * total / _WORDS_PER_SAMPLE
        raw = rate * n_words * np.exp(0.2 * rng.standard_normal(len(n_words)))
        out[m] = np.clip(np.round(raw), 1, total).astype(np.int64)
    return out


def _valid_frames(spec: SynthSpec, tokens: np.ndarray, lengths: dict[str, np.ndarray] | None, m: str,
                  rows: slice) -> np.ndarray:  # fmt: skip
    """``(B, T_m)`` float32 1/0 mask of the frames that carry features."""
    if spec.aligned:
        mask = tokens[rows, 1].astype(bool)
        n_tok = mask.sum(1)
        t = np.arange(mask.shape[1])[None, :]
        return (mask & (t > 0) & (t < n_tok[:, None] - 1)).astype(np.float32)
    total = spec.seq_lens[MODALITIES.index(m)]
    return (np.arange(total)[None, :] < lengths[m][rows, None]).astype(np.float32)


def _frames(spec: SynthSpec, world: _World, split: str, m: str, lat: _Latent, tokens: np.ndarray,
            lengths: dict[str, np.ndarray] | None) -> np.ndarray:  # fmt: skip
    """Vision or audio ``(N, T_m, d_m)`` float32 (module docstring, 'Vision and audio frames')."""
    i = MODALITIES.index(m)
    n, total, dim = len(lat.z), spec.seq_lens[i], spec.feature_dims[i]
    out = np.empty((n, total, dim), dtype=np.float32)
    for c, start in enumerate(range(0, n, _CHUNK)):
        rows = slice(start, min(n, start + _CHUNK))
        rng = _rng(spec, "frames", m, split, c)
        mean = world.mu[m] + lat.expressed[rows, i, None] * world.u[m]
        if spec.n_exclusive:
            mean = mean + spec.exclusive_strength * lat.exclusive[rows, i] @ world.w[m]
        x = rng.standard_normal((rows.stop - start, total, dim), dtype=np.float32)
        x *= spec.frame_noise
        x += mean[:, None, :].astype(np.float32)
        x *= _valid_frames(spec, tokens, lengths, m, rows)[:, :, None]
        out[rows] = x
    return out


def _add_neg_inf(spec: SynthSpec, split: str, audio: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Put ``-inf`` into one padded frame of a few samples (COVAREP's artefact)."""
    rng = _rng(spec, "neginf", split)
    padded = np.flatnonzero(lengths < audio.shape[1])
    if not len(padded) or spec.neg_inf_fraction == 0:
        return audio
    count = max(1, round(spec.neg_inf_fraction * len(audio)))
    chosen = rng.choice(padded, size=min(count, len(padded)), replace=False)
    frames = rng.integers(lengths[chosen], audio.shape[1])
    audio[chosen, frames, rng.integers(0, audio.shape[2], len(chosen))] = -np.inf
    return audio


def _text_features(spec: SynthSpec, world: _World, split: str, tokens: np.ndarray) -> np.ndarray:
    """``(N, T_L, d_t)`` float32 text features, a function of the tokens (module docstring)."""
    n, length = tokens.shape[0], tokens.shape[2]
    out = np.empty((n, length, spec.text_dim), dtype=np.float32)
    u = world.u["L"]
    for c, start in enumerate(range(0, n, _CHUNK)):
        rows = slice(start, min(n, start + _CHUNK))
        ids, mask = tokens[rows, 0], tokens[rows, 1].astype(np.float32)
        emb = world.embed[ids]  # (B, T, d)
        pol = world.polarity[ids]  # (B, T)
        count = np.maximum(mask.sum(1, keepdims=True), 1.0)
        context = np.einsum("bt,btd->bd", mask, emb) / count  # (B, d)
        n_pol = (pol != 0).sum(1)
        pbar = np.where(n_pol > 0, pol.sum(1) / np.maximum(n_pol, 1), 0.0).astype(np.float32)  # (B,)
        x = emb
        x += (_TEXT_A * pol)[:, :, None] * u
        x += (_TEXT_B * (context + (_TEXT_A * pbar)[:, None] * u))[:, None, :]
        x += world.positions[None, :length]
        x += spec.text_noise * _rng(spec, "text", split, c).standard_normal(x.shape, dtype=np.float32)
        out[rows] = x
    return out


def _split(spec: SynthSpec, world: _World, split: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One split's MMSA dict (large arrays as :class:`LazyArray`) and its latent variables."""
    lat = _latent(spec, split, n)
    raw = _sentences(spec, split, lat)
    tokens = _tokenize(raw, spec.seq_lens[0])
    n_words = np.array([len(t.split()) for t in raw])
    lengths = None if spec.aligned else _frame_lengths(spec, split, n_words)

    def audio() -> np.ndarray:
        a = _frames(spec, world, split, "A", lat, tokens, lengths)
        return a if spec.aligned else _add_neg_inf(spec, split, a, lengths["A"])

    annotations = np.where(lat.labels > 0, "Positive", np.where(lat.labels < 0, "Negative", "Neutral"))
    data: dict[str, Any] = {
        "raw_text": np.array(raw),
        "audio": LazyArray(audio),
        "vision": LazyArray(lambda: _frames(spec, world, split, "V", lat, tokens, lengths)),
        "id": np.array(_video_ids(spec, split, n)),
        "text": LazyArray(lambda: _text_features(spec, world, split, tokens)),
        "text_bert": tokens.astype(np.float32),
        "annotations": annotations,
        "classification_labels": (np.sign(lat.labels) + 1).astype(np.float32),
        "regression_labels": lat.labels,
    }
    if lengths is not None:
        data["audio_lengths"] = [int(v) for v in lengths["A"]]
        data["vision_lengths"] = [int(v) for v in lengths["V"]]
    latent = {
        "factor": lat.z.astype(np.float32),
        "sentiment": lat.s.astype(np.float32),
        "expressed": lat.expressed,
        "exclusive": lat.exclusive,
        "incongruent": lat.incongruent,
        "text_level": lat.level.astype(np.int8),
    }
    return data, latent


def _build(spec: SynthSpec) -> dict[str, Any]:
    world = _world(spec)
    out: dict[str, Any] = {}
    latent = {}
    for split, n in spec.split_sizes.items():
        out[split], latent[split] = _split(spec, world, split, n)
    out[EXTRA_KEY] = {
        "generator": "dmd_core.synth",
        "version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "linear_r2": spec.linear_r2(),
        "modalities": list(MODALITIES),
        "latent": latent,
        "directions": {m: world.u[m] for m in MODALITIES},
    }
    return out


def make_mmsa(spec: SynthSpec) -> dict[str, Any]:
    """The MMSA dict (what ``pickle.load`` of a real file gives) for ``spec``, fully in memory."""

    def materialise(obj: Any) -> Any:
        if isinstance(obj, LazyArray):
            return obj.build()
        if isinstance(obj, dict):
            return {k: materialise(v) for k, v in obj.items()}
        return obj

    return materialise(_build(spec))


def write_mmsa(path: str | Path, spec: SynthSpec) -> Path:
    """Generate ``spec`` and write it to ``path`` (temporary file + rename; one large array in memory at a time)."""
    start = time.perf_counter()
    path = dump_mmsa(_build(spec), path)
    sizes = "/".join(str(v) for v in spec.split_sizes.values())
    log.info("wrote %s (%s %s, splits %s, %.1f MB) in %.1f s", path, spec.dataset,
             "aligned" if spec.aligned else "unaligned", sizes, path.stat().st_size / 1e6,
             time.perf_counter() - start)  # fmt: skip
    return path


def default_path(spec: SynthSpec) -> Path:
    return Path("data") / f"synth_{spec.dataset}_{'aligned' if spec.aligned else 'unaligned'}_50.pkl"


def iter_specs(dataset: Iterable[str] = ("mosi", "mosei"), **fields: Any) -> list[SynthSpec]:
    """Every (dataset, aligned) setting as a spec sharing ``fields`` (handy in tests and benchmarks)."""
    return [SynthSpec(dataset=d, aligned=a, **fields) for d in dataset for a in (True, False)]
