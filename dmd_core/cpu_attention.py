"""Attention with dropout for long sequences on CPU, computed block by block.

On CPU, ``scaled_dot_product_attention`` has no fused kernel for attention
dropout: it falls back to materialising the whole ``(B, h, Lq, Lk)`` score
tensor (tens of millions of values for unaligned MOSI/MOSEI) and makes a dozen
passes over it in memory. This module computes the same thing a few
``(batch, head)`` slices at a time, so each score block stays in cache, and
recomputes the blocks in the backward pass instead of storing them (the
FlashAttention idea, in plain PyTorch ops). The dropout mask of each block is
drawn from a numpy PCG64 stream seeded from torch's generator, so
``torch.manual_seed`` reproduces it and the backward pass regenerates it.

The result equals ``softmax(q k^T * scale + mask) * keep / (1 - p) @ v`` with
``keep ~ Bernoulli(1 - p)`` i.i.d., exactly the distribution of
``scaled_dot_product_attention(..., dropout_p=p)``; only the random stream
differs.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK_BYTES = 1 << 20  # aim for ~1 MiB of scores per block: fits a core's L2


def _dropout_multiplier(seed: int, block: int, shape: tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """``keep / (1 - p)`` with ``keep ~ Bernoulli(1 - p)``, for block ``block`` of the stream ``seed``."""
    rng = np.random.Generator(np.random.PCG64([seed, block]))
    uniform = torch.from_numpy(rng.random(int(np.prod(shape)), dtype=np.float32)).view(shape)
    return uniform.ge_(p).mul_(1.0 / (1.0 - p)).to(dtype)


class _BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, p, seed, block):  # q (N, Lq, dh), k/v (N, Lk, dh)
        scale = q.shape[-1] ** -0.5
        out = torch.empty_like(q)
        for b, start in enumerate(range(0, q.shape[0], block)):
            sl = slice(start, start + block)
            attn = _probs(q[sl], k[sl], bias, scale)
            attn.mul_(_dropout_multiplier(seed, b, tuple(attn.shape), p, attn.dtype))
            torch.bmm(attn, v[sl], out=out[sl])
        ctx.save_for_backward(q, k, v, out, bias)
        ctx.p, ctx.seed, ctx.block, ctx.scale = p, seed, block, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, bias = ctx.saved_tensors
        p, seed, block, scale = ctx.p, ctx.seed, ctx.block, ctx.scale
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        # rowsum(dA_dropped * A_dropped) = rowsum(dO * O): the softmax backward's correction term.
        delta = (grad_out * out).sum(-1, keepdim=True)  # (N, Lq, 1)
        for b, start in enumerate(range(0, q.shape[0], block)):
            sl = slice(start, start + block)
            attn = _probs(q[sl], k[sl], bias, scale)
            mult = _dropout_multiplier(seed, b, tuple(attn.shape), p, attn.dtype)
            torch.bmm((attn * mult).transpose(1, 2), grad_out[sl], out=dv[sl])
            grad_attn = torch.bmm(grad_out[sl], v[sl].transpose(1, 2))
            grad_attn.mul_(mult).sub_(delta[sl]).mul_(attn)  # dS
            torch.bmm(grad_attn, k[sl], out=dq[sl]).mul_(scale)
            torch.bmm(grad_attn.transpose(1, 2), q[sl], out=dk[sl]).mul_(scale)
        return dq, dk, dv, None, None, None, None


def _probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T + bias)`` for one block; ``bias (Lq, Lk)`` holds 0 or -inf."""
    return torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale), dim=-1)


def block_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None, p: float
) -> torch.Tensor:
    """Attention with dropout ``p`` over ``(B, h, L, d_h)`` float32 CPU tensors.

    ``allowed``: boolean ``(Lq, Lk)`` mask (True = attend) or None.
    """
    B, h, len_q, dh = q.shape
    len_k = k.shape[2]
    block = max(1, BLOCK_BYTES // (4 * len_q * len_k))
    seed = int(torch.randint(0, 2**62, (1,)).item())
    flat = [t.reshape(B * h, t.shape[2], dh).contiguous() for t in (q, k, v)]
    bias = torch.zeros(len_q, len_k, dtype=q.dtype)
    if allowed is not None:
        bias.masked_fill_(~allowed, float("-inf"))
    out = _BlockAttention.apply(*flat, bias, p, seed, block)
    return out.reshape(B, h, len_q, dh)
