"""Attention and dropout on CPU, fast at DMD's sizes.

DMD's attention heads are tiny (5 or 10 channels) and, on unaligned data, its
maps are long (up to 496 x 496). On CPU, ``scaled_dot_product_attention``
handles this badly: its flash kernel is 2x slower than plain products, and with
dropout (which has no fused CPU kernel) it materialises the whole
``(B, h, Lq, Lk)`` map, passes over it a dozen times and draws the mask with
torch's CPU generator at ~7 ns a value. :func:`tiled_attention` computes the
same function two ways:

**The compiled kernel** (``csrc/attention.c``, built on first use by
:mod:`dmd_core.kernels.native`; used whenever :func:`uses_native` says so, which is
every attention of a float32 DMD model on CPU). One query row at a time, 16 keys
at a time, scores, softmax, dropout and the weighted values stay in vector
registers; keys hidden by the mask are never touched; the backward pass
recomputes the probabilities from the stored log-sum-exp and redraws the
dropout flags from a counter-based hash of ``(seed, row, key)`` (the seed drawn
from torch's generator, so ``torch.manual_seed`` reproduces it): nothing of the
size of a map is ever stored. 2-4x faster than the tiling below
(``benchmarks/bench_attention.py``).

**The PyTorch tiling** (the fallback where no C compiler works, and for float64,
boolean masks, heads wider than 64 or ``p = 1``; the FlashAttention idea in plain
PyTorch ops):

* a tile is a few ``(batch, head)`` slices times a chunk of query rows, about
  ``BLOCK_BYTES`` of scores, so it stays in cache;
* key columns the mask hides from every row of a chunk are skipped (DMD's masks
  are causal or offset-causal: about half of every self-attention map and part
  of the cross-modal ones);
* products are arranged so the head size is the output's row count (CPU
  ``bmm`` is ~5x faster that way round);
* the backward pass recomputes the probabilities instead of storing them;
* the dropout mask is drawn once, in the forward pass, by :func:`keep_mask` from
  a numpy PCG64 stream seeded from torch's generator (so ``torch.manual_seed``
  reproduces it), and kept as packed bits (1/32 of the map) for the backward.

Both equal ``softmax(q k^T / sqrt(d_h) + mask) * keep / (1 - p) @ v`` with
``keep ~ Bernoulli(1 - p)`` i.i.d., the law of
``scaled_dot_product_attention(..., dropout_p=p)`` (``p`` rounded to 24 bits,
as a float32 uniform draw would); only the random streams differ (from each
other and from torch's). :func:`dropout` is ``F.dropout`` with the numpy mask
generator.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from . import native, switch

BLOCK_BYTES = 1 << 20  # ~1 MiB of scores per tile: fits a core's L2 (measured best among 0.5-4 MiB)
ROW_CHUNK = 64  # query rows per tile when a mask lets whole key ranges be skipped


def keep_mask(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """``n`` i.i.d. dropout keep flags (uint8 0/1), 0 with probability ``p`` (exact to 24 bits).

    Drops where a uniform 24-bit integer ``U`` is below ``P = round(p * 2**24)``, comparing
    one random byte at a time: the first byte decides unless it ties with ``P``'s (1 in
    256), then the second, then the third. About one raw random byte per value: 3x faster
    than drawing float32 uniforms, 15x faster than ``torch.bernoulli_``.
    """
    p24 = round(p * (1 << 24))
    if p24 <= 0 or p24 >= 1 << 24:
        return np.full(n, int(p24 <= 0), dtype=np.uint8)
    digits = (p24 >> 16, (p24 >> 8) & 255, p24 & 255)

    def random_bytes(count: int) -> np.ndarray:
        return rng.bit_generator.random_raw(count // 8 + 1).view(np.uint8)[:count]

    r = random_bytes(n)
    keep = r > digits[0]
    undecided = np.flatnonzero(r == digits[0])
    for i, digit in enumerate(digits[1:], 1):
        if not undecided.size:
            break
        r = random_bytes(undecided.size)
        keep[undecided] = r >= digit if i == 2 else r > digit  # U == P on all bytes: not below P, kept
        undecided = undecided[r == digit]
    return keep.view(np.uint8)


def _seed() -> int:
    """A 62-bit seed drawn from torch's CPU generator (``torch.manual_seed`` reproduces it)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def _generator() -> np.random.Generator:
    """A numpy generator seeded from torch's CPU generator (``torch.manual_seed`` reproduces it)."""
    return np.random.Generator(np.random.PCG64(_seed()))


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        keep = torch.from_numpy(keep_mask(_generator(), x.numel(), p)).view(x.shape)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p)`` for a CPU tensor and ``0 < p < 1``, with the mask of :func:`keep_mask` (5x less time)."""
    return _Dropout.apply(x, p)


Tile = tuple[slice, slice, int]  # (batch-head slices, query rows, keys [0, end) used)


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached for later calls, also ones that save it for backward
def _plan(len_q: int, len_k: int, n: int, offset: int | None) -> tuple[torch.Tensor, tuple[Tile, ...]]:
    """Additive mask ``(Lq, Lk)`` (0 or -inf) and tiles for the mask "key j hidden when j > i + offset"."""
    bias = torch.zeros(len_q, len_k)
    if offset is None:
        return bias, _tile(n, [(0, len_q, len_k)])
    i = torch.arange(len_q).unsqueeze(1)
    bias.masked_fill_(torch.arange(len_k) > i + offset, float("-inf"))
    return bias, _tile(n, _chunks(len_q, len_k, lambda i0, i1: min(len_k, i1 + offset)))


def _chunks(len_q: int, len_k: int, key_end) -> list[tuple[int, int, int]]:
    """Row chunks ``(i0, i1, end)``; one chunk for the whole map when no keys can be skipped."""
    chunks = [(i0, min(len_q, i0 + ROW_CHUNK)) for i0 in range(0, len_q, ROW_CHUNK)]
    ends = [max(1, key_end(i0, i1)) for i0, i1 in chunks]
    if all(end == len_k for end in ends):
        return [(0, len_q, len_k)]
    return [(i0, i1, end) for (i0, i1), end in zip(chunks, ends)]


def _tile(n: int, chunks: list[tuple[int, int, int]]) -> tuple[Tile, ...]:
    tiles = []
    for i0, i1, end in chunks:
        per = max(1, BLOCK_BYTES // (4 * (i1 - i0) * end))
        tiles += [(slice(s, s + per), slice(i0, i1), end) for s in range(0, n, per)]
    return tuple(tiles)


def _general_plan(allowed: torch.Tensor, n: int) -> tuple[torch.Tensor, tuple[Tile, ...]]:
    """Bias and tiles for an arbitrary boolean mask ``(Lq, Lk)`` (True = attend)."""
    len_q, len_k = allowed.shape
    bias = torch.zeros(len_q, len_k).masked_fill_(~allowed.cpu(), float("-inf"))
    last = torch.arange(1, len_k + 1).expand(len_q, len_k).masked_fill(~allowed.cpu(), 0).amax(1)
    return bias, _tile(n, _chunks(len_q, len_k, lambda i0, i1: int(last[i0:i1].max())))


class _TiledAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, p, tiles):  # q (N, Lq, dh), k/v (N, Lk, dh) any strides; bias (Lq, Lk)
        scale, keep_scale = q.shape[-1] ** -0.5, (1.0 / (1.0 - p) if p < 1 else 0.0)  # p = 1: all dropped
        q_s, v_s = q * scale, v * keep_scale  # fold both scalings into the narrow operands
        out = torch.empty_like(q)  # same memory layout as q (e.g. time-first)
        rng = _generator() if p > 0 else None
        masks = []
        for ns, rows, end in tiles:
            attn = _probs(q_s[ns, rows], k[ns, :end], bias[rows, :end])
            if rng is not None:
                keep = keep_mask(rng, attn.numel(), p)
                attn.mul_(torch.from_numpy(keep).view(attn.shape))  # uint8 factor: 15x faster than masked_fill_
                masks.append(np.packbits(keep))
            out[ns, rows] = _mm_narrow(attn, v_s[ns, :end])
        ctx.save_for_backward(q_s, k, v_s, out, bias)
        ctx.scale, ctx.keep_scale, ctx.tiles, ctx.masks = scale, keep_scale, tiles, masks
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_s, k, v_s, out, bias = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(q_s), torch.zeros_like(k), torch.zeros_like(v_s)
        # rowsum(dA_dropped * A_dropped) = rowsum(dO * O): the softmax backward's correction term.
        delta = (grad_out * out).sum(-1, keepdim=True)  # (N, Lq, 1)
        for t, (ns, rows, end) in enumerate(ctx.tiles):
            attn = _probs(q_s[ns, rows], k[ns, :end], bias[rows, :end])
            g_out = grad_out[ns, rows]
            grad = torch.bmm(g_out, v_s[ns, :end].transpose(1, 2))  # d(kept attn), keep_scale included
            keep = None
            if ctx.masks:  # converted to float once, used twice
                bits = np.unpackbits(ctx.masks[t], count=attn.numel())
                keep = torch.from_numpy(bits).view(attn.shape).to(attn.dtype)
                grad = torch.addcmul(delta[ns, rows].neg(), grad, keep).mul_(attn)  # dS, one pass fewer
            else:
                grad.sub_(delta[ns, rows]).mul_(attn)  # dS
            dq[ns, rows] += _mm_narrow(grad, k[ns, :end])  # d(q_s)
            dk[ns, :end] += _mm_narrow(grad.transpose(1, 2), q_s[ns, rows])
            if keep is not None:
                attn.mul_(keep)
            dv[ns, :end] += _mm_narrow(attn.transpose(1, 2), g_out)  # d(v_s) / keep_scale
        return dq.mul_(ctx.scale), dk, dv.mul_(ctx.keep_scale), None, None, None


def _mm_narrow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a narrow ``b (n, K, d_h)``, computed as ``(b^T a^T)^T``.

    Same numbers; CPU ``bmm`` is ~5x faster when the head size is the output's row count
    than when it is the column count (measured with head size 5, tiles of 64 x 496).
    """
    return torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2)


