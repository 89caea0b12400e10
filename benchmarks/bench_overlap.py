"""Backward passes on a second thread (``TrainConfig.overlap``) against two threads per operation, alternately.

For each setting (the official MOSI recipe and model on random inputs of the real shapes: aligned,
unaligned, aligned with a 2-layer x 768 BERT), fresh processes with two torch threads train with
``overlap=False`` (each operation on two threads) and ``overlap=True`` (backward of mini-batch i on a
second thread while the forward of i + 1 runs, one thread per operation), in turn, ``--repeats``
times. Each process times ``--epochs`` passes of ``Trainer.train_epoch`` after one warm-up pass and
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
fields, batches, epochs, overlap = json.loads(sys.argv[1])
cfg = BenchSetting(**fields).model_config()
ds = random_dataset(cfg, 16 * batches, 16)
with tempfile.TemporaryDirectory() as tmp:
    trainer = Trainer(cfg, ds, TrainConfig(overlap=overlap), tmp, seed=1111, device="cpu", progress=False,
                      distributed=False)
    trainer.train_epoch()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        trainer.train_epoch()
        seconds.append(time.perf_counter() - start)
print(json.dumps({"samples_per_s": 16 * batches / statistics.median(seconds), "overlap": trainer.gradients.overlap}))
"""


def run(fields: dict, batches: int, epochs: int, overlap: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([fields, batches, epochs, overlap])], env=env,
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["overlap"] is overlap, report
    return report["samples_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "overlap.md")
    args = parser.parse_args()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}: expected some of {', '.join(SETTINGS)}")
    rows = []
    for name in names:
        fields, batches = SETTINGS[name]
        speeds: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(args.repeats):
            for overlap in (False, True):
                speeds[overlap].append(run(fields, batches, args.epochs, overlap))
                print(f"{name} #{rep + 1} overlap={overlap}: {speeds[overlap][-1]:.1f} samples/s", flush=True)
        ratios = [on / off for off, on in zip(speeds[False], speeds[True])]
        rows.append(f"| {name} | {statistics.median(speeds[False]):.1f} | {statistics.median(speeds[True]):.1f} | "
                    f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | "
                    f"{', '.join(f'{s:.1f}' for s in speeds[False])} / {', '.join(f'{s:.1f}' for s in speeds[True])} |")  # fmt: skip
    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, 2 torch threads, {args.repeats} repeat(s), median of {args.epochs} epochs\n",
             f"Command: `python benchmarks/bench_overlap.py --repeats {args.repeats} --settings {args.settings}`\n",
             "| setting | train samples/s, two threads per op | overlap | overlap / two threads (median of "
             "per-repeat ratios) | range | all (off / on) |", "|---|---|---|---|---|---|", *rows]  # fmt: skip
    append_rows(args.results, "# Backward passes on a second thread\n\nWritten by `benchmarks/bench_overlap.py`.\n",
                lines)  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
