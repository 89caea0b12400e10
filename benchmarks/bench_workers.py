"""Seeds side by side in processes (``dmd train --workers 2``) against one process, measured alternately.

Three ways to train the same two seeds of a small CPU model (d 32, 4 heads, 2 levels, lr 1e-3, no
accumulation) on a half-size synthetic MOSI-aligned file: one process with PyTorch's default threads,
one process with one thread (``OMP_NUM_THREADS=1``), and two single-threaded worker processes
(``--workers 2``). Each is a whole ``dmd train`` process, run in turn, ``--repeats`` times. Writes a
dated section of ``benchmarks/results/workers.md``; also checks that the workers' test metrics equal
the one-thread process's (same threads: same bits).

Run: ``python benchmarks/bench_workers.py [--repeats 2] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dmd_core.bench import append_rows

ROOT = Path(__file__).resolve().parents[1]
DMD = [sys.executable, "-m", "dmd_core.cli"]  # `dmd` in this interpreter
MODES = {"one process, default threads": ({}, 1), "one process, 1 thread": ({"OMP_NUM_THREADS": "1"}, 1),
         "--workers 2 (1 thread each)": ({}, 2)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "workers.md")
    args = parser.parse_args()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "half.pkl"
        subprocess.run([*DMD, "synth", "--dataset", "mosi", "--aligned", "--scale", "0.5", "--out", data], check=True)
        common = ["train", "--data", data, "--seeds", "1111", "1112", "--max-epochs", str(args.epochs), "--set", "d=32",
                  "--set", "heads=4", "--set", "nlevels=2", "--lr", "1e-3", "--accumulation", "1", "--no-progress"]  # fmt: skip
        metrics = {}
        for rep in range(args.repeats):
            for k, (mode, (env, workers)) in enumerate(MODES.items()):
                out = Path(tmp) / f"run{rep}-{k}"
                start = time.perf_counter()
                subprocess.run([*DMD, *map(str, common), "--out", str(out), "--workers", str(workers)],
                               env={**os.environ, **env}, check=True, capture_output=True)  # fmt: skip
                times[mode].append(time.perf_counter() - start)
                metrics[mode] = json.loads((out / "seed_1112" / "test_metrics.json").read_text())["loss"]
                print(f"repeat {rep + 1} {mode}: {times[mode][-1]:.1f} s", flush=True)
    base = "one process, default threads"
    same = metrics["--workers 2 (1 thread each)"] == metrics["one process, 1 thread"]
    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, {args.repeats} repeat(s), {args.epochs} epochs, 2 seeds\n",
             "Command: `python benchmarks/bench_workers.py`\n", "| way | wall s (median) | all | vs default threads |",
             "|---|---|---|---|"]  # fmt: skip
    for mode, ts in times.items():
        ratio = statistics.median(b / t for b, t in zip(times[base], ts))
        lines.append(f"| {mode} | {statistics.median(ts):.1f} | {', '.join(f'{t:.1f}' for t in ts)} | {ratio:.2f}x |")
    lines.append(f"\nWorkers' test loss equals the one-thread process's: {same}.\n")
    append_rows(args.results, "# Seeds side by side in processes\n\nWritten by `benchmarks/bench_workers.py`.\n", lines)
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
