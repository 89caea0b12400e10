"""DMD's training objective, as plain functions (the book's method reference: "Decoupling losses",
"Graph distillation (GD-Unit)", "Task loss and total loss").

``total_loss(model, output, labels)`` returns every part, so a trainer or a
notebook can log them; each part is also available on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass

import torch
import torch.nn.functional as F

from .config import MODALITIES
from .distill import GDLosses, cosine_along
from .model import DMD, Decoupled, DMDOutput


def task_loss(output: DMDOutput, labels: torch.Tensor) -> torch.Tensor:
    """L1 between the labels and each of the eight predictions, summed."""
    y = labels.reshape(-1, 1).to(output.prediction.dtype)
    return sum(F.l1_loss(p, y) for p in output.predictions())  # type: ignore[return-value]


def reconstruction_loss(dec: Decoupled) -> torch.Tensor:
    """``sum_m MSE(recon_m, x_m)`` (``x_m`` not detached, as the reference)."""
    return sum(F.mse_loss(dec.recon[m], dec.x[m]) for m in MODALITIES)  # type: ignore[return-value]


def cycle_loss(dec: Decoupled) -> torch.Tensor:
    """``sum_m MSE(s_m, E_m(recon_m))``."""
    return sum(F.mse_loss(dec.private[m], dec.private_cycle[m]) for m in MODALITIES)  # type: ignore[return-value]


def orthogonality_loss(dec: Decoupled, axis: str = "batch") -> torch.Tensor:
    """``sum_m mean(max(0, cos(s_m, c_m)))``.

    ``axis="batch"``: the published recipe. The reference hands ``(T, B, d)``
    tensors and a one-element target to ``CosineEmbeddingLoss``; PyTorch 1.9
    then took the cosine along dim 1, the *batch* axis: one cosine per (time
    step, channel) between two B-vectors. ``axis="feature"``: one cosine per
    (sample, time step) between the d-vectors, what the paper means.
    """
    if axis not in ("batch", "feature"):
        raise ValueError(f"orthogonality_loss: axis must be 'batch' or 'feature', found {axis!r}")
    dim = 0 if axis == "batch" else 1  # features are (B, d, T) here
    return sum(  # type: ignore[return-value]
        F.relu(cosine_along(dec.private[m], dec.shared[m], dim=dim)).mean() for m in MODALITIES
    )


def _pair_cosine(x: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine of the rows of ``x (N, F)`` with the reference's norm: ``max(sqrt(|x|^2 + 1e-8), 1e-8)``."""
    unit = x / (x.pow(2).sum(1, keepdim=True) + 1e-8).sqrt().clamp_min(1e-8)
    return unit @ unit.T