def _probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T + bias)`` for one tile (``q`` already scaled); ``bias`` holds 0 or -inf."""
    return torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2)), dim=-1)


def _p24(p: float) -> int:
    """Dropout probability in units of 2^-24 (what the native kernel compares its 24-bit draws with)."""
    return min(1 << 24, max(0, round(p * (1 << 24))))


def _strided(t: torch.Tensor) -> tuple[int, int, int]:
    return t.data_ptr(), t.stride(0), t.stride(1)


def _time_first(n: int, length: int, dh: int, like: torch.Tensor) -> torch.Tensor:
    """An ``(n, length, dh)`` view of a contiguous ``(length, n, dh)`` tensor (the Transformer's layout)."""
    return like.new_empty(length, n, dh).transpose(0, 1)


class _FusedAttention(torch.autograd.Function):
    """The compiled kernel (``csrc/attention.c``): one pass per query row, mask redrawn in backward."""

    @staticmethod
    def forward(ctx, q, k, v, offset, p):  # q (N, Lq, dh), k/v (N, Lk, dh) float32, channels contiguous
        lib = native.library()
        n, len_q, dh = q.shape
        len_k = k.shape[1]
        p24 = _p24(p)
        seed = _seed() if p24 else 0
        scale, keep_scale = dh**-0.5, 1.0 / (1.0 - p)
        out = _time_first(n, len_q, dh, q)
        lse = q.new_empty(n, len_q)
        args = (n, len_q, len_k, dh, offset, scale, keep_scale, p24, seed, torch.get_num_threads())
        _check(
            lib.dmd_attention_forward(*_strided(q), *_strided(k), *_strided(v), *_strided(out), lse.data_ptr(), *args)
        )
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = args
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
        n, len_q, len_k, dh = ctx.args[:4]
        dq, dk, dv = _time_first(n, len_q, dh, q), _time_first(n, len_k, dh, q), _time_first(n, len_k, dh, q)
        _check(native.library().dmd_attention_backward(
            *_strided(q), *_strided(k), *_strided(v), *_strided(out), *_strided(grad_out), lse.data_ptr(),
            *_strided(dq), *_strided(dk), *_strided(dv), *ctx.args,
        ))  # fmt: skip
        return dq, dk, dv, None, None


def _check(code: int) -> None:
    if code:
        raise RuntimeError(f"native attention kernel failed (code {code}: 1 bad sizes, 2 out of memory)")


def native_keep_mask(seed: int, n: int, len_q: int, len_k: int, p: float) -> torch.Tensor:
    """The native kernel's keep flags ``(n, len_q, len_k)`` (bool) for ``seed``: what its dropout applies."""
    keep = torch.empty(n, len_q, len_k, dtype=torch.uint8)
    _check(native.library().dmd_keep_mask(keep.data_ptr(), n, len_q, len_k, _p24(p), seed))
    return keep.bool()


def uses_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, p: float) -> bool:
    """Whether :func:`tiled_attention` runs the compiled kernel for these arguments.

    It does for float32 CPU tensors, masks given as None or an offset >= 0, ``p < 1``, head
    size up to 64, when the switch allows it (:data:`dmd_core.kernels.switch.BACKEND` is ``"auto"``) and the kernel
    builds; otherwise the PyTorch tiling computes the same function.
    """
    if switch.BACKEND != "auto" or isinstance(mask, torch.Tensor) or (mask is not None and mask < 0) or p >= 1:
        return False
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (q, k, v)) or not 0 < q.shape[-1] <= 64:
        return False
    return k.shape[1] > 0 and native.library() is not None


def tiled_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | int | None, p: float
) -> torch.Tensor:
    """Attention with dropout ``p`` over ``(N, L, d_h)`` CPU tensors (any strides; N = batch x heads).

    ``mask``: None (attend everywhere); an int ``offset``: key ``j`` is hidden from query ``i``
    when ``j > i + offset`` (0: causal; the reference's mask is ``offset = |Lk - Lq|``); or a
    boolean ``(Lq, Lk)`` tensor, True = attend. Every query must see at least one key.
    Returns ``(N, Lq, d_h)``: from the compiled kernel (see :func:`uses_native`) a view of a
    time-first ``(Lq, N, d_h)`` tensor, otherwise laid out in memory like ``q``.
    """
    n, len_q, _ = q.shape
    len_k = k.shape[1]
    if uses_native(q, k, v, mask, p):
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        return _FusedAttention.apply(q, k, v, len_k if mask is None else mask, p)
    if isinstance(mask, torch.Tensor):
        bias, tiles = _general_plan(mask, n)
    else:
        bias, tiles = _plan(len_q, len_k, n, mask)
    return _TiledAttention.apply(q, k, v, bias.to(q.dtype), p, tiles)
