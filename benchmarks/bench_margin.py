"""Margin loss: the vectorised ``dmd_core.losses.margin_loss`` against the spec's loop definition.

Batch 16 (48 vectors of the official MOSI width d=50), labels on the MOSI grid with ties,
forward and backward, CPU. Prints the ratio and appends it to benchmarks/results/margin.md.
Run: ``python benchmarks/bench_margin.py [--threads 2] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dmd_core.bench import append_rows, machine_info
from dmd_core.losses import margin_loss, margin_loss_definition

RESULTS = Path(__file__).resolve().parent / "results" / "margin.md"


def time_per_call(fn, feats, labels, calls: int) -> float:
    """Seconds per forward + backward, over ``calls`` consecutive calls (warm caches, as in training)."""
    start = time.perf_counter()
    for _ in range(calls):
        fn(feats.detach().requires_grad_(True), labels).backward()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10, help="timed blocks per implementation (median)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, args.batch, args.dim, generator=g)
    labels = torch.randint(-9, 10, (args.batch,), generator=g).float() / 3  # MOSI-like grid, ties likely
    torch.testing.assert_close(margin_loss(feats, labels), margin_loss_definition(feats, labels))
    fast, loop = [], []
    for _ in range(args.repeats):  # blocks interleaved, so load changes hit both alike
        fast.append(time_per_call(margin_loss, feats, labels, 50))
        loop.append(time_per_call(margin_loss_definition, feats, labels, 5))
    t_fast, t_loop = statistics.median(fast), statistics.median(loop)
    ratio = t_loop / t_fast
    print(f"batch {args.batch}: vectorised {t_fast * 1e3:.2f} ms, loop {t_loop * 1e3:.1f} ms, speed-up {ratio:.0f}x")
    m = machine_info(torch.device("cpu"))
    append_rows(
        RESULTS,
        "# Margin loss: vectorised vs loop definition (forward + backward, CPU)\n\n"
        "| date | commit | batch | threads | vectorised ms | loop ms | speed-up | cpu |\n|---|---|---|---|---|---|---|---|\n",
        [f"| {m['date']} | {m['commit']} | {args.batch} | {torch.get_num_threads()} | {t_fast * 1e3:.2f} "
         f"| {t_loop * 1e3:.1f} | {ratio:.0f}x | {m['cpu']} |"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
