"""CPU attention: ``dmd_core.cpu_kernels.tiled_attention`` against ``scaled_dot_product_attention``.

The attention maps of one official MOSI training step (batch 16, heads 10, head size 5, or 10 in
the memory Transformers), each with the reference's mask and its dropout rate: forward +
backward in training, forward alone in evaluation. Both implementations run interleaved in one
process, so a change of machine load hits both alike; prints the ratios and appends a row per
map to benchmarks/results/attention.md.
Run: ``python benchmarks/bench_attention.py [--threads 2] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dmd_core.bench import append_rows, machine_info
from dmd_core.cpu_kernels import tiled_attention
from dmd_core.transformer import future_mask

RESULTS = Path(__file__).resolve().parent / "results" / "attention.md"

# (name, Lq, Lk, dropout, head size): unaligned MOSI after the temporal convolutions (L 46, V 496, A 371),
# and the aligned maps (46 x 46).
MAPS = [
    ("aligned self/cross 46x46", 46, 46, 0.3, 5),
    ("shared V 496x496", 496, 496, 0.0, 5),
    ("shared A 371x371", 371, 371, 0.2, 5),
    ("cross V<-A 496x371", 496, 371, 0.2, 5),
    ("cross A<-V 371x496", 371, 496, 0.0, 5),
    ("cross L<-V 46x496", 46, 496, 0.0, 5),
    ("memory V 496x496", 496, 496, 0.3, 10),
]


def sdpa(q, k, v, p):
    lq, lk = q.shape[-2], k.shape[-2]
    if lq == lk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=future_mask(lq, lk, q.device), dropout_p=p)


def tiled(q, k, v, p):
    n, h, lq, dh = q.shape
    flat = [t.reshape(n * h, t.shape[2], dh) for t in (q, k, v)]
    return tiled_attention(*flat, abs(k.shape[2] - lq), p).reshape(n, h, lq, dh)


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m = machine_info(torch.device("cpu"))
    rows = []
    for name, lq, lk, p, dh in MAPS:
        heads = 50 // dh if dh == 5 else 10
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(args.batch, heads, n, dh, generator=g, requires_grad=True) for n in (lq, lk, lk))
        grad = torch.randn(args.batch, heads, lq, dh, generator=g)
        torch.testing.assert_close(tiled(q, k, v, 0.0), sdpa(q, k, v, 0.0), atol=1e-5, rtol=1e-4)
        result = []
        for train in (True, False):
            ours, theirs = [], []
            for _ in range(args.repeats):  # interleaved
                theirs.append(seconds(sdpa, q, k, v, p, grad, train))
                ours.append(seconds(tiled, q, k, v, p, grad, train))
            result += [statistics.median(theirs), statistics.median(ours)]
        sd_train, ti_train, sd_eval, ti_eval = (1e3 * t for t in result)
        rows.append(f"| {m['date']} | {m['commit']} | {name} | {p} | {torch.get_num_threads()} | {sd_train:.1f} "
                    f"| {ti_train:.1f} | {sd_train / ti_train:.1f}x | {sd_eval:.1f} | {ti_eval:.1f} "
                    f"| {sd_eval / ti_eval:.1f}x | {m['cpu']} |\n")  # fmt: skip
        print(f"{name} (dropout {p}): train sdpa {sd_train:.1f} ms, tiled {ti_train:.1f} ms "
              f"({sd_train / ti_train:.1f}x); eval {sd_eval:.1f} vs {ti_eval:.1f} ms ({sd_eval / ti_eval:.1f}x)")  # fmt: skip
    append_rows(
        RESULTS,
        "# CPU attention: tiled vs scaled_dot_product_attention (batch 16, one map, ms)\n\n"
        "| date | commit | map | dropout | threads | train SDPA | train tiled | speed-up | eval SDPA "
        "| eval tiled | speed-up | cpu |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