def margin_loss_definition(features: torch.Tensor, labels: torch.Tensor, scale: float = 0.15) -> torch.Tensor:
    """The margin loss as the paper defines it and the reference computes it: a loop over anchors.

    The readable definition (method reference, "Margin"); :func:`margin_loss` computes the
    same number without the loop and is tested and benchmarked against this one. ``features (3, B, d)`` stacked L, V, A; ``labels (B,)`` or ``(B, 1)``.
    """
    n_mod, batch, dim = features.shape
    x = features.transpose(0, 1).reshape(-1, dim)  # sample-major: L, V, A of sample 0, then 1, ...
    y = labels.reshape(-1).to(x.dtype).repeat_interleave(n_mod)
    n = x.shape[0]
    norm = (x.pow(2).sum(1) + 1e-8).sqrt().clamp_min(1e-8)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    cosine = ((x @ x.T) / (norm[:, None] * norm[None, :]))[off_diagonal].view(n, n - 1)
    ids = y[None, :].expand(n, n)[off_diagonal].view(n, n - 1)
    total, count = x.new_zeros(()), 0
    for a in range(n):
        same = ids[a] == y[a]
        n_pos, n_neg = int(same.sum()), int((~same).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        pos = cosine[a, same].reshape(-1, 1)  # (P, 1)
        neg = cosine[a, ~same].reshape(1, -1)  # (1, N)
        margin = scale * (y[a] - ids[a, ~same]).abs().reshape(1, -1)
        total = total + torch.clamp_min(margin - pos + neg, 0).mean()
        count += 1
    return total / max(count, 1)


def margin_loss(features: torch.Tensor, labels: torch.Tensor, scale: float = 0.15) -> torch.Tensor:
    """The margin (hinge) loss on shared features, without a loop over samples.

    ``features (3, B, d)`` stacked L, V, A; ``labels (B,)`` or ``(B, 1)``. The 3B
    vectors (sample-major) are anchors; for anchor ``a``, positives are the other
    vectors with exactly the same label, negatives the rest, and
    ``loss_a = mean_{p, n} max(0, scale*|y_a - y_n| - cos_ap + cos_an)``. The
    result is the mean over anchors with at least one positive and one negative
    (0 when there is none, e.g. a batch of one).
    """
    n_mod, batch, dim = features.shape
    x = features.transpose(0, 1).reshape(n_mod * batch, dim)  # (3B, d): L, V, A of sample 0, then 1, ...
    y = labels.reshape(-1).to(x.dtype).repeat_interleave(n_mod)  # (3B,)
    if y.numel() != x.shape[0]:
        raise ValueError(f"margin_loss: {batch} feature rows per modality but {labels.numel()} labels")
    n = len(y)
    with torch.no_grad():  # which pairs count, and with which weight: labels only
        diff = y.unsqueeze(1) - y.unsqueeze(0)  # (anchor, other)
        neg = diff != 0  # (anchor, negative)
        pos = ~neg
        pos.fill_diagonal_(False)  # (anchor, positive): same label, another vector
        w_neg, w_pos = neg.to(x.dtype), pos.to(x.dtype)
        n_pos = w_pos.sum(1, keepdim=True)
        n_neg = (n - 1) - n_pos
        valid = (n_pos > 0) & (n_neg > 0)  # anchors with at least one (positive, negative) pair
        # mean over an anchor's n_pos * n_neg pairs, then over valid anchors: weight w_pos[a, p] * w_neg[a, n]
        w_pos *= valid / (n_pos * n_neg).clamp_min(1) / valid.sum().clamp_min(1)
        margin = diff.abs_().mul_(scale)  # (anchor, negative)
    cos = _pair_cosine(x)  # (3B, 3B)
    return _WeightedHinge.apply(margin + cos, cos, w_pos, w_neg)


class _WeightedHinge(torch.autograd.Function):
    """``sum_a sum_{p,n} w_pos[a, p] * w_neg[a, n] * max(0, t[a, n] - s[a, p])`` and its gradient.

    Written out by hand so that the ``(3B, 3B, 3B)`` hinge tensor is touched four times
    (difference, clamp, and the active mask in the backward) instead of the eight passes
    autograd makes through broadcasting, ReLU and reductions.
    """

    @staticmethod
    def forward(ctx, t, s, w_pos, w_neg):  # t (A, N) thresholds of negatives, s (A, P) cosines of positives
        hinge = (t.unsqueeze(1) - s.unsqueeze(2)).clamp_min_(0)  # (A, P, N)
        ctx.save_for_backward(hinge, w_pos, w_neg)
        return torch.bmm(torch.bmm(w_pos.unsqueeze(1), hinge), w_neg.unsqueeze(2)).sum()

    @staticmethod
    def backward(ctx, grad):
        hinge, w_pos, w_neg = ctx.saved_tensors
        active = hinge.sign()  # (A, P, N): 1 where the hinge is active (hinge >= 0 everywhere)
        grad_t = grad * w_neg * torch.bmm(w_pos.unsqueeze(1), active).squeeze(1)  # sum over positives
        grad_s = -grad * w_pos * torch.bmm(active, w_neg.unsqueeze(2)).squeeze(2)  # sum over negatives
        return grad_t, grad_s, None, None


@dataclass
class LossParts:
    """Every part of the DMD objective for one batch; ``total`` is what is minimised."""

    total: torch.Tensor
    task: torch.Tensor
    recon: torch.Tensor
    cycle: torch.Tensor
    ort: torch.Tensor
    margin: torch.Tensor
    homo_gd: torch.Tensor
    homo_reg: torch.Tensor
    homo_logit: torch.Tensor
    homo_repr: torch.Tensor
    hetero_gd: torch.Tensor
    hetero_reg: torch.Tensor
    hetero_logit: torch.Tensor
    hetero_repr: torch.Tensor

    def detached(self) -> dict[str, torch.Tensor]:
        """Detached parts as a dict of 0-d tensors (no host sync)."""
        return {f.name: getattr(self, f.name).detach() for f in fields(self)}

    def as_dict(self) -> dict[str, float]:
        """Parts as Python floats (synchronises with the device)."""
        return {k: float(v) for k, v in self.detached().items()}


def _float32(obj):
    """``obj`` (an output dataclass, a dict, a tensor) with every floating tensor in float32 (float32 ones untouched)."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    if is_dataclass(obj):
        return type(obj)(**{f.name: _float32(getattr(obj, f.name)) for f in fields(obj)})
    return obj


def total_loss(model: DMD, output: DMDOutput, labels: torch.Tensor) -> LossParts:
    """``task + HomoGD + HeteroGD + w_dec * (cycle + recon + w_sim * (margin + ort))``.

    Always in float32: under bf16/fp16 autocast the model's outputs are cast up and every part is
    computed with autocast off, so labels are never rounded to the low precision and the losses,
    their sum and the gradients' starting point are float32 (in float32 training nothing changes).
    """
    with torch.autocast(output.prediction.device.type, enabled=False):
        return _total_loss(model, _float32(output), labels.float())


def _total_loss(model: DMD, output: DMDOutput, labels: torch.Tensor) -> LossParts:
    cfg = model.config
    dec = output.decoupled
    task = task_loss(output, labels)
    recon, cycle = reconstruction_loss(dec), cycle_loss(dec)
    ort = orthogonality_loss(dec, cfg.ort_axis)
    margin = margin_loss(torch.stack([dec.shared_sim[m] for m in MODALITIES]), labels, cfg.margin_scale)
    homo: GDLosses = model.homo_gd.losses(output.homo.logits, output.homo.reprs, output.homo_graph)
    hetero: GDLosses = model.hetero_gd.losses(output.hetero.logits, output.hetero.reprs, output.hetero_graph)
    total = task + homo.total + hetero.total + cfg.decouple_weight * (cycle + recon + cfg.sim_weight * (margin + ort))
    return LossParts(
        total=total, task=task, recon=recon, cycle=cycle, ort=ort, margin=margin,
        homo_gd=homo.total, homo_reg=homo.reg, homo_logit=homo.logit, homo_repr=homo.repr,
        hetero_gd=hetero.total, hetero_reg=hetero.reg, hetero_logit=hetero.logit, hetero_repr=hetero.repr,
    )  # fmt: skip
