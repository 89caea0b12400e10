"""CPU attention: the compiled kernel and the PyTorch tiling of ``dmd_core.kernels`` against SDPA.

The attention maps of one official MOSI training step (batch 16, heads 10, head size 5, or 10 in
the memory Transformers) and MOSEI's aligned map (heads 6, head size 5), each with the reference's
mask and its dropout rate: forward + backward in training, forward alone in evaluation. The three
implementations (``scaled_dot_product_attention``, ``tiled_attention`` under
``kernels.use("tiled")``, and under ``"auto"``: the compiled kernel) run interleaved in one
process, so a change of machine load hits all alike; prints the ratios and appends a row per map
to benchmarks/results/attention.md (the earlier tiling-vs-SDPA rows are in
attention-tiling-vs-sdpa.md).
Run: ``python benchmarks/bench_attention.py [--threads 2] [--repeats 5] [--maps 46x46] [--results FILE]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dmd_core import kernels
from dmd_core.bench import append_rows, machine_info
from dmd_core.kernels import native
from dmd_core.kernels.definition import future_mask
from dmd_core.kernels.tiled import tiled_attention

RESULTS = Path(__file__).resolve().parent / "results" / "attention.md"

# (name, Lq, Lk, dropout, heads, head size): unaligned MOSI after the temporal convolutions (L 46, V 496,
# A 371), the aligned maps (46 x 46), and MOSEI aligned (width 30, 6 heads; its text map is 46 x 46).
MAPS = [
    ("aligned self/cross 46x46", 46, 46, 0.3, 10, 5),
    ("MOSEI aligned 46x46", 46, 46, 0.4, 6, 5),
    ("shared V 496x496", 496, 496, 0.0, 10, 5),
    ("shared A 371x371", 371, 371, 0.2, 10, 5),
    ("cross V<-A 496x371", 496, 371, 0.2, 10, 5),
    ("cross A<-V 371x496", 371, 496, 0.0, 10, 5),
    ("cross L<-V 46x496", 46, 496, 0.0, 10, 5),
    ("memory V 496x496", 496, 496, 0.3, 10, 10),
]


def sdpa(q, k, v, p):
    lq, lk = q.shape[-2], k.shape[-2]
    if lq == lk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=future_mask(lq, lk, q.device), dropout_p=p)


def cpu_kernel(backend: kernels.Backend):
    """``tiled_attention`` under ``backend``: "tiled" (the PyTorch tiling) or "auto" (the compiled kernel)."""

    def attend(q, k, v, p):
        n, h, lq, dh = q.shape
        flat = [t.reshape(n * h, t.shape[2], dh) for t in (q, k, v)]
        with kernels.use(backend):
            return tiled_attention(*flat, abs(k.shape[2] - lq), p).reshape(n, h, lq, dh)

    return attend


tiling, fused = cpu_kernel("tiled"), cpu_kernel("auto")


def seconds(fn, q, k, v, p, grad, train: bool, calls: int = 2) -> float:
    """Training: forward + backward with dropout ``p``; evaluation: forward without dropout or graph."""
    start = time.perf_counter()
    for _ in range(calls):
        if train:
            fn(q, k, v, p).backward(grad)
        else:
            with torch.no_grad():
                fn(q, k, v, 0.0)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per implementation (median)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--maps", default="", help="only the maps whose name contains this text (e.g. 46x46)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the rows are appended to")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if native.library() is None:
        raise SystemExit("the native kernel did not build on this machine: nothing to compare")
    m = machine_info(torch.device("cpu"))
    rows = []
    for name, lq, lk, p, heads, dh in [spec for spec in MAPS if args.maps in spec[0]]:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(args.batch, heads, n, dh, generator=g, requires_grad=True) for n in (lq, lk, lk))
        grad = torch.randn(args.batch, heads, lq, dh, generator=g)
        for fn in (tiling, fused):
            torch.testing.assert_close(fn(q, k, v, 0.0), sdpa(q, k, v, 0.0), atol=1e-5, rtol=1e-4)
        ms = {}
        for train in (True, False):
            times = {fn: [] for fn in (sdpa, tiling, fused)}
            for _ in range(args.repeats):  # interleaved
                for fn in times:
                    times[fn].append(seconds(fn, q, k, v, p, grad, train))
            ms[train] = [1e3 * statistics.median(times[fn]) for fn in (sdpa, tiling, fused)]
        (sd, ti, na), (esd, eti, ena) = ms[True], ms[False]
        rows.append(f"| {m['date']} | {m['commit']} | {name} | {p} | {torch.get_num_threads()} | {sd:.1f} | {ti:.1f} "
                    f"| {na:.1f} | {sd / na:.1f}x | {ti / na:.1f}x | {esd:.1f} | {eti:.1f} | {ena:.1f} "
                    f"| {esd / ena:.1f}x | {eti / ena:.1f}x | {m['cpu']} |\n")  # fmt: skip
        print(f"{name} (dropout {p}): train sdpa {sd:.1f} ms, tiling {ti:.1f} ms, native {na:.1f} ms "
              f"({sd / na:.1f}x sdpa, {ti / na:.1f}x tiling); eval {esd:.1f} / {eti:.1f} / {ena:.1f} ms")  # fmt: skip
    append_rows(
        args.results,
        "# CPU attention: compiled kernel vs PyTorch tiling vs scaled_dot_product_attention (batch 16, one map, ms)\n\n"
        "| date | commit | map | dropout | threads | train SDPA | train tiling | train native | native vs SDPA "
        "| native vs tiling | eval SDPA | eval tiling | eval native | native vs SDPA | native vs tiling | cpu |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
