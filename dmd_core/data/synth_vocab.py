"""The synthetic files' language: a small sentiment lexicon, sentence pieces and a WordPiece vocabulary.

The vocabulary has BERT's size and special ids (``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ...), so
token ids of a synthetic file look like a real MMSA file's; the sentiment words carry a polarity
(level / 3) that :mod:`dmd_core.data.synth` plants in the text features.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

LEXICON: dict[int, tuple[str, ...]] = {
    3: ("amazing", "excellent", "wonderful", "fantastic", "brilliant", "heartwarming"),
    2: ("good", "enjoyable", "entertaining", "fun", "great"),
    1: ("nice", "decent", "pleasant", "fine", "refreshing"),
    -1: ("slow", "dull", "predictable", "forgettable", "overrated"),
    -2: ("bad", "boring", "disappointing", "weak", "annoying"),
    -3: ("terrible", "awful", "horrible", "unwatchable", "painful"),
}
TOPICS = ("movie", "film", "story", "plot", "acting", "ending", "soundtrack", "script", "cinematography",
          "dialogue")  # fmt: skip
FILLERS = ("um", "uh", "so", "well", "like", "you know", "basically")
TIMES = ("yesterday", "last week", "last night", "this weekend", "a while ago", "on friday")
THINGS = ("a family", "a dog", "a war", "space travel", "first love", "a bank heist", "two brothers",
          "a small town", "zorblax the robot", "a haunted house")  # fmt: skip
INTENSIFIERS = {1: ("",), 2: ("", "really"), 3: ("really", "so", "absolutely", "incredibly")}
SENTIMENT_TEMPLATES = (
    "i thought the {topic} was {adj}",
    "the {topic} was {adj} {time}",
    "honestly it was {adj}",
    "i found the {topic} {adj}",
    "it was a {adj} {topic} about {thing}",
)
NEUTRAL_TEMPLATES = (
    "i watched the {topic} {time}",
    "it is a {topic} about {thing}",
    "the {topic} is about {thing}",
    "i saw the {topic} with my friends {time}",
)
# Words the vocabulary holds only as WordPiece pieces (greedy longest match splits them so).
_PIECES = ("heart", "##warming", "un", "##watch", "##able", "forget", "##table", "over", "##rated",
           "disappoint", "entertain", "##ing", "refresh", "cinema", "##tography")  # fmt: skip
_SPLIT_WORDS = {"heartwarming", "unwatchable", "forgettable", "overrated", "disappointing", "entertaining",
                "refreshing", "cinematography", "zorblax"}  # fmt: skip
_GRAMMAR_WORDS = ("i", "thought", "the", "was", "honestly", "it", "found", "a", "about", "watched", "is",
                  "saw", "with", "my", "friends", "and", "then", "there", "also", "again", "robot")  # fmt: skip
VOCAB_SIZE = 30522
SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
VOCAB_DIR = Path(__file__).parents[1] / "assets" / "synth_wordpiece"  # holds vocab.txt


def all_words() -> list[str]:
    words: set[str] = set(_GRAMMAR_WORDS)
    for group in (*LEXICON.values(), TOPICS, FILLERS, TIMES, THINGS, *INTENSIFIERS.values()):
        for phrase in group:
            words.update(phrase.split())
    return sorted(words - _SPLIT_WORDS)


def build_vocab() -> list[str]:
    """The synthetic WordPiece vocabulary: 30522 entries laid out like bert-base-uncased's.

    ``[PAD]`` 0, ``[unused0..98]`` 1-99, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102,
    ``[MASK]`` 103, ``[unused99..993]`` 104-998, then single characters and their ``##``
    continuations, the synthetic language's words and word pieces, and unused entries up to
    30522. ``assets/synth_wordpiece/vocab.txt`` is this list, one entry per line.
    """
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 994)]
    chars = list("!\"#$%&'()*+,-./0123456789:;<=>?@[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~")
    vocab += chars + ["##" + c for c in chars if c.isalnum()]
    vocab += [w for w in all_words() if w not in vocab]
    vocab += [p for p in _PIECES if p not in vocab]
    used = len(vocab)
    vocab += [f"[unused{i}]" for i in range(994, 994 + VOCAB_SIZE - used)]
    assert len(vocab) == VOCAB_SIZE and len(set(vocab)) == VOCAB_SIZE
    return vocab


def vocab_dir() -> Path:
    """Folder holding the synthetic ``vocab.txt`` (the packaged asset, or a regenerated copy)."""
    if (VOCAB_DIR / "vocab.txt").is_file():
        return VOCAB_DIR
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dmd_core" / "synth_wordpiece"
    if not (cache / "vocab.txt").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"vocab.txt.tmp{os.getpid()}"
        tmp.write_text("\n".join(build_vocab()) + "\n", encoding="utf-8")
        os.replace(tmp, cache / "vocab.txt")
    return cache


@lru_cache(maxsize=1)
def synth_tokenizer():
    """``transformers.BertTokenizer`` (real WordPiece, lower-casing) over the synthetic vocabulary.

    Loaded from a local folder holding only ``vocab.txt``; never touches the network.
    """
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(vocab_dir()), local_files_only=True, do_lower_case=True)


# ----------------------------------------------------------------------------- the specification


def n_real_vocab() -> int:
    """How many tokens of the vocabulary are real word pieces (the ``[unused]`` tail excluded)."""
    vocab = build_vocab()
    return max(i for i, tok in enumerate(vocab) if not tok.startswith("[unused")) + 1


@lru_cache(maxsize=1)
def token_polarity() -> np.ndarray:
    """Polarity (level / 3) of the token each sentiment word starts with; 0 for every other token."""
    tok = synth_tokenizer()
    vocab = build_vocab()
    index = {t: i for i, t in enumerate(vocab)}
    pol = np.zeros(n_real_vocab(), dtype=np.float32)
    starts: dict[str, float] = {}
    for level, words in LEXICON.items():
        for word in words:
            first = tok.tokenize(word)[0]
            if first in starts and starts[first] != level / 3:
                raise AssertionError(f"synth lexicon: token {first!r} starts words of different polarity")
            starts[first] = level / 3
            pol[index[first]] = level / 3
    neutral = [w for w in all_words() if not any(w in ws for ws in LEXICON.values())]
    for word in neutral:
        if tok.tokenize(word)[0] in starts:
            raise AssertionError(f"synth lexicon: neutral word {word!r} starts like a sentiment word")
    return pol
