"""Backward passes on a second thread (``TrainConfig.overlap``) against two threads per operation, alternately.

For each setting (the official MOSI recipe and model on random inputs of the real shapes: aligned,
unaligned, aligned with a 2-layer x 768 BERT), fresh processes with two torch threads train in three
modes, in turn, ``--repeats`` times: ``overlap=False`` (each operation on two threads); overlap with
the whole backward pass of mini-batch i on a second thread while the forward pass of i + 1 runs, one
thread per operation (the trainer's seam switched off); and ``overlap=True`` as it is, the backward
pass split at the model's seam (:class:`dmd_core.devices.Seam`: the part above it on the first
thread). Each process times ``--epochs`` passes of ``Trainer.train_epoch`` after one warm-up pass and
reports the median. Writes a dated section of ``benchmarks/results/overlap.md``: the evidence for the
rule ``overlap=None`` (auto) follows (:func:`dmd_core.devices.resolve_overlap`).

Run: ``python benchmarks/bench_overlap.py [--repeats 3] [--settings aligned,unaligned,bert]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dmd_core.bench import append_rows

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (BenchSetting fields, mini-batches per epoch)
    "aligned": ({"aligned": True}, 20),
    "unaligned": ({"aligned": False}, 4),
    "bert": ({"aligned": True, "bert_layers": 2}, 10),
}
CHILD = """
import json, statistics, sys, tempfile, time
import torch
torch.set_num_threads(2)
from dmd_core.bench import BenchSetting, random_dataset
from dmd_core.config import TrainConfig
from dmd_core.trainer import Trainer
fields, batches, epochs, mode = json.loads(sys.argv[1])
cfg = BenchSetting(**fields).model_config()
ds = random_dataset(cfg, 16 * batches, 16)
with tempfile.TemporaryDirectory() as tmp:
    trainer = Trainer(cfg, ds, TrainConfig(overlap=mode != "off"), tmp, seed=1111, device="cpu", progress=False,
                      distributed=False)
    if mode == "whole":
        trainer.gradients.above = None  # no seam: the whole backward pass on the second thread
    trainer.train_epoch()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        trainer.train_epoch()
        seconds.append(time.perf_counter() - start)
print(json.dumps({"samples_per_s": 16 * batches / statistics.median(seconds), "overlap": trainer.gradients.overlap,
                  "seam": trainer.gradients.above is not None}))
"""


MODES = {"off": "two threads per op", "whole": "overlap, no seam", "seam": "overlap with the seam"}


def run(fields: dict, batches: int, epochs: int, mode: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([fields, batches, epochs, mode])], env=env,
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["overlap"] is (mode != "off") and report["seam"] is (mode == "seam"), report
    return report["samples_per_s"]


def _ratio(on: list[float], off: list[float]) -> str:
    ratios = [a / b for a, b in zip(on, off)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--batches", type=int, help="mini-batches of 16 per epoch (default: 20 aligned, 4 unaligned, "
                        "10 BERT)")  # fmt: skip
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "overlap.md")
    args = parser.parse_args()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}: expected some of {', '.join(SETTINGS)}")
    rows = []
    for name in names:
        fields, batches = SETTINGS[name]
        batches = args.batches or batches
        speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
        for rep in range(args.repeats):
            for mode in MODES:
                speeds[mode].append(run(fields, batches, args.epochs, mode))
                print(f"{name} #{rep + 1} {MODES[mode]}: {speeds[mode][-1]:.1f} samples/s", flush=True)
        medians = " | ".join(f"{statistics.median(speeds[mode]):.1f}" for mode in MODES)
        every = " / ".join(", ".join(f"{x:.1f}" for x in speeds[mode]) for mode in MODES)
        rows.append(f"| {name} | {medians} | {_ratio(speeds['seam'], speeds['off'])} | "
                    f"{_ratio(speeds['seam'], speeds['whole'])} | {every} |")  # fmt: skip
    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, 2 torch threads, {args.repeats} repeat(s), median of {args.epochs} epochs\n\n",
             f"Command: `python benchmarks/bench_overlap.py --repeats {args.repeats} --settings {args.settings}`\n\n",
             f"Train samples/s (medians); ratios are medians of per-repeat ratios (range); every repeat in the order "
             f"{', '.join(MODES.values())}.\n\n",
             "| setting | two threads per op | overlap, no seam | overlap with the seam | seam / two threads per op | "
             "seam / no seam | every repeat |", "|---|---|---|---|---|---|---|", *rows]  # fmt: skip
    append_rows(args.results, "# Backward passes on a second thread\n\nWritten by `benchmarks/bench_overlap.py`.\n",
                lines)  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
