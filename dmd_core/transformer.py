"""The MulT Transformer (fairseq style) that DMD uses for every attention block.

Exactly the reference's computation (spec section 8), written with
``scaled_dot_product_attention``:

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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import dropout, tiled_attention


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
    """Positions of a ``(..., T, B, d)`` sequence: ``t + 1``, or 0 where ``x[..., t, b, 0] == 0``."""
    steps = torch.arange(1, x.shape[-3] + 1, device=x.device).unsqueeze(1)  # (T, 1)
    return torch.where(x[..., 0] == 0, torch.zeros_like(steps), steps)  # (..., T, B)


def future_mask(len_q: int, len_k: int, device: torch.device) -> torch.Tensor:
    """Boolean mask ``(len_q, len_k)``, True where query ``i`` may see key ``j``.

    The reference adds ``-inf`` where ``j > i + |len_k - len_q|`` (an upper
    triangle offset by ``1 + |len_k - len_q|``); for equal lengths this is the
    causal mask.
    """
    i = torch.arange(len_q, device=device).unsqueeze(1)
    j = torch.arange(len_k, device=device).unsqueeze(0)
    return j <= i + abs(len_k - len_q)


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
        nn.init.xavier_uniform_(self.in_proj_weight)
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

        n, dh = batch * self.heads, dim // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (L, B, d) -> (B*h, L, d/h), a time-first view
            return t.reshape(t.shape[0], n, dh).transpose(0, 1)

        out = attention(split(q), split(k), split(v), mask, self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(0, 1).reshape(len_q, batch, dim))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | str | None, p: float):
    """``softmax(q k^T / sqrt(d_h) + mask)``, dropout ``p``, times ``v``: ``(N, L, d_h)`` tensors, N = batch x heads.

    ``mask`` as in :meth:`MultiheadAttention.forward`. CPU: tiled attention (cpu_kernels.py), 2x
    faster than ``scaled_dot_product_attention`` at DMD's head sizes of 5-10 and 4-8x faster with
    dropout; it also takes strided (time-first) views without copies. Elsewhere (and under
    ``torch.compile``): ``scaled_dot_product_attention``, which skips the causal mask when square.
    """
    len_q, len_k = q.shape[1], k.shape[1]
    causal = isinstance(mask, str)
    if q.device.type == "cpu" and not torch.compiler.is_compiling():
        return tiled_attention(q, k, v, abs(len_k - len_q) if causal else mask, p)
    square = len_q == len_k
    attn_mask = future_mask(len_q, len_k, q.device) if causal and not square else mask
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=None if causal and square else attn_mask, dropout_p=p, is_causal=causal and square
    )


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
        """``sqrt(d) * x + positions(x)`` (no dropout), ``(T, B, d)``."""
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


# ---- several encoders of the same shape at once ---------------------------------------------------------


def run_together(
    encoders: Sequence[TransformerEncoder],
    xs: Sequence[torch.Tensor],
    sources: Sequence[torch.Tensor] | None = None,
    last_only: bool = False,
) -> list[torch.Tensor]:
    """``[enc(x, source, last_only) for ...]`` for encoders of one shape on inputs of one shape, batched.

    The same function (only the dropout masks are drawn differently): the encoders' weights are
    stacked and every step runs once for all of them, as batched matrix products, instead of once
    per encoder. On aligned data DMD's six cross-modal Transformers, three shared-feature and three
    memory Transformers each have one shape: a quarter of the operations, ~15% faster on CPU and
    fewer kernel launches on GPU. The weights stay in their modules (checkpoints are unchanged).
    """
    k_enc = len(encoders)
    # Encoders with equal attention dropout next to each other: one attention call per dropout rate.
    order = sorted(range(k_enc), key=lambda i: encoders[i].layers[0].self_attn.dropout if encoders[i].layers else 0)
    encs = [encoders[i] for i in order]
    first = encs[0]
    x = torch.stack([xs[i] for i in order])  # (K, Lq, B, d)
    h = dropout(first.embed(x), first.embed_dropout, first.training)
    kv = None
    if sources is not None:
        src = first.embed(torch.stack([sources[i] for i in order]))  # (K, Lk, B, d)
        if first.training and first.embed_dropout > 0:  # key and value: own dropout masks, as the reference
            kv = (dropout(src, first.embed_dropout), dropout(src, first.embed_dropout))
        else:
            kv = (src, src)
    mask = "causal" if first.attn_mask else None
    n_layers = len(first.layers)
    for i in range(n_layers):
        layers = [e.layers[i] for e in encs]
        if last_only and i == n_layers - 1:  # as in TransformerEncoder.forward: the last query sees every key
            h = _layer_together(layers, h[:, -1:], (h, h) if kv is None else kv, None)
        else:
            h = _layer_together(layers, h, kv, mask)
    h = h[:, -1:] if last_only else h
    out = _norm_together([e.layer_norm for e in encs], h)
    result: list[torch.Tensor] = [torch.empty(0)] * k_enc
    for j, i in enumerate(order):
        result[i] = out[j]
    return result


def _norm_together(norms: Sequence[nn.LayerNorm], x: torch.Tensor) -> torch.Tensor:
    """Each group's LayerNorm on ``x (K, L, B, d)``."""
    w = torch.stack([n.weight for n in norms])[:, None, None]
    b = torch.stack([n.bias for n in norms])[:, None, None]
    return torch.addcmul(b, F.layer_norm(x, x.shape[-1:], eps=norms[0].eps), w)


