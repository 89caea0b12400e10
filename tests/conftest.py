"""Shared test helpers: tiny configs and the reference fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before dmd_core is imported (dmd_core.threads reads it at import): module- and session-scoped fixtures that
# train and evaluate must not depend on the load either (see fixed_evaluation_threads).
os.environ["DMD_THREADS"] = "fixed"

import pytest  # noqa: E402
import torch  # noqa: E402

from dmd_core.config import DMDConfig  # noqa: E402

DATA = Path(__file__).parent / "data"
FIXTURES = DATA / "fixtures"
FIXTURE_NAMES = ("mosi_aligned_features", "mosi_aligned_bert", "mosi_unaligned_features")


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


@pytest.fixture(autouse=True)
def fixed_evaluation_threads(monkeypatch):
    """Evaluation keeps the thread count it finds (``DMD_THREADS=fixed``, here and in subprocesses).

    By default it follows the cores other processes leave free (dmd_core.threads), and PyTorch's last
    bits depend on the thread count: tests that compare two runs bit for bit must not depend on how
    busy the machine is. tests/test_threads.py turns the fitting back on.
    """
    import dmd_core.threads

    monkeypatch.setenv("DMD_THREADS", "fixed")
    monkeypatch.setattr(dmd_core.threads, "POLICY", "fixed")


@pytest.fixture
def threads():
    """Restores the process's torch thread count after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> DMDConfig:
    """A small DMD (d=8, 2 heads, 1 level) on short sequences; fast enough for any unit test."""
    fields = dict(
        seq_lens=(12, 10, 9), feature_dims=(16, 6, 4), d=8, heads=2, nlevels=1, kernel_sizes=(3, 2, 1),
    )  # fmt: skip
    fields.update(overrides)
    return DMDConfig(**fields)


def tiny_inputs(cfg: DMDConfig, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    (lt, lv, la), (dt, dv, da) = cfg.seq_lens, cfg.feature_dims
    text = torch.randn(batch, lt, dt, generator=g)
    vision = torch.randn(batch, lv, dv, generator=g)
    audio = torch.randn(batch, la, da, generator=g)
    audio[:, -2:] = 0  # zero tails, as padded data has
    labels = torch.tensor([-1.0, 0.0, 1.6, 1.6, 2.2, -0.4, 0.0, 3.0])[:batch].reshape(-1, 1)
    return text, audio, vision, labels


def tiny_bert_text(cfg: DMDConfig, batch: int, vocab: int = 50, seed: int = 2) -> torch.Tensor:
    """``(batch, 3, L_t)`` BERT input as the model takes it (float): token ids, attention mask 1, segments 0."""
    ids = torch.randint(1, vocab, (batch, cfg.seq_lens[0]), generator=torch.Generator().manual_seed(seed))
    return torch.stack([ids, torch.ones_like(ids), torch.zeros_like(ids)], 1).float()


@pytest.fixture(params=FIXTURE_NAMES)
def fixture(request) -> dict:
    return load_fixture(request.param)


_CONNECTS: list[object] | None = None  # while a test's `connections` fixture is active: every socket.connect address


def _count_connects(event: str, args: tuple) -> None:
    if _CONNECTS is not None and event == "socket.connect":
        _CONNECTS.append(args[1])


sys.addaudithook(_count_connects)  # audit hooks cannot be removed: it records only inside the fixture below


@pytest.fixture
def connections() -> list[object]:
    """The addresses of every ``socket.connect`` the test makes (Python's audit events): "fails at once" is
    checked as "at most one connection attempt", not with a clock that a busy machine would fail."""
    global _CONNECTS
    _CONNECTS = []
    try:
        yield _CONNECTS
    finally:
        _CONNECTS = None
