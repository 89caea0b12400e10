"""CPU kernels: tiled attention (same function and gradients as SDPA, right dropout law) and fast dropout.

These test the PyTorch tiling (``kernels.BACKEND = "tiled"``) unless a test says otherwise; the compiled
kernel has its own tests in test_kernels_native.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmd_core import kernels
from dmd_core.kernels import native, switch
from dmd_core.kernels import tiled as C
from dmd_core.transformer import MultiheadAttention, TransformerEncoder, future_mask


@pytest.fixture(autouse=True)
def pytorch_tiling(monkeypatch):
    monkeypatch.setattr(switch, "BACKEND", "tiled")


@pytest.fixture(params=[False, True], ids=["pytorch", "native"])
def either_path(request, monkeypatch):
    """Runs a test once with the PyTorch tiling and once with the compiled kernel (where it builds)."""
    if request.param and native.library() is None:
        pytest.skip("the native kernel did not build here")
    monkeypatch.setattr(switch, "BACKEND", "auto" if request.param else "tiled")
    return request.param


@pytest.fixture
def small_tiles(monkeypatch):
    """Several tiles and several row chunks even for tiny inputs (so key skipping is exercised)."""
    monkeypatch.setattr(C, "BLOCK_BYTES", 4 * 3 * 12)
    monkeypatch.setattr(C, "ROW_CHUNK", 3)
    C._plan.cache_clear()
    yield
    C._plan.cache_clear()


def _qkv(lq, lk, dtype=torch.float64, n=6, dh=4):
    g = torch.Generator().manual_seed(lq * 100 + lk)
    return [torch.randn(n, length, dh, dtype=dtype, generator=g, requires_grad=True) for length in (lq, lk, lk)]


@pytest.mark.parametrize("lq,lk", [(7, 7), (7, 12), (12, 7), (1, 5)])
def test_without_dropout_equals_sdpa_with_the_reference_mask(small_tiles, lq, lk):
    q, k, v = _qkv(lq, lk)
    mask = future_mask(lq, lk, q.device)
    expected = F.scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(C.tiled_attention(q, k, v, abs(lk - lq), 0.0), expected)
    torch.testing.assert_close(C.tiled_attention(q, k, v, mask, 0.0), expected)  # the same mask as a tensor
    torch.testing.assert_close(C.tiled_attention(q, k, v, None, 0.0), F.scaled_dot_product_attention(q, k, v))


def test_an_arbitrary_boolean_mask_and_its_gradients_match_sdpa(small_tiles):
    q, k, v = _qkv(8, 9)
    allowed = torch.rand(8, 9, generator=torch.Generator().manual_seed(1)) > 0.5
    allowed[:, 4] = True  # every query sees a key
    ours = C.tiled_attention(q, k, v, allowed, 0.0)
    theirs = F.scaled_dot_product_attention(q, k, v, allowed)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, (q, k, v), g)
    torch.testing.assert_close(grads, torch.autograd.grad(theirs, (q, k, v), g))


def test_key_ranges_hidden_from_a_whole_row_chunk_are_skipped(small_tiles):
    _, tiles = C._plan(9, 9, 2, 0)  # causal, chunks of 3 rows: keys [0, 3), [0, 6), [0, 9)
    assert sorted({(rows.start, end) for _, rows, end in tiles}) == [(0, 3), (3, 6), (6, 9)]
    _, tiles = C._plan(4, 9, 2, 5)  # offset 5: row 0 sees keys 0..5, rows 3.. see all
    assert sorted({(rows.start, end) for _, rows, end in tiles}) == [(0, 8), (3, 9)]
    _, tiles = C._plan(9, 4, 2, 5)  # nothing to skip: one chunk of all rows
    assert {(rows.start, rows.stop, end) for _, rows, end in tiles} == {(0, 9, 4)}


def test_strided_time_first_inputs_give_the_same_result_in_their_own_layout(small_tiles):
    q, k, v = (t.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_() for t in _qkv(7, 10))
    assert not q.is_contiguous()
    out = C.tiled_attention(q, k, v, 3, 0.0)
    assert out.stride() == q.stride()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, future_mask(7, 10, q.device)))


@pytest.mark.parametrize("lq,lk", [(7, 7), (12, 7), (5, 11)])
def test_gradients_with_dropout_pass_gradcheck(small_tiles, lq, lk):
    q, k, v = _qkv(lq, lk, n=2, dh=2)

    def f(q, k, v):
        torch.manual_seed(3)  # same dropout mask on every evaluation
        return C.tiled_attention(q, k, v, abs(lk - lq), 0.3)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_dropout_is_reproducible_from_torch_manual_seed_and_varies_otherwise(either_path):
    q, k, v = _qkv(9, 9, torch.float32)
    torch.manual_seed(0)
    a = C.tiled_attention(q, k, v, None, 0.5)
    torch.manual_seed(0)
    b = C.tiled_attention(q, k, v, None, 0.5)
    c = C.tiled_attention(q, k, v, None, 0.5)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_expected_output_with_dropout_is_the_output_without(either_path):
    q, k, v = _qkv(5, 6, torch.float32)
    exact = F.scaled_dot_product_attention(q, k, v)
    torch.manual_seed(0)
    mean = torch.stack([C.tiled_attention(q, k, v, None, 0.3) for _ in range(2000)]).mean(0)
    torch.testing.assert_close(mean, exact, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("p", [0.3, 0.2, (100 + 0.5) / 256, 0.75])
def test_keep_mask_drops_with_probability_p_to_24_bits(p):
    n = 4_000_000
    keep = C.keep_mask(np.random.Generator(np.random.PCG64(5)), n, p)
    assert keep.dtype == np.uint8 and set(np.unique(keep)) == {0, 1}
    # (100.5)/256 ties on the first byte 1 time in 256: without the second byte the rate would be
    # off by 0.5/256 = 8 standard deviations.
    assert abs((1 - keep.mean()) - p) < 4 * (p * (1 - p) / n) ** 0.5


def test_keep_mask_edge_probabilities():
    rng = np.random.Generator(np.random.PCG64(0))
    assert C.keep_mask(rng, 10, 0.0).tolist() == [1] * 10
    assert C.keep_mask(rng, 10, 1.0).tolist() == [0] * 10
    assert C.keep_mask(rng, 0, 0.3).size == 0


def test_dropout_law_scaling_gradient_and_reproducibility():
    x = torch.ones(1000, 400, requires_grad=True)
    torch.manual_seed(1)
    y = kernels.dropout(x, 0.3)
    assert abs((y == 0).float().mean().item() - 0.3) < 0.005
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.7)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(x * keep / (1 - p)) / dx = keep / (1 - p)
    torch.manual_seed(1)
    assert torch.equal(kernels.dropout(x, 0.3), y)
    assert kernels.dropout(x, 0.3, training=False) is x and kernels.dropout(x, 0.0) is x


def test_dropout_off_cpu_falls_back_to_torch():
    x = torch.empty(4, 5, device="meta")
    assert kernels.dropout(x, 0.3).device.type == "meta"


def test_multihead_attention_on_cpu_uses_the_tiled_path_and_matches_sdpa(monkeypatch, either_path):
    calls = []
    real = C.tiled_attention

    def spy(q, k, v, mask, p):
        calls.append((mask, p))
        return real(q, k, v, mask, p)

    monkeypatch.setattr(C, "tiled_attention", spy)
    x, src = torch.randn(6, 2, 8), torch.randn(9, 2, 8)
    attn = MultiheadAttention(8, 2, dropout=0.2)
    attn.train()(x, x, x, "causal")
    tiled = attn.eval()(x, src, src, "causal")
    assert calls == [(0, 0.2), (3, 0.0)]  # the reference's mask as an offset |Lk - Lq|
    # The SDPA path (GPU, torch.compile, the "torch" backend) computes the same function.
    with kernels.use("torch"):
        torch.testing.assert_close(attn(x, src, src, "causal"), tiled)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(attn(x, src, src, "causal"), tiled)
    torch.testing.assert_close(attn(x, x, x, "causal"), attn(x, x, x, future_mask(6, 6, x.device)))


def test_encoder_trains_the_same_function_through_both_paths(monkeypatch, either_path):
    """Gradients of a cross-modal encoder in eval mode: tiled path == SDPA path."""
    torch.manual_seed(0)
    enc = TransformerEncoder(8, 2, 2, attn_mask=True).eval()
    x, src = torch.randn(5, 3, 8), torch.randn(11, 3, 8)
    enc(x, src).square().sum().backward()
    tiled = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    enc(x, src).square().sum().backward()
    for a, p in zip(tiled, enc.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_a_plan_first_made_in_inference_mode_serves_training_later():
    C._plan.cache_clear()
    q, k, v = _qkv(5, 5, torch.float32)
    with torch.inference_mode():
        C.tiled_attention(q.detach(), k.detach(), v.detach(), 0, 0.0)
    C.tiled_attention(q, k, v, 0, 0.2).sum().backward()  # the cached mask is a normal tensor
    assert q.grad is not None


def test_dropout_of_one_drops_everything_like_sdpa():
    q, k, v = _qkv(6, 6, torch.float32)
    out = C.tiled_attention(q, k, v, 0, 1.0)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in (q, k, v))
    assert torch.equal(kernels.dropout(q, 1.0), torch.zeros_like(q))


@pytest.mark.parametrize("backend", ["auto", "tiled", "torch"])
def test_every_backend_computes_the_plain_definition(monkeypatch, backend):
    """Multi-head kernels.attention == kernels.definition.attention on split heads, with each mask kind."""
    from dmd_core.kernels import definition

    if backend == "auto" and native.library() is None:
        pytest.skip("the native kernel did not build here")
    monkeypatch.setattr(switch, "BACKEND", backend)
    torch.manual_seed(0)
    heads, batch, dim = 2, 3, 10
    for lq, lk in ((6, 6), (4, 9), (9, 4)):
        q, k, v = torch.randn(lq, batch, dim), torch.randn(lk, batch, dim), torch.randn(lk, batch, dim)

        def split(t):
            return t.reshape(t.shape[0], batch * heads, dim // heads).transpose(0, 1)

        for mask in (None, "causal", torch.rand(lq, lk) > 0.3):
            if isinstance(mask, torch.Tensor):
                mask[:, 0] = True  # every query sees a key
            plain = definition.future_mask(lq, lk) if mask == "causal" else mask
            expected = definition.attention(split(q), split(k), split(v), plain).transpose(0, 1).reshape(lq, batch, dim)
            torch.testing.assert_close(kernels.attention(q, k, v, heads, mask, 0.0), expected, atol=1e-5, rtol=1e-4)