def _linear_together(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x (K, L, B, in)`` times each group's ``weight (K, out, in)`` plus ``bias (K, out)``."""
    k, length, batch, _ = x.shape
    out = torch.baddbmm(bias.unsqueeze(1), x.reshape(k, length * batch, -1), weight.transpose(1, 2))
    return out.view(k, length, batch, -1)


def _layer_together(layers: Sequence[TransformerLayer], x, kv, mask) -> torch.Tensor:
    """:meth:`TransformerLayer.forward` for the K groups of ``x (K, Lq, B, d)``."""
    first = layers[0]
    q = _norm_together([la.layer_norms[0] for la in layers], x)
    if kv is None:
        k = v = q
    else:
        k = _norm_together([la.layer_norms[0] for la in layers], kv[0])
        v = k if kv[1] is kv[0] else _norm_together([la.layer_norms[0] for la in layers], kv[1])
    attn = _attention_together([la.self_attn for la in layers], q, k, v, mask)
    x = x + dropout(attn, first.res_dropout, first.training)
    fc1 = [la.fc1 for la in layers]
    fc2 = [la.fc2 for la in layers]
    h = _norm_together([la.layer_norms[1] for la in layers], x)
    h = F.relu(_linear_together(h, torch.stack([f.weight for f in fc1]), torch.stack([f.bias for f in fc1])))
    h = dropout(h, first.relu_dropout, first.training)
    h = _linear_together(h, torch.stack([f.weight for f in fc2]), torch.stack([f.bias for f in fc2]))
    return x + dropout(h, first.res_dropout, first.training)


def _attention_together(attns: Sequence[MultiheadAttention], q, k, v, mask) -> torch.Tensor:
    """:meth:`MultiheadAttention.forward` for the K groups of ``q (K, Lq, B, d)``, ``k``/``v (K, Lk, B, d)``."""
    groups, len_q, batch, dim = q.shape
    heads, dh = attns[0].heads, dim // attns[0].heads
    w = torch.stack([a.in_proj_weight for a in attns])
    b = torch.stack([a.in_proj_bias for a in attns])
    if k is q and v is q:
        q, k, v = _linear_together(q, w, b).chunk(3, dim=-1)
    elif k is v:
        q = _linear_together(q, w[:, :dim], b[:, :dim])
        k, v = _linear_together(k, w[:, dim:], b[:, dim:]).chunk(2, dim=-1)
    else:
        q = _linear_together(q, w[:, :dim], b[:, :dim])
        k = _linear_together(k, w[:, dim : 2 * dim], b[:, dim : 2 * dim])
        v = _linear_together(v, w[:, 2 * dim :], b[:, 2 * dim :])

    def split(t: torch.Tensor) -> torch.Tensor:  # (K, L, B, d) -> (K*B*h, L, d/h)
        return t.reshape(groups, t.shape[1], batch * heads, dh).transpose(1, 2).reshape(-1, t.shape[1], dh)

    q, k, v = split(q), split(k), split(v)
    rates = [a.dropout if a.training else 0.0 for a in attns]
    outs, start = [], 0
    per = batch * heads
    while start < groups:  # one call per run of equal dropout rates
        end = start + 1
        while end < groups and rates[end] == rates[start]:
            end += 1
        sl = slice(start * per, end * per)
        outs.append(attention(q[sl], k[sl], v[sl], mask, rates[start]))
        start = end
    out = torch.cat(outs) if len(outs) > 1 else outs[0]  # (K*B*h, Lq, dh)
    out = out.reshape(groups, batch * heads, len_q, dh).transpose(1, 2).reshape(groups, len_q, batch, dim)
    w_out = torch.stack([a.out_proj.weight for a in attns])
    b_out = torch.stack([a.out_proj.bias for a in attns])
    return _linear_together(out, w_out, b_out)
