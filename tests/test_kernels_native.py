"""The compiled CPU attention kernel (dmd_core/csrc/attention.c) and how it is built and chosen.

Its function and gradients are checked against a dense float64 computation of
``softmax(q k^T / sqrt(d_h) + mask) * keep / (1 - p) @ v``, with ``keep`` the kernel's own
dropout flags (``native_keep_mask``); the flags are checked against the Bernoulli law.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dmd_core import kernels
from dmd_core.kernels import native, switch
from dmd_core.kernels import tiled as C
from dmd_core.transformer import TransformerEncoder, future_mask

if native.compiler() is None:  # CI and the README's setup have gcc; say so loudly if not
    pytest.skip("no C compiler on this machine: the native kernel cannot be built", allow_module_level=True)


@pytest.fixture(scope="module")
def lib():
    native.library.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a build failure is a test failure here, not a fallback
        built = native.library()
    assert built is not None
    return built


def _qkv(n, lq, lk, dh, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(n, length, dh, generator=g)).requires_grad_() for length in (lq, lk, lk)]


def _dense(q, k, v, mask, keep=None, p=0.0):
    """The definition, in float64: softmax with the mask, dropout flags ``keep``, weighted values."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(
            ~future_mask(q.shape[1], k.shape[1], q.device) if mask == "ref" else ~mask, -torch.inf
        )
    attn = torch.softmax(scores, -1)
    if keep is not None:
        attn = attn * keep / (1 - p)
    return attn @ v


def _offset_mask(lq, lk, offset):
    return torch.arange(lk) <= torch.arange(lq).unsqueeze(1) + offset


SHAPES = [(3, 7, 7, 5), (2, 7, 12, 5), (2, 12, 7, 10), (3, 1, 5, 4), (2, 5, 1, 3), (2, 17, 33, 64), (4, 46, 46, 5)]


