"""Speed code: fast implementations of attention and dropout (a reader learning DMD may skip this).

The model calls two functions, :func:`attention` and :func:`dropout`; they compute exactly the
plain definitions in :mod:`dmd_core.kernels.definition`, only faster:

* on CPU, attention runs in a small compiled C kernel (``csrc/attention.c``, built on first use
  by :mod:`~dmd_core.kernels.native`) or, where no C compiler works, in a tiling written with
  PyTorch ops (:mod:`~dmd_core.kernels.tiled`); dropout draws its mask from numpy's fast
  generator;
* on GPUs (and under ``torch.compile``), attention is PyTorch's
  ``scaled_dot_product_attention`` and dropout is ``F.dropout``.

**One switch** chooses (:mod:`~dmd_core.kernels.switch`): ``kernels.BACKEND``, set from the environment
variable ``DMD_KERNELS`` at import (``auto``, the default; ``tiled``: never build or use the compiled kernel;
``torch``: PyTorch's own functions everywhere) and changed for a block with :func:`use`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import definition, switch, tiled
from .switch import BACKENDS, Backend, use


def __getattr__(name: str):
    if name == "BACKEND":  # the switch's current value (use() changes it)
        return switch.BACKEND
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fast_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and switch.BACKEND != "torch" and not torch.compiler.is_compiling()


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | str | None, p: float
) -> torch.Tensor:
    """Multi-head :func:`~dmd_core.kernels.definition.attention` on time-first inputs.

    ``q (Lq, B, d)``, ``k``/``v (Lk, B, d)`` (``d = heads * d_h``) -> ``(Lq, B, d)``. ``mask``:
    None, a boolean ``(Lq, Lk)`` tensor (True = attend), or ``"causal"``: key ``j`` hidden from
    query ``i`` when ``j > i + |Lk - Lq|`` (the reference's mask; causal for equal lengths).
    """
    len_q, batch, dim = q.shape
    len_k, n, dh = k.shape[0], batch * heads, dim // heads
    causal = isinstance(mask, str)
    if _fast_cpu(q):

        def split(t: torch.Tensor) -> torch.Tensor:  # (L, B, d) -> (B*h, L, d/h), a view: no copy
            return t.reshape(t.shape[0], n, dh).transpose(0, 1)

        offset = abs(len_k - len_q) if causal else mask
        out = tiled.tiled_attention(split(q), split(k), split(v), offset, p).transpose(0, 1)  # (Lq, B*h, dh)
        return out.reshape(len_q, batch, dim)

    def split_heads(t: torch.Tensor) -> torch.Tensor:  # (L, B, d) -> (B, h, L, d/h)
        return t.reshape(t.shape[0], batch, heads, dh).permute(1, 2, 0, 3)

    square = len_q == len_k
    if causal and not square:
        mask = _future_mask(len_q, len_k, q.device)
    out = F.scaled_dot_product_attention(
        split_heads(q), split_heads(k), split_heads(v), attn_mask=None if causal and square else mask,
        dropout_p=p, is_causal=causal and square,
    )  # fmt: skip
    return out.permute(2, 0, 1, 3).reshape(len_q, batch, dim)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """:func:`~dmd_core.kernels.definition.dropout`; on CPU with a 5x faster mask generator."""
    if not training or p == 0:
        return x
    if p >= 1 or not _fast_cpu(x):
        return F.dropout(x, p, training)
    return tiled.fast_dropout(x, p)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)  # cached for later calls, also ones that save it for backward
def _future_mask(len_q: int, len_k: int, device: torch.device) -> torch.Tensor:
    """:func:`~dmd_core.kernels.definition.future_mask`, built once per shape and device."""
    return definition.future_mask(len_q, len_k, device)


__all__ = ["BACKEND", "BACKENDS", "Backend", "use", "attention", "dropout", "definition"]
