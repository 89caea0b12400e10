"""The MulT Transformer: positions, mask, attention, against hand values and torch.nn."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmd_core.transformer import (
    MultiheadAttention,
    TransformerEncoder,
    feature_positions,
    future_mask,
    sinusoid_positions,
)


def test_sinusoid_matches_the_formula_by_hand():
    emb = sinusoid_positions(torch.tensor([0, 1, 3]), 4)  # half = 2: f = [1, 1e-4]
    f = [1.0, math.exp(-math.log(10000.0))]
    expected = torch.tensor([
        [0.0, 0.0, 0.0, 0.0],
        [math.sin(f[0]), math.sin(f[1]), math.cos(f[0]), math.cos(f[1])],
        [math.sin(3 * f[0]), math.sin(3 * f[1]), math.cos(3 * f[0]), math.cos(3 * f[1])],
    ])  # fmt: skip
    torch.testing.assert_close(emb, expected)


def test_sinusoid_of_odd_width_ends_with_a_zero_column():
    emb = sinusoid_positions(torch.arange(5), 7)
    assert emb.shape == (5, 7) and torch.all(emb[:, -1] == 0)


def test_position_is_zero_exactly_where_the_first_channel_is_zero():
    x = torch.randn(5, 2, 3)
    x[1, 0, 0] = 0.0
    x[4, 1, 0] = 0.0
    x[2, 1, 1] = 0.0  # other channels do not matter
    assert feature_positions(x).tolist() == [[1, 1], [0, 2], [3, 3], [4, 4], [5, 0]]


def test_mask_hides_keys_beyond_the_length_difference():
    for lq, lk in [(4, 4), (3, 5), (5, 3)]:
        ref = torch.triu(torch.full((lq, lk), float("-inf")), 1 + abs(lk - lq))  # the reference's construction
        assert torch.equal(future_mask(lq, lk, torch.device("cpu")), ref == 0)


def test_attention_equals_torch_multihead_attention_with_the_same_weights():
    torch.manual_seed(0)
    ours = MultiheadAttention(8, 2).eval()
    theirs = nn.MultiheadAttention(8, 2).eval()
    theirs.load_state_dict(ours.state_dict())
    q, kv = torch.randn(5, 3, 8), torch.randn(7, 3, 8)
    mask = future_mask(5, 7, q.device)
    expected, _ = theirs(q, kv, kv, attn_mask=~mask)
    torch.testing.assert_close(ours(q, kv, kv, mask), expected, atol=1e-6, rtol=1e-5)
    expected_self, _ = theirs(q, q, q, attn_mask=~future_mask(5, 5, q.device))
    torch.testing.assert_close(ours(q, q, q, "causal"), expected_self, atol=1e-6, rtol=1e-5)


def test_last_step_of_self_attention_sees_the_whole_sequence_and_first_step_only_itself():
    torch.manual_seed(0)
    enc = TransformerEncoder(8, 2, layers=2).eval()
    x = torch.randn(6, 2, 8)
    base = enc(x)
    y = x.clone()
    y[3:] += torch.randn(3, 2, 8)  # change the future of step 0
    out = enc(y)
    torch.testing.assert_close(out[0], base[0])
    assert not torch.allclose(out[-1], base[-1])


def test_cross_attention_output_has_the_query_length():
    enc = TransformerEncoder(8, 2, layers=1).eval()
    assert enc(torch.randn(5, 3, 8), torch.randn(9, 3, 8)).shape == (5, 3, 8)


@pytest.mark.parametrize("source_len", [None, 4, 9])
@pytest.mark.parametrize("attn_mask", [True, False])
def test_last_only_is_the_last_step_of_the_full_output_with_the_same_gradients(source_len, attn_mask):
    torch.manual_seed(0)
    enc = TransformerEncoder(8, 2, 3, attn_mask=attn_mask).eval()
    x = torch.randn(6, 3, 8)
    x[2, 1, 0] = 0.0  # a padding-like step (position 0)
    src = None if source_len is None else torch.randn(source_len, 3, 8)
    full = enc(x, src)
    last = enc(x, src, last_only=True)
    assert last.shape == (1, 3, 8)
    torch.testing.assert_close(last[0], full[-1])
    g_full = torch.autograd.grad(full[-1].square().sum(), list(enc.parameters()), allow_unused=True)
    g_last = torch.autograd.grad(last[0].square().sum(), list(enc.parameters()), allow_unused=True)
    for a, b in zip(g_full, g_last):
        torch.testing.assert_close(a, b)


def test_embedding_a_permuted_view_gives_contiguous_memory():
    """DMD passes (B, d, T) features permuted to (T, B, d); the layers downstream get contiguous input."""
    enc = TransformerEncoder(8, 2, 1)
    x = torch.randn(3, 8, 5).permute(2, 0, 1)
    assert not x.is_contiguous()
    out = enc.embed(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, enc.embed(x.contiguous()))
