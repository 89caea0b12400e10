"""The second thread of ``TrainConfig.overlap`` against two threads per operation, alternately.

For each setting (the official MOSI recipe and model on random inputs of the real shapes: aligned,
unaligned, aligned with a 2-layer x 768 BERT), fresh processes with two torch threads train in turn,
``--repeats`` times, in each mode that applies: ``overlap=False`` (each operation on two threads);
without BERT, overlap with the whole backward pass of mini-batch i on a second thread while the
forward pass of i + 1 runs, one thread per operation (the trainer's seam switched off), and
``overlap=True`` as it is, the backward pass split at the model's seam
(:class:`dmd_core.devices.Seam`: the part above it on the first thread); with BERT, ``overlap=True``
runs BERT's forward pass one mini-batch ahead on the second thread
(:class:`dmd_core.devices.TextAhead`). Each process times ``--epochs`` passes of
``Trainer.train_epoch`` after one warm-up pass and reports the median. Writes a dated section of
``benchmarks/results/overlap.md``: the evidence for the rule ``overlap=None`` (auto) follows
(:func:`dmd_core.devices.resolve_overlap`).

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
ran = "ahead" if trainer.text_ahead else "seam" if trainer.gradients.above is not None else "whole"
print(json.dumps({"samples_per_s": 16 * batches / statistics.median(seconds),
                  "mode": ran if trainer.gradients.overlap or trainer.text_ahead else "off"}))
"""


MODES = {"off": "two threads per op", "whole": "overlap, no seam", "seam": "overlap with the seam",
         "ahead": "overlap: BERT ahead"}  # fmt: skip


def modes(name: str) -> list[str]:
    """The modes a setting runs in, in turn; the last is what ``overlap=True`` does for it."""
    return ["off", "ahead"] if SETTINGS[name][0].get("bert_layers") else ["off", "whole", "seam"]


def run(fields: dict, batches: int, epochs: int, mode: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([fields, batches, epochs, mode])], env=env,
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["mode"] == mode, (report, mode)
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
        speeds: dict[str, list[float]] = {mode: [] for mode in modes(name)}
        for rep in range(args.repeats):
            for mode in speeds:
                speeds[mode].append(run(fields, batches, args.epochs, mode))
                print(f"{name} #{rep + 1} {MODES[mode]}: {speeds[mode][-1]:.1f} samples/s", flush=True)
        on = speeds[modes(name)[-1]]
        cells = [f"{statistics.median(speeds[m]):.1f}" if m in speeds else "" for m in MODES]
        every = " / ".join(f"{MODES[m]} " + ", ".join(f"{x:.1f}" for x in xs) for m, xs in speeds.items())
        no_seam = _ratio(speeds["seam"], speeds["whole"]) if "whole" in speeds else ""
        rows.append(f"| {name} | {' | '.join(cells)} | {_ratio(on, speeds['off'])} | {no_seam} | {every} |")
    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, 2 torch threads, {args.repeats} repeat(s), median of {args.epochs} epochs\n\n",
             f"Command: `python benchmarks/bench_overlap.py --repeats {args.repeats} --settings {args.settings}`\n\n",
             "Train samples/s (medians); ratios are medians of per-repeat ratios (range); the modes ran in turn in "
             "each repeat. \"overlap\" is what `overlap=True` runs: the seam without BERT, BERT ahead with it.\n\n",
             f"| setting | {' | '.join(MODES.values())} | overlap / two threads per op | seam / no seam | every repeat |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    append_rows(args.results, "# Backward passes on a second thread\n\nWritten by `benchmarks/bench_overlap.py`.\n",
                lines + rows)  # fmt: skip
    print("\n".join(lines + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
