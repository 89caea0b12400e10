"""One training epoch's running sums (:class:`EpochStats`), kept on the device: every loss part, the GD edges,
and the first mini-batch whose loss was not finite, for the trainer's non-finite check
(:meth:`dmd_core.trainer.Trainer.train_epoch`)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .distill import EDGE_NAMES
from .losses import LossParts
from .model import DMDOutput

PARTS = tuple(f.name for f in LossParts.__dataclass_fields__.values())  # total, task, recon, ...

__all__ = ["PARTS", "EpochStats"]


class EpochStats:
    """One epoch's running sums, kept on the device (no host synchronisation per mini-batch).

    Every loss part, the GD edges summed over samples, and the first mini-batch whose loss was
    not finite (with its loss parts), for the trainer's non-finite check. The counts of mini-batches
    and samples are Python integers: known on the host, they need no tensor (a tensor built from
    them would be a host-to-device copy per mini-batch).
    """

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(PARTS), device=device)
        self.edges = torch.zeros(2, 6, device=device)  # homo, hetero
        self.batches, self.samples = 0, 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_parts = torch.zeros(len(PARTS), device=device)

    def add(self, index: int, parts: LossParts, out: DMDOutput) -> None:
        values = torch.stack([v.float() for v in parts.detached().values()])  # (len(PARTS),)
        self.sums += values
        newly_bad = (~torch.isfinite(values).all()) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, torch.full_like(self.first_bad, index), self.first_bad)
        self.bad_parts = torch.where(newly_bad, values, self.bad_parts)
        self.edges[0] += out.homo_graph.edges.detach().float().sum(1)
        self.edges[1] += out.hetero_graph.edges.detach().float().sum(1)
        self.batches += 1
        self.samples += out.prediction.shape[0]

    def all_reduce(self) -> None:
        """Sum over DDP ranks; the first bad mini-batch is this rank's, else any other rank's."""
        counts = torch.tensor([self.batches, self.samples], dtype=torch.long, device=self.sums.device)
        for t in (self.sums, self.edges, counts):
            dist.all_reduce(t)
        self.batches, self.samples = (int(c) for c in counts.tolist())
        any_bad = self.first_bad.clone()
        dist.all_reduce(any_bad, op=dist.ReduceOp.MAX)
        self.first_bad = torch.where(self.first_bad >= 0, self.first_bad, any_bad)

    def first_non_finite(self) -> tuple[int, dict[str, float]]:
        """``(mini-batch index, {part: value})`` of the first non-finite loss, or ``(-1, {})``."""
        step = int(self.first_bad)
        if step < 0:
            return step, {}
        values = zip(PARTS, self.bad_parts.cpu().tolist())
        return step, {p: v for p, v in values if not math.isfinite(v)}

    def row(self) -> dict[str, float]:
        """``train_<part>`` (mean over mini-batches) and ``train_<unit>_<edge>`` (mean over samples)."""
        sums, edges = self.sums.tolist(), self.edges.tolist()
        row = {f"train_{p}": s / self.batches for p, s in zip(PARTS, sums)}
        for unit, unit_edges in zip(("homo", "hetero"), edges):
            row.update({f"train_{unit}_{e}": s / self.samples for e, s in zip(EDGE_NAMES, unit_edges)})
        return row
