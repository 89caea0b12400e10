"""Data benchmarks: synthetic-file generation, loading, memory-mapped MOSEI, peak memory.

    python benchmarks/bench_data.py --quick        # MOSI aligned at 10 % size (seconds)
    python benchmarks/bench_data.py                # MOSI aligned at full size: `dmd synth` < 30 s, loading < 5 s
    python benchmarks/bench_data.py --mosei-mmap   # + MOSEI unaligned at full size (~8.6 GB file, deleted after)

Each measured step runs in a fresh Python process, so its peak memory is its own: ``peak_rss_mb``
is the kernel's high-water mark of resident memory (``ru_maxrss``; it includes pages of
memory-mapped files, which the kernel can drop at any time), ``peak_anon_mb`` the sampled peak
of anonymous memory (``RssAnon``: what must fit in RAM). Results go to
``benchmarks/results/raw/data_<quick|full|mosei>.json`` and one markdown row per step to
``benchmarks/results/data.md``, with the machine and the git commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MEASURED = ("dmd_core/data.py", "dmd_core/synth.py", "dmd_core/config.py", "benchmarks/bench_data.py")


# ----------------------------------------------------------------------------- inside a measured process


class _AnonPeak:
    """Samples ``RssAnon`` of this process every 10 ms in a thread."""

    def __init__(self) -> None:
        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._read())
            time.sleep(0.01)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self._read())
        return self.peak_kb / 1024


def _phase(args: argparse.Namespace) -> dict:
    """One measured step; runs in its own process and returns its numbers."""
    sampler = _AnonPeak()
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from dmd_core.data import load_mmsa
    from dmd_core.data.synth import SynthSpec, write_mmsa

    out: dict = {"import_s": time.perf_counter() - t0}
    path = Path(args.path)
    t = time.perf_counter()
    if args.phase == "write":
        spec = SynthSpec(dataset=args.dataset, aligned=args.aligned == 1, scale=args.scale, seed=0)
        write_mmsa(path, spec)
        out.update(seconds=time.perf_counter() - t, file_mb=path.stat().st_size / 2**20)
    else:
        ds = load_mmsa(path, text=args.text, mmap_dir=args.mmap_dir or None)
        out.update(seconds=time.perf_counter() - t, samples={k: len(v) for k, v in ds.splits.items()})
        if args.epoch:
            g, t, n = torch.Generator().manual_seed(0), time.perf_counter(), 0
            for batch in ds["train"].batches(16, shuffle=True, generator=g):
                n += len(batch.index)
            out.update(epoch_seconds=time.perf_counter() - t, epoch_samples=n)
    out.update(peak_anon_mb=sampler.stop(), peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


# ----------------------------------------------------------------------------- the driver


def _run(step: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--phase", step]
    for key, value in kw.items():
        if value is not None and value is not False:
            cmd += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{step} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def _machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    import numpy
    import torch

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(mem / 2**20, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "commit": git("rev-parse", "--short", "HEAD")
        + ("+dirty" if git("status", "--porcelain", "--", *MEASURED) else ""),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _md_row(machine: dict, name: str, r: dict) -> str:
    cell = lambda key, fmt="{:.2f}": fmt.format(r[key]) if key in r else ""  # noqa: E731
    return (f"| {machine['date']} | {machine['commit']} | {machine['cores']} x {machine['cpu'][:32]}, "
            f"{machine['ram_gb']} GB (load {machine['load_avg_1m']}) | {name} | {cell('seconds')} | "
            f"{cell('process_wall_s')} | {cell('epoch_seconds')} | {cell('file_mb', '{:.0f}')} | "
            f"{cell('peak_rss_mb', '{:.0f}')} | {cell('peak_anon_mb', '{:.0f}')} |")  # fmt: skip


_MD_HEADER = """# Data benchmarks (`benchmarks/bench_data.py`)

Each step in a fresh process. `step s`: the call itself; `process s`: the whole process
(interpreter start, imports, the call); `epoch s`: one shuffled pass over the train split in
batches of 16. `peak RSS`: high-water resident memory (includes memory-mapped file pages,
which the kernel can drop); `peak anon`: sampled peak of anonymous memory (what must fit in RAM).

| date | commit | machine | step | step s | process s | epoch s | file MB | peak RSS MB | peak anon MB |
|---|---|---|---|---|---|---|---|---|---|
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="MOSI aligned at 10 %% size only")
    p.add_argument("--mosei-mmap", action="store_true", help="also MOSEI unaligned at full size, memory-mapped")
    p.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--no-record", action="store_true", help="print results without writing benchmarks/results")
    # internal: one measured step
    p.add_argument("--phase", choices=("write", "load"), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--dataset", default="mosi", help=argparse.SUPPRESS)
    p.add_argument("--aligned", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--text", default="features", help=argparse.SUPPRESS)
    p.add_argument("--mmap-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--epoch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(_phase(args)))
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    machine, results = _machine(), {}
    scale = 0.1 if args.quick else 1.0
    try:
        mosi = work / "mosi_aligned_50.pkl"
        results["mosi_aligned: synth write"] = _run("write", path=mosi, dataset="mosi", aligned=1, scale=scale)
        results["mosi_aligned: load features"] = _run("load", path=mosi, text="features", epoch=True)
        results["mosi_aligned: load bert ids"] = _run("load", path=mosi, text="bert")
        results["mosi_aligned: mmap convert"] = _run("load", path=mosi, mmap_dir=work / "mmap")
        results["mosi_aligned: mmap cached"] = _run("load", path=mosi, mmap_dir=work / "mmap", epoch=True)
        if args.mosei_mmap:
            free_gb = shutil.disk_usage(work).free / 2**30
            if free_gb < 25:
                raise SystemExit(f"--mosei-mmap needs about 20 GB free in {work}; found {free_gb:.0f} GB")
            mosei = work / "mosei_unaligned_50.pkl"
            results["mosei_unaligned: synth write"] = _run("write", path=mosei, dataset="mosei", aligned=0)
            results["mosei_unaligned: mmap convert"] = _run("load", path=mosei, mmap_dir=work / "mmap")
            results["mosei_unaligned: mmap cached"] = _run("load", path=mosei, mmap_dir=work / "mmap", epoch=True)
            if not args.keep:
                mosei.unlink()
                shutil.rmtree(work / "mmap", ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    for name, r in results.items():
        print(f"{name:34s} " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if not args.no_record:
        (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
        tag = "quick" if args.quick else ("mosei" if args.mosei_mmap else "full")
        (RESULTS / "raw" / f"data_{tag}.json").write_text(
            json.dumps({"machine": machine, "results": results}, indent=1)
        )
        md = RESULTS / "data.md"
        text = md.read_text() if md.exists() else _MD_HEADER
        text += "".join(_md_row(machine, f"{name} ({tag})", r) + "\n" for name, r in results.items())
        md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
