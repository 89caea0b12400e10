"""Graph distillation: the GD-Unit, one class for HomoGD and HeteroGD (the book's method reference,
"Graph distillation (GD-Unit)").

A GD-Unit looks at the three modalities' logits and representations, scores
the six directed edges ``i -> j`` (teacher ``i`` distils into student ``j``),
normalises them per sample with a softmax, and turns them into weighted
distillation losses. HomoGD and HeteroGD differ only in sizes, prior and the
representation distance, which are constructor arguments here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import MODALITIES, DMDConfig

# Edge k distils teacher TEACHERS[k] into student STUDENTS[k] (indices into L, V, A).
# Order as in the reference: for student j in (L, V, A), for teacher i != j.
STUDENTS = (0, 0, 1, 1, 2, 2)
TEACHERS = (1, 2, 0, 2, 0, 1)
EDGE_NAMES = tuple(f"{MODALITIES[i]}->{MODALITIES[j]}" for j, i in zip(STUDENTS, TEACHERS))
# ("V->L", "A->L", "L->V", "A->V", "L->A", "V->A")


def cosine_along(x: torch.Tensor, y: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity along ``dim`` exactly as ``CosineEmbeddingLoss`` computes it.

    ``sum(x*y) / sqrt((sum(x^2) + eps) * (sum(y^2) + eps))``.
    """
    dot = (x * y).sum(dim)
    return dot / ((x * x).sum(dim).add(eps) * (y * y).sum(dim).add(eps)).sqrt()


@dataclass
class Graph:
    """What a GD-Unit says about one batch.

    ``edges``: (6, B) normalised edge weights (softmax over the six edges of
    each sample), in the order of :data:`EDGE_NAMES`. ``raw``: (6, B) edge scores
    before the softmax.
    """

    edges: torch.Tensor
    raw: torch.Tensor

    @property
    def raw_sum(self) -> torch.Tensor:
        """(6, 1) raw scores summed over the batch (the reference's ``edges_origin``)."""
        return self.raw.sum(1, keepdim=True)


@dataclass
class GDLosses:
    """A GD-Unit's losses. ``reg``, ``logit``, ``repr`` are before the unit weight (0.05)."""

    reg: torch.Tensor
    logit: torch.Tensor
    repr: torch.Tensor
    total: torch.Tensor


class GraphDistillation(nn.Module):
    """A GD-Unit over the modalities L, V, A.

    Args:
        repr_dim: size ``H`` of each modality's representation.
        gd_size: hidden size ``g`` of the logit and representation embeddings.
        prior: six values ``v`` (edge order :data:`EDGE_NAMES`); the prior is
            ``softmax(v / prior_temperature)``.
        repr_distance: ``"l1"`` (HomoGD: summed absolute difference per sample)
            or ``"cosine"`` (HeteroGD: the reference's ``CosineEmbeddingLoss``
            with target -1, which penalises *positive* cosine between student
            and teacher, i.e. pushes them apart).
        repr_in_total: whether the representation loss enters ``total``. The
            reference computes HomoGD's but never adds it (False there).
    """

    def __init__(
        self,
        repr_dim: int,
        gd_size: int,
        prior: tuple[float, ...],
        repr_distance: Literal["l1", "cosine"],
        repr_in_total: bool = True,
        alpha: float = 1 / 8,
        prior_temperature: float = 0.25,
        reg_weight: float = 10.0,
        logit_weight: float = 1.0,
        repr_weight: float = 10.0,
        weight: float = 0.05,
    ) -> None:
        super().__init__()
        if repr_distance not in ("l1", "cosine"):
            raise ValueError(f"GraphDistillation: repr_distance must be 'l1' or 'cosine', found {repr_distance!r}")
        self.W_logit = nn.Linear(1, gd_size)
        self.W_repr = nn.Linear(repr_dim, gd_size)
        self.W_edge = nn.Linear(4 * gd_size, 1)
        self.repr_distance, self.repr_in_total = repr_distance, repr_in_total
        self.alpha, self.reg_weight, self.weight = alpha, reg_weight, weight
        self.logit_weight, self.repr_weight = logit_weight, repr_weight
        self.register_buffer(
            "prior", torch.softmax(torch.tensor(prior, dtype=torch.float32) / prior_temperature, 0), persistent=False
        )
        self.register_buffer("students", torch.tensor(STUDENTS), persistent=False)
        self.register_buffer("teachers", torch.tensor(TEACHERS), persistent=False)

    @classmethod
    def homo(cls, cfg: DMDConfig) -> GraphDistillation:
        """HomoGD: on the shared features' heads, L1 representation distance."""
        return cls(cfg.d, cfg.homo_gd_size, cfg.homo_prior, "l1", cfg.homo_repr_in_total, **_common(cfg))

    @classmethod
    def hetero(cls, cfg: DMDConfig) -> GraphDistillation:
        """HeteroGD: on the cross-modal heads, the reference's cosine representation term."""
        return cls(2 * cfg.d, cfg.hetero_gd_size, cfg.hetero_prior, "cosine", True, **_common(cfg))

    def forward(self, logits: torch.Tensor, reprs: torch.Tensor) -> Graph:
        """``logits (3, B, 1)``, ``reprs (3, B, H)`` stacked L, V, A -> :class:`Graph`."""
        q = torch.cat([self.W_logit(logits), self.W_repr(reprs)], dim=-1)  # (3, B, 2g)
        pairs = torch.cat([q[self.students], q[self.teachers]], dim=-1)  # (6, B, 4g): [student, teacher]
        raw = self.W_edge(pairs).squeeze(-1)  # (6, B)
        return Graph(edges=torch.softmax(self.alpha * raw, dim=0), raw=raw)

    def losses(self, logits: torch.Tensor, reprs: torch.Tensor, graph: Graph) -> GDLosses:
        """Regulariser and edge-weighted distillation losses; teachers are detached."""
        prior = self.prior.to(graph.edges.dtype)
        weights = graph.edges + prior.unsqueeze(1)  # (6, B): w_k + pi_k per sample
        reg = self.reg_weight * (graph.edges.mean(1) - prior).pow(2).sum()
        student_logit, teacher_logit = logits[self.students], logits[self.teachers].detach()
        logit = self.logit_weight * (weights * (student_logit - teacher_logit).abs().sum(-1)).mean(1).sum()
        student, teacher = reprs[self.students], reprs[self.teachers].detach()  # (6, B, H)
        if self.repr_distance == "l1":
            rep = (weights * (student - teacher).abs().sum(-1)).mean(1).sum()
        else:  # CosineEmbeddingLoss(target=-1, margin 0) per edge, times the edge's mean weight
            rep = (F.relu(cosine_along(student, teacher, dim=-1)).mean(1) * weights.mean(1)).sum()
        rep = self.repr_weight * rep
        total = self.weight * (logit + reg + (rep if self.repr_in_total else 0.0))
        return GDLosses(reg=reg, logit=logit, repr=rep, total=total)


def _common(cfg: DMDConfig) -> dict:
    return dict(
        alpha=cfg.gd_alpha, prior_temperature=cfg.gd_prior_temperature, reg_weight=cfg.gd_reg_weight,
        logit_weight=cfg.gd_logit_weight, repr_weight=cfg.gd_repr_weight, weight=cfg.gd_weight,
    )  # fmt: skip
