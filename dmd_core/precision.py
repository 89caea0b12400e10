"""Precision: ``TrainConfig.precision`` (fp32, bf16, fp16 or auto) as an autocast context, fp16's gradient
scaler, and the recipe's clip-by-value kept exact under that scaler (:func:`clip_gradients`).

The training loop (:meth:`dmd_core.trainer.Trainer.train_epoch`) writes the scaler's calls as PyTorch's
automatic-mixed-precision examples do: ``scaler.scale(loss).backward()``, ``scaler.step(optimizer)``,
``scaler.update()``; for fp32 and bf16 the scaler is disabled and each call is the plain one.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from .config import PRECISIONS

__all__ = ["AUTOCAST_DTYPES", "resolve_precision", "autocast", "grad_scaler", "clip_gradients"]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str | bool, device: torch.device) -> str:
    """What ``precision`` (``TrainConfig.precision``) means on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"``: bf16 on CUDA GPUs with bf16 units (Ampere and later), fp16 on older GPUs (T4,
    V100; bf16 would only be emulated there), fp32 on CPU and MPS. An explicit ``"bf16"`` or
    ``"fp16"`` is taken as asked, on any device (CPU autocast included). ``True``/``False``:
    the former ``bf16`` flag.
    """
    if isinstance(precision, bool):
        precision = "bf16" if precision else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def autocast(device: torch.device, precision: str | bool = "fp32"):
    """Autocast to ``precision`` (see :func:`resolve_precision`) on ``device``; a no-op context for fp32.

    Labels, losses and metrics stay float32: :func:`~dmd_core.losses.total_loss` computes
    every loss in float32 from the low-precision outputs.
    """
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[resolved])


def grad_scaler(device: torch.device, precision: str | bool) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (whose small range needs the loss scaled up)."""
    return torch.amp.GradScaler(device.type, enabled=resolve_precision(precision, device) == "fp16")


def clip_gradients(
    params: list[torch.nn.Parameter], value: float, scaler: torch.amp.GradScaler, found_inf: torch.Tensor
) -> None:
    """Clip the running sum of gradients by ``value`` (the recipe's clip after every backward; 0: no clip).

    fp32 and bf16 (``scaler`` disabled): ``clip_grad_value_``. fp16: the loss was scaled by S before
    each backward, so the running sum holds S times the true gradients; S changes only in
    ``scaler.update()`` after a step, so it is fixed within an accumulation group, and clipping the
    scaled sum at ``value * S`` is clipping the true sum at ``value`` (S is a power of two: exact).
    An overflow is recorded first (in ``found_inf``, a scalar buffer on the device), since clipping
    would turn an infinity into a finite ``value * S``; it is then left as a NaN in the first gradient,
    which stays NaN through the group's later backward passes and clips, so that ``scaler.step``
    finds it and skips the step (lowering S). Nothing here waits for the device.
    """
    if not scaler.is_enabled():
        if value > 0:
            torch.nn.utils.clip_grad_value_(params, value)
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    found_inf.zero_()
    # inv_scale 1: the gradients stay as they are, only the overflow is recorded.
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.ones_like(found_inf))
    if value > 0:
        bound = scaler.scale(torch.full_like(found_inf, value))  # value * S, on the device
        for g in grads:
            g.clamp_(-bound, bound)
    grads[0].masked_fill_(found_inf > 0, math.nan)