@pytest.mark.parametrize("n,lq,lk,dh", SHAPES)
@pytest.mark.parametrize("offset", [None, 0, "ref", 40])
def test_output_and_gradients_match_the_definition(lib, n, lq, lk, dh, offset):
    q, k, v = _qkv(n, lq, lk, dh, seed=lq * lk + dh)
    off = abs(lk - lq) if offset == "ref" else offset
    assert C.uses_native(q, k, v, off, 0.0)
    out = C.tiled_attention(q, k, v, off, 0.0)
    mask = None if off is None else _offset_mask(lq, lk, off)
    expected = _dense(q, k, v, mask)
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), g)
    theirs = torch.autograd.grad(expected, (q, k, v), g.double())
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n,lq,lk,dh", [(3, 7, 7, 5), (2, 20, 37, 10), (2, 9, 4, 3)])
def test_dropout_applies_exactly_the_kernels_flags_forward_and_backward(lib, n, lq, lk, dh):
    q, k, v = _qkv(n, lq, lk, dh, seed=7)
    p, off = 0.3, abs(lk - lq)
    torch.manual_seed(11)
    out = C.tiled_attention(q, k, v, off, p)
    torch.manual_seed(11)
    keep = C.native_keep_mask(C._seed(), n, lq, lk, p)  # the seed the kernel drew
    assert 0 < keep.float().mean() < 1
    expected = _dense(q, k, v, _offset_mask(lq, lk, off), keep, p)
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(expected, (q, k, v), g.double())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_time_first_strided_inputs_and_a_non_contiguous_gradient(lib):
    """What MultiheadAttention passes: views of a (L, B, 3d) projection, split into heads."""
    lq, batch, heads, dh = 9, 3, 2, 5
    x = torch.randn(lq, batch, 3 * heads * dh, requires_grad=True)
    q, k, v = (t.reshape(lq, batch * heads, dh).transpose(0, 1) for t in x.chunk(3, dim=-1))
    assert not q.is_contiguous()
    out = C.tiled_attention(q, k, v, 0, 0.0)
    assert out.transpose(0, 1).is_contiguous()  # time-first, as the Transformer wants it back
    expected = _dense(q, k, v, _offset_mask(lq, lq, 0))
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    g = torch.randn(heads * batch, dh, lq).transpose(1, 2)  # channels not contiguous
    ours = torch.autograd.grad(out, x, g)[0]
    theirs = torch.autograd.grad(expected, x, g.double())[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_large_scores_stay_finite_and_exact(lib):
    q, k, v = _qkv(2, 8, 40, 5, scale=30.0)  # score spreads in the thousands: most weights underflow
    out = C.tiled_attention(q, k, v, None, 0.0)
    assert torch.isfinite(out).all()
    # Scores of ~1e3 carry float32 rounding of ~1e-4 into the weights: the tolerance is float32's, not the kernel's.
    torch.testing.assert_close(out.double(), _dense(q, k, v, None), atol=2e-3, rtol=1e-4)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("p", [0.1, 0.3, (100 + 0.5) / 256])
def test_keep_flags_follow_the_bernoulli_law(lib, p):
    n, lq, lk = 40, 100, 1000  # 4 M flags
    keep = C.native_keep_mask(123, n, lq, lk, p).float()
    count = keep.numel()
    # (100.5)/256: a draw that compared only its first 8 bits would be off by 8 standard deviations.
    assert abs((1 - keep.mean().item()) - p) < 4 * (p * (1 - p) / count) ** 0.5
    # Neighbouring keys, neighbouring rows and neighbouring slices are uncorrelated.
    x = keep - keep.mean()
    var = x.square().mean()
    for a, b in ((x[..., 1:], x[..., :-1]), (x[:, 1:], x[:, :-1]), (x[1:], x[:-1])):
        assert abs((a * b).mean() / var) < 5 / count**0.5


def test_keep_flags_resolve_p_to_24_bits_and_nest(lib):
    """Thresholds 254 / 2^24 apart drop ~61 more of 4 M flags, and only flags the lower one kept.

    A draw with fewer than 24 bits (16, say) would see one threshold in both and differ nowhere.
    """
    low, high = 0x4D0001 / 2**24, 0x4D00FF / 2**24
    a, b = (C.native_keep_mask(9, 40, 100, 1000, p) for p in (low, high))
    assert not (a < b).any()  # whatever the higher p keeps, the lower keeps too
    assert 25 < (a & ~b).sum().item() < 110  # expected 4e6 * 254 / 2^24 = 60.6, sd 7.8


def test_keep_flags_depend_on_the_seed_only_through_the_kernel(lib):
    a = C.native_keep_mask(1, 2, 3, 40, 0.5)
    assert torch.equal(a, C.native_keep_mask(1, 2, 3, 40, 0.5))
    assert not torch.equal(a, C.native_keep_mask(2, 2, 3, 40, 0.5))
    assert not torch.equal(a[0, 0], a[0, 1]) and not torch.equal(a[0], a[1])  # rows draw their own flags
    assert C.native_keep_mask(1, 2, 3, 40, 0.0).all()


def test_results_do_not_depend_on_the_thread_count(lib):
    q, k, v = _qkv(16, 30, 50, 5)
    threads = torch.get_num_threads()
    outs = []
    for t in (1, 3):
        torch.set_num_threads(t)
        torch.manual_seed(0)
        out = C.tiled_attention(q, k, v, 20, 0.2)
        outs.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_same_seed_same_result_and_inference_mode(lib):
    q, k, v = _qkv(4, 10, 10, 5)
    torch.manual_seed(5)
    a = C.tiled_attention(q, k, v, 0, 0.4)
    torch.manual_seed(5)
    with torch.inference_mode():
        b = C.tiled_attention(q.detach(), k.detach(), v.detach(), 0, 0.4)
    assert torch.equal(a, b) and not torch.equal(a, C.tiled_attention(q, k, v, 0, 0.4))


def test_what_the_kernel_does_not_take_goes_to_the_pytorch_tiling(lib, monkeypatch):
    q, k, v = _qkv(2, 6, 6, 5)
    assert C.uses_native(q, k, v, 0, 0.1)
    assert not C.uses_native(q.double(), k.double(), v.double(), 0, 0.1)  # float64 (gradcheck)
    assert not C.uses_native(q, k, v, torch.ones(6, 6, dtype=torch.bool), 0.1)  # a boolean mask
    assert not C.uses_native(q, k, v, -1, 0.1)  # a negative offset
    assert not C.uses_native(q, k, v, 0, 1.0)  # everything dropped
    wide = _qkv(2, 6, 6, 65)
    assert not C.uses_native(*wide, 0, 0.0)  # heads wider than 64
    expected = _dense(*wide, _offset_mask(6, 6, 0))
    torch.testing.assert_close(C.tiled_attention(*wide, 0, 0.0).double(), expected, atol=2e-6, rtol=1e-5)
    monkeypatch.setattr(switch, "BACKEND", "tiled")
    assert not C.uses_native(q, k, v, 0, 0.1)


def test_an_encoder_gives_the_same_function_with_and_without_the_kernel(lib, monkeypatch):
    torch.manual_seed(0)
    enc = TransformerEncoder(20, 4, 2, attn_mask=True).eval()
    x, src = torch.randn(13, 3, 20), torch.randn(21, 3, 20)
    runs = []
    for use in (True, False):
        monkeypatch.setattr(switch, "BACKEND", "auto" if use else "tiled")
        enc.zero_grad()
        out = enc(x, src)
        out.square().sum().backward()
        runs.append([out] + [p.grad.clone() for p in enc.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_missing_compiler_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("DMD_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="(?s)slower PyTorch path.*no-such-cc"):
            assert native.library() is None
        q, k, v = _qkv(2, 5, 5, 5)
        assert not C.uses_native(q, k, v, 0, 0.0)
        expected = _dense(q, k, v, _offset_mask(5, 5, 0))
        torch.testing.assert_close(C.tiled_attention(q, k, v, 0, 0.0).double(), expected, atol=2e-6, rtol=1e-5)
    finally:
        native.library.cache_clear()


def test_a_compiler_error_is_reported_with_its_messages(monkeypatch, tmp_path):
    bad = tmp_path / "attention.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCES", (bad,))
    with pytest.raises(native.NativeBuildError, match="attention.c"):
        native.build(native.compiler(), tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written left behind


def test_the_one_switch_turns_the_kernel_off_from_the_environment_or_a_block():
    import subprocess
    import sys

    code = "import dmd_core.kernels as k, dmd_core.kernels.native as n; print(k.BACKEND, n.library.cache_info().misses)"
    env = {**__import__("os").environ, "DMD_KERNELS": "tiled"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["tiled", "0"]
    env["DMD_KERNELS"] = "fast"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "DMD_KERNELS='fast': expected one of auto, tiled, torch" in bad.stderr
    q, k, v = _qkv(2, 5, 5, 5)
    with kernels.use("tiled"):
        assert not C.uses_native(q, k, v, 0, 0.0)
    assert kernels.BACKEND == "auto" and C.uses_native(q, k, v, 0, 0.0)
    with pytest.raises(ValueError, match="expected one of"):
        with kernels.use("fast"):
            pass


def test_builds_are_cached_by_source_and_compiler(tmp_path):
    first = native.build(native.compiler(), tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(native.compiler(), tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert first.name.startswith("kernels-") and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("n,lq", [(0, 5), (3, 0)])
def test_empty_batches_and_queries(lib, n, lq):
    q, k, v = (torch.randn(n, length, 5, requires_grad=True) for length in (lq, 6, 6))
    out = C.tiled_attention(q, k, v, 0, 0.1)
    assert out.shape == (n, lq, 5)
    out.sum().backward()
    assert k.grad.shape == (n, 6, 5) and not k.grad.any()  # no query: no gradient


def test_a_cached_fallback_build_is_found_without_recompiling(tmp_path, monkeypatch):
    """Where the fastest flags failed once (no OpenMP, say), later processes load the build that worked."""
    monkeypatch.setattr(native, "FLAG_SETS", (("-O3", "-fno-such-flag-at-all"), ("-O3",)))
    first = native.build(native.compiler(), tmp_path)  # the first set fails, the second builds
    calls = []
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: calls.append(a))
    assert native.build(native.compiler(), tmp_path) == first and not calls
