"""The MulT Transformer (fairseq style) that DMD uses for every attention block.

Exactly the reference's computation (the book's method reference, "Cross-modal
Transformer"). Attention is :func:`dmd_core.kernels.definition.attention` (six lines),
computed by a fast implementation of it (:func:`dmd_core.kernels.attention`):

* inputs are scaled by ``sqrt(d)`` and get sinusoidal positions ``t + 1``, except
  that a time step whose first feature channel is exactly 0 gets position 0,
  whose embedding is the zero vector (fairseq's padding rule applied to
  features);
* pre-norm layers; query, key and value share the first LayerNorm; key and value
  are embedded once and fed unchanged to every layer;
* the attention mask hides key ``j`` from query ``i`` when ``j > i + |L_k - L_q|``.

Sequences are time-first, ``(T, B, d)``, as in the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import attention, dropout
from .kernels.definition import future_mask  # noqa: F401  (the mask is part of the definition; tests import it here)


def sinusoid_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings of integer ``positions`` (any shape) -> ``(*shape, dim)``.

    ``[sin(p f), cos(p f)]`` concatenated, ``f_i = exp(-i ln(10000) / (half - 1))``;
    position 0 maps to the zero vector; a zero column is appended when ``dim`` is odd.
    """
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=positions.device) * -(math.log(10000.0) / (half - 1))
    )
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.masked_fill((positions == 0).unsqueeze(-1), 0.0)


def feature_positions(x: torch.Tensor) -> torch.Tensor:
    """Positions of a ``(T, B, d)`` sequence: ``t + 1``, or 0 where ``x[t, b, 0] == 0``."""
    steps = torch.arange(1, x.shape[0] + 1, device=x.device).unsqueeze(1)  # (T, 1)
    return torch.where(x[..., 0] == 0, torch.zeros_like(steps), steps)  # (T, B)


class MultiheadAttention(nn.Module):
    """Multi-head attention with a packed input projection, like ``nn.MultiheadAttention``.

    Parameter names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) match the
    reference so checkpoints map one to one.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MultiheadAttention: dim {dim} not divisible by heads {heads}")
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # As the reference (fairseq's reset_parameters): Xavier-uniform weights, zero biases; out_proj too.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | str | None
    ) -> torch.Tensor:
        """``query (Lq, B, d)``, ``key``/``value (Lk, B, d)`` -> ``(Lq, B, d)``.

        ``mask``: None, a boolean ``(Lq, Lk)`` mask (True = attend), or the string
        ``"causal"`` for the reference's mask (:func:`future_mask`: causal when
        ``Lq == Lk``, shifted by ``|Lk - Lq|`` otherwise), which kernels can skip through.
        """
        len_q, batch, dim = query.shape
        w, b = self.in_proj_weight, self.in_proj_bias
        if key is query and value is query:  # self-attention: one matmul
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
        elif key is value:
            q = F.linear(query, w[:dim], b[:dim])
            k, v = F.linear(key, w[dim:], b[dim:]).chunk(2, dim=-1)
        else:
            q = F.linear(query, w[:dim], b[:dim])
            k = F.linear(key, w[dim : 2 * dim], b[dim : 2 * dim])
            v = F.linear(value, w[2 * dim :], b[2 * dim :])

        p = self.dropout if self.training else 0.0
        return self.out_proj(attention(q, k, v, self.heads, mask, p))  # (Lq, B, d)


class TransformerLayer(nn.Module):
    """One pre-norm layer: attention block, then a ReLU feed-forward block of width 4d."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, attn_dropout)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | str | None):
        norm = self.layer_norms[0]
        q = norm(x)
        if kv is None:
            k = v = q
        else:
            k = norm(kv[0])
            v = k if kv[1] is kv[0] else norm(kv[1])
        x = x + dropout(self.self_attn(q, k, v, mask), self.res_dropout, self.training)
        h = dropout(F.relu(self.fc1(self.layer_norms[1](x))), self.relu_dropout, self.training)
        return x + dropout(self.fc2(h), self.res_dropout, self.training)


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerLayer` with input embedding and a final LayerNorm.

    ``forward(x)`` is self-attention; ``forward(x, source)`` is cross-modal
    attention with queries from ``x (Lq, B, d)`` and keys and values from
    ``source (Lk, B, d)``. Returns ``(Lq, B, d)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        layers: int,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        embed_dropout: float = 0.0,
        attn_mask: bool = True,
    ) -> None:
        super().__init__()
        self.dim, self.embed_dropout, self.attn_mask = dim, embed_dropout, attn_mask
        self.layers = nn.ModuleList(
            TransformerLayer(dim, heads, attn_dropout, relu_dropout, res_dropout) for _ in range(layers)
        )
        self.layer_norm = nn.LayerNorm(dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``sqrt(d) * x + positions(x)`` (no dropout), ``(T, B, d)``, contiguous.

        DMD passes permuted views of ``(B, d, T)`` features; elementwise ops keep an input's
        memory layout, so without this copy every LayerNorm and Linear of every layer would
        copy its input (and its gradient) to contiguous memory itself.
        """
        x = x.contiguous()
        pos = sinusoid_positions(feature_positions(x), self.dim).to(x.dtype)
        return math.sqrt(self.dim) * x + pos

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Returns ``(Lq, B, d)``; with ``last_only``, ``(1, B, d)``: only the last time step.

        ``last_only`` gives exactly the last step of the full output for less work: the
        last layer computes its last query only (under the reference's mask the last query
        sees every key, and every step of the layers below). DMD reads nothing else from its
        self-attention Transformers.
        """
        mask = "causal" if self.attn_mask else None  # the reference's future mask, for any Lq, Lk
        h = dropout(self.embed(x), self.embed_dropout, self.training)
        kv = None
        if source is not None:
            src = self.embed(source)
            # The reference embeds key and value separately: same values, own dropout masks.
            if self.training and self.embed_dropout > 0:
                kv = (dropout(src, self.embed_dropout), dropout(src, self.embed_dropout))
            else:
                kv = (src, src)
        for i, layer in enumerate(self.layers):
            if last_only and i == len(self.layers) - 1:
                h = layer(h[-1:], (h, h) if kv is None else kv, None)  # the last query sees every key
            else:
                h = layer(h, kv, mask)
        return self.layer_norm(h[-1:] if last_only else h)
