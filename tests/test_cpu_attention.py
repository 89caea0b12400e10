"""Block attention with dropout (CPU training path): same function, same gradients, right dropout law."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmd_core import cpu_attention as C
from dmd_core.transformer import MultiheadAttention, future_mask


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(C, "BLOCK_BYTES", 4 * 7 * 12)  # several blocks even for tiny inputs


def _qkv(lq, lk, dtype=torch.float64, batch=2, heads=3, dh=4):
    g = torch.Generator().manual_seed(lq * 100 + lk)
    return [torch.randn(batch, heads, n, dh, dtype=dtype, generator=g, requires_grad=True) for n in (lq, lk, lk)]


@pytest.mark.parametrize("lq,lk", [(7, 7), (7, 12), (12, 7)])
def test_without_dropout_equals_sdpa_with_the_reference_mask(small_blocks, lq, lk):
    q, k, v = _qkv(lq, lk)
    mask = future_mask(lq, lk, q.device)
    torch.testing.assert_close(C.block_attention(q, k, v, mask, 0.0), F.scaled_dot_product_attention(q, k, v, mask))
    torch.testing.assert_close(C.block_attention(q, k, v, None, 0.0), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("lq,lk", [(7, 7), (12, 7)])
def test_gradients_with_dropout_pass_gradcheck(small_blocks, lq, lk):
    q, k, v = _qkv(lq, lk, batch=1, heads=2, dh=2)
    mask = future_mask(lq, lk, q.device)

    def f(q, k, v):
        torch.manual_seed(3)  # same dropout mask on every evaluation
        return C.block_attention(q, k, v, mask, 0.3)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_dropout_keeps_each_weight_with_probability_one_minus_p_and_rescales():
    mult = C._dropout_multiplier(7, 0, (200, 500), 0.3, torch.float32)
    assert abs((mult == 0).float().mean().item() - 0.3) < 0.005
    assert torch.all((mult == 0) | torch.isclose(mult, torch.tensor(1 / 0.7)))


def test_dropout_is_reproducible_from_torch_manual_seed_and_varies_otherwise():
    q, k, v = _qkv(9, 9, torch.float32)
    torch.manual_seed(0)
    a = C.block_attention(q, k, v, None, 0.5)
    torch.manual_seed(0)
    b = C.block_attention(q, k, v, None, 0.5)
    c = C.block_attention(q, k, v, None, 0.5)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_expected_output_with_dropout_is_the_output_without():
    q, k, v = _qkv(5, 6, torch.float32)
    exact = F.scaled_dot_product_attention(q, k, v)
    torch.manual_seed(0)
    mean = torch.stack([C.block_attention(q, k, v, None, 0.3) for _ in range(2000)]).mean(0)
    torch.testing.assert_close(mean, exact, atol=0.05, rtol=0.05)


def test_multihead_attention_uses_the_block_path_only_when_training_with_dropout_on_cpu(monkeypatch):
    calls = []
    real = C.block_attention

    def spy(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr("dmd_core.transformer.block_attention", spy)
    monkeypatch.setattr("dmd_core.transformer.BLOCK_MIN_SCORES", 36)
    x = torch.randn(6, 2, 8)
    MultiheadAttention(8, 2, dropout=0.2).train()(x, x, x, "causal")
    MultiheadAttention(8, 2, dropout=0.2).eval()(x, x, x, "causal")
    MultiheadAttention(8, 2, dropout=0.0).train()(x, x, x, "causal")
    short = torch.randn(5, 2, 8)  # 5 * 5 < 36: short sequences stay on scaled_dot_product_attention
    MultiheadAttention(8, 2, dropout=0.2).train()(short, short, short, "causal")
    assert calls == [0.2]
