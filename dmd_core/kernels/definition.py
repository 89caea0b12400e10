"""What the kernels compute: attention and dropout, written plainly.

These two functions are the definitions; every fast path in :mod:`dmd_core.kernels` (the
compiled CPU kernel, the PyTorch tiling, ``scaled_dot_product_attention`` on GPUs) computes
the same function, and ``tests/test_kernels_*.py`` hold each of them to it. Only the random
streams of dropout differ between implementations (the law is the same). See the book's
method reference, "Cross-modal Transformer".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def future_mask(len_q: int, len_k: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean mask ``(len_q, len_k)``, True where query ``i`` may see key ``j``: ``j <= i + |len_k - len_q|``.

    The reference adds ``-inf`` above the diagonal shifted by ``|len_k - len_q|``; for equal
    lengths this is the causal mask. Attention functions take it as the string ``"causal"``.
    """
    i = torch.arange(len_q, device=device).unsqueeze(1)
    j = torch.arange(len_k, device=device).unsqueeze(0)
    return j <= i + abs(len_k - len_q)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d_h))`` over keys, hidden keys (``mask`` False) at probability 0.

    ``q (N, Lq, d_h)``, ``k (N, Lk, d_h)``, ``mask`` boolean ``(Lq, Lk)`` (True = attend) -> ``(N, Lq, Lk)``.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, p: float = 0.0
) -> torch.Tensor:
    """``dropout(softmax(q k^T / sqrt(d_h) + mask), p) v``: ``(N, Lq, d_h)``, ``(N, Lk, d_h)`` x2 -> ``(N, Lq, d_h)``."""
    return dropout(attention_weights(q, k, mask), p) @ v


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each value with probability ``p`` and scale the rest by ``1 / (1 - p)`` (``F.dropout``)."""
    return F.dropout(x, p, training)
