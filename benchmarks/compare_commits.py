"""Training throughput of two commits, measured alternately in one run: a before/after ratio.

A shared machine's speed drifts by 10-20% within minutes, so numbers measured at different
times do not compare. This checks out each commit into a temporary git worktree and times the
trainer's own epoch loop (:meth:`dmd_core.trainer.Trainer.train_epoch`, official MOSI recipe and
model, random inputs of the real shapes) in fresh processes, alternating A, B, A, B, ... The
ratio of medians is printed and appended to benchmarks/results/compare.md.
Run: ``python benchmarks/compare_commits.py BEFORE [AFTER=HEAD] [--unaligned] [--rounds 3] [--batches 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compare.md"

# Run inside a worktree: one warm-up epoch, then one timed epoch; prints samples/s.
PROBE = """
import sys, tempfile, time
from pathlib import Path
root, aligned, batches, threads = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, root)
import torch
import dmd_core
assert dmd_core.__file__.startswith(root), dmd_core.__file__
from dmd_core.bench import random_split
from dmd_core.config import TrainConfig, preset
from dmd_core.data import MMSADataset
from dmd_core.trainer import Trainer
torch.set_num_threads(threads)
cfg = preset("mosi", aligned)
splits = {"train": random_split(cfg, 16 * batches, "train", 1), "valid": random_split(cfg, 16, "valid", 2),
          "test": random_split(cfg, 16, "test", 3)}
ds = MMSADataset(Path("<random>"), splits, cfg.aligned, cfg.seq_lens, cfg.feature_dims, "features", dataset_name="mosi")
trainer = Trainer(cfg, ds, TrainConfig(batch_size=16), tempfile.mkdtemp(), seed=1111, device="cpu", progress=False,
                  distributed=False)
trainer.train_epoch()
start = time.perf_counter()
trainer.train_epoch()
print(16 * batches / (time.perf_counter() - start))
"""


def revision(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default="HEAD")
    parser.add_argument("--unaligned", action="store_true", help="unaligned MOSI (V 500, A 375) instead of aligned")
    parser.add_argument("--rounds", type=int, default=3, help="alternations (the median is reported)")
    parser.add_argument("--batches", type=int, default=20, help="mini-batches of 16 per timed epoch")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    revs = {"before": revision(args.before), "after": revision(args.after)}
    speeds: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for name, rev in revs.items():
            trees[name] = Path(tmp) / name
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[name]), rev], cwd=ROOT, check=True,
                           capture_output=True)  # fmt: skip
        try:
            for _ in range(args.rounds):
                for name in ("before", "after"):
                    out = subprocess.run(
                        [sys.executable, "-c", PROBE, str(trees[name]), str(int(not args.unaligned)),
                         str(args.batches), str(args.threads)],
                        capture_output=True, text=True, check=True,
                    ).stdout  # fmt: skip
                    speeds[name].append(float(out.split()[-1]))
                    print(f"{name} {revs[name]}: {speeds[name][-1]:.2f} samples/s", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    before, after = statistics.median(speeds["before"]), statistics.median(speeds["after"])
    setting = f"mosi-{'unaligned' if args.unaligned else 'aligned'}-features-b16-cpu"
    print(f"{setting}: {revs['before']} {before:.2f} -> {revs['after']} {after:.2f} samples/s ({after / before:.2f}x)")
    import torch

    from dmd_core.bench import append_rows, machine_info

    m = machine_info(torch.device("cpu"))
    append_rows(
        RESULTS,
        "# Before/after training throughput, measured alternately in one run\n\n"
        "| date | setting | threads | before | samples/s | after | samples/s | ratio | runs each | cpu |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n",
        [f"| {m['date']} | {setting} | {args.threads} | {revs['before']} | {before:.2f} | {revs['after']} "
         f"| {after:.2f} | {after / before:.2f}x | {args.rounds} | {m['cpu']} |"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
