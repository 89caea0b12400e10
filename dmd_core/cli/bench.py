"""``dmd bench``: training/evaluation speed, memory and MFU (see :mod:`dmd_core.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import RESULTS, BenchSetting, record, run_benchmark
from . import run_command
from .options import add_alignment, add_device, add_precision


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="measure training/evaluation speed, memory and MFU",
        description="Measure DMD training and evaluation throughput, peak memory and model FLOPs utilisation on "
        "random inputs of the real shapes; writes JSON and a row of benchmarks/results/results.md.",
    )  # fmt: skip
    p.add_argument("--dataset", choices=["mosi", "mosei"], default="mosi", help="official preset and input shapes")
    add_alignment(p, True, verb="inputs")
    p.add_argument(
        "--bert-layers",
        type=int,
        default=0,
        help="text through a randomly initialised BERT with this many layers (0: stored text features)",
    )
    p.add_argument("--bert-hidden", type=int, default=768, help="BERT hidden size (768 = bert-base)")
    p.add_argument("--batch-size", type=int, default=16, help="mini-batch size (official: 16)")
    add_device(p, "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--window-batches", type=int, default=20, help="mini-batches per timed training window")
    p.add_argument("--windows", type=int, default=3, help="timed windows (the median is reported)")
    p.add_argument("--eval-batches", type=int, default=10, help="mini-batches per timed evaluation window")
    add_precision(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.set_defaults(func=run_command(_bench))


def _bench(args: argparse.Namespace) -> int:
    setting = BenchSetting(
        dataset=args.dataset, aligned=args.aligned, bert_layers=args.bert_layers, bert_hidden=args.bert_hidden,
        batch_size=args.batch_size, device=args.device, threads=args.threads, window_batches=args.window_batches,
        windows=args.windows, eval_batches=args.eval_batches, precision=args.precision,
        compile=args.compile,
    )  # fmt: skip
    result = run_benchmark(setting)
    path = record(result, args.out)
    print(f"{setting.name}: train {result['train_samples_per_s']:.1f} samples/s, eval "
          f"{result['eval_samples_per_s']:.1f} samples/s, peak RSS {result['peak_rss_gb']:.2f} GB, "
          f"train MFU {100 * result['train_mfu']:.1f}% ({result['peak_flops_source']} peak) -> {path}")  # fmt: skip
    return 0
