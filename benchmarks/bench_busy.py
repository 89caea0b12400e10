"""Training and evaluation on a busy CPU: idle and beside one competing busy process, ours before and after, the reference.

One synthetic MMSA file (``dmd synth --sizes TRAIN VALID TEST``, MOSI aligned) is trained on for one
epoch, in fresh processes, by:

* ``before`` and ``after``: this package at two commits (``--before REV``, ``--after REV``; each
  unpacked with ``git archive`` into a temporary folder and put first on ``PYTHONPATH``; ``after``
  defaults to the working tree). The ``dmd train`` path (``reference_runner.py``'s ``run_ours``:
  ``Trainer.fit``): train samples/s of ``Trainer.train_epoch``, eval samples/s of every
  ``predict`` the trainer calls (validation, then the final test), batch size 16 both;
* ``reference``: the public reference (``--reference DIR``, a checkout of mdswyz/DMD; its ``run._run``
  through ``reference_runner.py``): train samples/s of its train pass, eval samples/s of every
  ``do_test`` it calls (its test loop: validation and test after the epoch, the final test),
  batch size as it ships (16);
* ``dmd bench --dataset mosi --aligned`` (random inputs of the file's shapes, a few short windows)
  at ``before`` and ``after``: the figures the issue names.

Each of these runs idle, then beside one competing busy process (``python -c "while True: pass"``,
started and stopped by this script, pinned to the last CPU this process may use unless
``--busy-anywhere``), alternating before, after, reference, bench before, bench after in every
round. Every child runs at PyTorch's default thread count (``--threads N`` sets it). A shared
machine's speed drifts, so read the ratios of neighbouring measurements (the same round), not
numbers across runs. Beside each measurement this records the load average and the cores that
processes outside this benchmark used meanwhile (``/proc/stat``): on a machine that others share,
"idle" means only "no competitor of ours".

Results: a dated section appended to ``benchmarks/results/busy.md`` (the command, the machine, the
load; medians over rounds and the per-round ratios) and the raw record in
``benchmarks/results/raw/busy-<time>.json``.

Run: ``python benchmarks/bench_busy.py --before REV [--after REV] [--reference DIR] [--rounds 2]
[--sizes 160 96 160] [--threads N] [--busy-anywhere] [--results DIR]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SEED = 1111
LOADS = ("idle", "busy")
# (code, measure): which code runs, measured how. Order = the alternation within a round.
RUNS = (("before", "file"), ("after", "file"), ("reference", "file"), ("before", "bench"), ("after", "bench"))
BENCH_EVAL_BATCHES = 6
BENCH_ARGS = ("--dataset", "mosi", "--aligned", "--window-batches", "5", "--windows", "2",
              "--eval-batches", str(BENCH_EVAL_BATCHES))  # fmt: skip
MEASURES = {"file": "1 epoch on the file + its evaluation", "bench": "`dmd bench` (random inputs)"}


# ----------------------------------------------------------------------------- pure parts


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, checked: positive sizes and rounds, a reference checkout that has run.py and config.json."""
    parser = argparse.ArgumentParser(prog="bench_busy.py", description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="commit (or any git revision) before the change")
    parser.add_argument("--after", default=None, help="revision after it (default: the working tree)")
    parser.add_argument("--reference", type=Path, default=None, help="checkout of https://github.com/mdswyz/DMD")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of every run (default 2)")
    parser.add_argument("--sizes", type=int, nargs=3, default=(160, 96, 160), metavar=("TRAIN", "VALID", "TEST"),
                        help="split sizes of the synthetic file (default 160 96 160)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads of every child (default: its own)")
    parser.add_argument("--busy-anywhere", action="store_true", help="do not pin the competing process to one CPU")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of busy.md (raw JSON in raw/)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: expected at least 1")
    if min(args.sizes) < 1:
        parser.error(f"--sizes {' '.join(map(str, args.sizes))}: every split needs at least one sample")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: expected at least 1")
    if args.reference is not None:
        ref = args.reference
        if not (ref / "run.py").is_file() or not (ref / "config" / "config.json").is_file():
            parser.error(f"--reference {ref}: not a checkout of mdswyz/DMD (no run.py, config/config.json)")
    return args


def plan(rounds: int, reference: bool) -> list[tuple[int, str, str, str]]:
    """The measurement order: (round, load, code, measure); every run idle then busy, in :data:`RUNS` order."""
    runs = [r for r in RUNS if reference or r[0] != "reference"]
    return [(i, load, code, measure) for i in range(rounds) for load in LOADS for code, measure in runs]


def rate(samples: float, seconds: float) -> float | None:
    return samples / seconds if seconds > 0 else None


def median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per (load, code, measure) and per-round ratios: busy/idle, after/before, after/reference.

    A ratio pairs the two measurements of one round (taken minutes apart at most); its median over
    rounds is reported. Above 1: faster (busy/idle is the share of the idle speed kept under load).
    """
    cells: dict[tuple[str, str, str], dict[str, list[Any]]] = {}
    for r in records:
        cell = cells.setdefault((r["load"], r["code"], r["measure"]), {"train": [], "eval": [], "others": []})
        cell["train"].append(r["train_samples_per_s"])
        cell["eval"].append(r["eval_samples_per_s"])
        cell["others"].append(r.get("others_cores"))
    medians = {
        key: {"train": median(c["train"]), "eval": median(c["eval"]), "others": median(c["others"]), "n": len(c["train"])}
        for key, c in cells.items()
    }  # fmt: skip

    def value(rnd: int, load: str, code: str, measure: str, what: str) -> float | None:
        for r in records:
            if (r["round"], r["load"], r["code"], r["measure"]) == (rnd, load, code, measure):
                return r[f"{what}_samples_per_s"]
        return None

    def ratio(top: tuple[str, str, str], bottom: tuple[str, str, str], what: str) -> float | None:
        found = []
        for rnd in sorted({r["round"] for r in records}):
            a, b = value(rnd, *top, what), value(rnd, *bottom, what)
            if a is not None and b:
                found.append(a / b)
        return median(found)

    ratios = []
    measures = sorted({r["measure"] for r in records}, key=list(MEASURES).index)
    codes = [c for c in ("before", "after", "reference") if any(r["code"] == c for r in records)]
    for measure in measures:
        for code in codes:
            if (("idle", code, measure)) not in medians:
                continue
            ratios.append({"what": f"{code}, busy / idle", "measure": measure,
                           **{w: ratio(("busy", code, measure), ("idle", code, measure), w) for w in ("train", "eval")}})  # fmt: skip
        for load in LOADS:
            for other in ("before", "reference"):
                if (load, "after", measure) in medians and (load, other, measure) in medians:
                    ratios.append({"what": f"after / {other}, {load}", "measure": measure,
                                   **{w: ratio((load, "after", measure), (load, other, measure), w)
                                      for w in ("train", "eval")}})  # fmt: skip
    return {"medians": {"|".join(k): v for k, v in medians.items()}, "ratios": ratios}


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _threads(records: list[dict[str, Any]]) -> str:
    """Mini-batches per thread count over the evaluations of these records, e.g. ``2: 4, 1: 20``."""
    total: dict[str, int] = {}
    for r in records:
        for k, v in (r.get("eval_threads") or {}).items():
            total[str(k)] = total.get(str(k), 0) + int(v)
    return ", ".join(f"{k}: {v}" for k, v in sorted(total.items(), key=lambda kv: -int(kv[0]))) or "-"


def markdown(result: dict[str, Any]) -> str:
    """The dated section of busy.md for one run of this script."""
    m, s, records = result["machine"], result["summary"], result["records"]
    ref = result.get("reference") or {}
    lines = [
        f"\n## {m['date']}: before {result['before']}, after {result['after']}"
        + (f", reference {ref.get('commit') or 'files sha256 ' + ref.get('files_sha256', '?')}" if ref else "")
        + "\n",
        f"{m['cpu']}, {m['cpus']} cores; python {m['python']}, torch {m['torch']}; threads: "
        f"{result['threads'] or 'each side default (' + str(m['cpus']) + ')'}; {result['rounds']} round(s); "
        f"competitor: `python -c \"while True: pass\"` {result['busy_where']}. "
        f"File: `dmd {shlex.join(result['synth'])}`. {result['total_s'] / 60:.1f} min.\n",
        f"Load average (1 min) at the start {result['load_start'][0]:.2f}, at the end {result['load_end'][0]:.2f}; "
        f"cores used by processes outside this benchmark during its measurements: median "
        f"{_num(median([r.get('others_cores') for r in records]), 2)} (range "
        f"{_num(min((r['others_cores'] for r in records if r.get('others_cores') is not None), default=None), 2)}-"
        f"{_num(max((r['others_cores'] for r in records if r.get('others_cores') is not None), default=None), 2)})"
        f". \"Idle\" means no competitor of ours, not an idle machine.\n",
        f"Command: `{result['command']}`\n",
        "| load | code | measure | train samples/s | eval samples/s | eval / train | eval threads (mini-batches) "
        "| others' cores | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for key, cell in s["medians"].items():
        load, code, measure = key.split("|")
        mine = [r for r in records if (r["load"], r["code"], r["measure"]) == (load, code, measure)]
        ratio = cell["eval"] / cell["train"] if cell["eval"] and cell["train"] else None
        loadavg = median([r["loadavg"][0] for r in mine])
        lines.append(f"| {load} | {code} | {MEASURES[measure]} | {_num(cell['train'])} | {_num(cell['eval'])} "
                     f"| {_num(ratio, 2)} | {_threads(mine)} | {_num(cell['others'], 2)} | {_num(loadavg, 2)} |")  # fmt: skip
    lines += ["", "Ratios of neighbouring measurements (same round; median over rounds; above 1: faster):", "",
              "| ratio | measure | train | eval |", "|---|---|---|---|"]  # fmt: skip
    for r in s["ratios"]:
        lines.append(f"| {r['what']} | {MEASURES[r['measure']]} | {_num(r['train'], 2)} | {_num(r['eval'], 2)} |")
    return "\n".join(lines) + "\n"


HEADER = (
    "# Training and evaluation on a busy CPU\n\n"
    "Written by `benchmarks/bench_busy.py` (its docstring says what is measured): train and eval samples/s "
    "idle and beside one competing busy process, this package before and after a change and the reference "
    "implementation, alternated in fresh processes. Medians over rounds; the ratios pair the measurements "
    "of one round.\n"
)


def write_results(result: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Append the run's section to ``folder/busy.md`` (started with :data:`HEADER`), the record to ``raw/``."""
    (folder / "raw").mkdir(parents=True, exist_ok=True)
    raw = folder / "raw" / f"busy-{result['stamp']}.json"
    raw.write_text(json.dumps(result, indent=1) + "\n")
    table = folder / "busy.md"
    if not table.exists():
        table.write_text(HEADER)
    with table.open("a") as f:
        f.write(markdown(result))
    return raw, table


# ----------------------------------------------------------------------------- measuring (Linux)


class CpuMeter:
    """CPU time taken on this process's CPUs by processes outside this benchmark, over one measurement."""

    def __init__(self) -> None:
        from dmd_core.threads import busy_ticks

        self.busy_ticks = busy_ticks
        self.cpus = set(os.sched_getaffinity(0))
        self.hz = os.sysconf("SC_CLK_TCK")

    def busy(self) -> float | None:
        try:
            return self.busy_ticks(Path("/proc/stat").read_text(), self.cpus) / self.hz
        except (OSError, ValueError):
            return None

    @staticmethod
    def process_seconds(pid: int | None) -> float:
        if pid is None:
            return 0.0
        try:
            from dmd_core.threads import own_ticks

            return own_ticks(Path(f"/proc/{pid}/stat").read_text()) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0


@contextmanager
def competitor(busy: bool, pin: bool) -> Iterator[int | None]:
    """One busy Python process (pinned to the last allowed CPU when ``pin``), stopped on leaving; yields its pid."""
    if not busy:
        yield None
        return
    cpu = max(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if pin else None)  # fmt: skip
    try:
        time.sleep(0.5)  # let it reach the run queue
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def unpack(rev: str, folder: Path) -> str:
    """``git archive`` of ``rev`` into ``folder``; returns its short commit."""
    commit = subprocess.run(["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    folder.mkdir(parents=True)
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, stdout=archive, check=True)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(folder, filter="data")
    return commit


def child_env(tree: Path, threads: int | None) -> dict[str, str]:
    """This tree's dmd_core first on the path; no progress bars, no network; the thread count if one is set."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "DMD_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
    env.update(TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_child(cmd: list[str], env: dict[str, str], meter: CpuMeter, other_pid: int | None,
              report: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run ``cmd``; its last JSON line (when ``report``), wall seconds, and the cores that others used meanwhile
    (not it, not the competitor ``other_pid``)."""
    busy0, other0, start = meter.busy(), meter.process_seconds(other_pid), time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=tempfile.gettempdir())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy1, other1 = meter.busy(), meter.process_seconds(other_pid)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{shlex.join(cmd)} exited with {code}:\n{tail}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if report and not lines:
        raise RuntimeError(f"{shlex.join(cmd)} printed no JSON line:\n{stdout[-2000:]}")
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        own = usage.ru_utime + usage.ru_stime
        others = max(0.0, (busy1 - busy0 - own - (other1 - other0)) / wall)
    return {**(json.loads(lines[-1]) if report else {}), "wall_s": round(wall, 2), "others_cores": None if others is None else
            round(others, 3), "loadavg": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


# ----------------------------------------------------------------------------- the jobs (child processes)


def job_ours(data: Path) -> dict[str, Any]:
    """One epoch of ``Trainer.fit`` on ``data`` (reference_runner's ``run_ours``) with every ``predict`` timed."""
    import dmd_core
    import dmd_core.trainer as trainer_module

    sys.path.insert(0, str(HERE))
    from reference_runner import run_ours

    calls: list[dict[str, Any]] = []
    predict = trainer_module.predict
    # Looked up in this tree only (an editable install of another checkout would answer for a missing module).
    fitted = (Path(dmd_core.__file__).parent / "threads.py").is_file()

    def timed_predict(model, split, *args, **kwargs):
        start = time.perf_counter()
        out = predict(model, split, *args, **kwargs)
        seconds = time.perf_counter() - start
        if fitted:
            from dmd_core.threads import last_used

            used = last_used()
        else:  # a commit before dmd_core.threads: the thread count never changed
            import torch

            used = {torch.get_num_threads(): -(-len(split) // kwargs.get("batch_size", 64))}
        calls.append({"split": split.name, "n": len(split), "s": seconds, "threads": used})
        return out

    trainer_module.predict = timed_predict
    run = run_ours(data, None, 1, SEED)
    return {"dmd_core": str(Path(dmd_core.__file__).parent), "n_train": run["n_train"],
            "train_s": run["train_loop_s"][0], "eval_calls": calls}  # fmt: skip


def job_reference(ref: Path, data: Path) -> dict[str, Any]:
    """One epoch of the reference's ``run._run`` on ``data`` (reference_runner) with every ``do_test`` timed."""
    sys.path.insert(0, str(HERE))
    import reference_runner

    reference_runner.adapt_torch_for_reference()  # before importing its trainer; run_reference must not repeat it
    reference_runner.adapt_torch_for_reference = lambda: None  # (a second call trips on its own pynvml stand-in)
    sys.path.insert(0, str(ref))
    trainer_class = importlib.import_module("trains.singleTask.DMD").DMD
    do_test = trainer_class.do_test
    calls: list[dict[str, Any]] = []

    def timed_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        import torch

        start = time.perf_counter()
        out = do_test(self, model, dataloader, mode, return_sample_results)
        calls.append({"split": mode, "n": len(dataloader.dataset), "s": time.perf_counter() - start,
                      "threads": {torch.get_num_threads(): len(dataloader)}})  # fmt: skip
        return out

    trainer_class.do_test = timed_test
    run = reference_runner.run_reference(ref, data, "mosi", True, None, 1, SEED)
    return {"n_train": run["n_train"], "train_s": run["train_loop_s"][0], "eval_calls": calls}


def job_main(argv: list[str]) -> None:
    """``bench_busy.py job ours|reference --data FILE [--reference DIR] [--threads N]``: prints one JSON line."""
    parser = argparse.ArgumentParser(prog="bench_busy.py job")
    parser.add_argument("side", choices=["ours", "reference"])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side == "ours":
        out = job_ours(args.data.resolve())
    else:
        out = job_reference(args.reference.resolve(), args.data.resolve())
    evals = out.pop("eval_calls")
    threads: dict[str, int] = {}
    for call in evals:
        for k, v in call["threads"].items():
            threads[str(k)] = threads.get(str(k), 0) + int(v)
    print(json.dumps({
        **out, "train_samples_per_s": rate(out["n_train"], out["train_s"]),
        "eval_samples_per_s": rate(sum(c["n"] for c in evals), sum(c["s"] for c in evals)),
        "eval_calls": evals, "eval_threads": threads, "threads": torch.get_num_threads(),
    }))  # fmt: skip


def bench_record(out: Path) -> dict[str, Any]:
    """The JSON record ``dmd bench --out OUT`` wrote, as this script's fields."""
    record = json.loads(next((out / "raw").glob("*.json")).read_text())
    threads = record["setting"]["threads"]
    used = record.get("eval_threads") or {threads: BENCH_EVAL_BATCHES}  # before dmd_core.threads: never changed
    return {"train_samples_per_s": record["train_samples_per_s"], "eval_samples_per_s": record["eval_samples_per_s"],
            "eval_threads": {str(k): v for k, v in used.items()}, "threads": threads}  # fmt: skip


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["job"]:
        job_main(argv[1:])
        return
    args = parse_args(argv)
    import torch

    from dmd_core.bench import machine_info

    sys.path.insert(0, str(HERE))
    from compare_reference import reference_version

    meter = CpuMeter()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/bench_busy.py", *argv]),
        "stamp": time.strftime("%Y%m%d-%H%M%S"), "machine": machine_info(torch.device("cpu")),
        "rounds": args.rounds, "threads": args.threads, "sizes": list(args.sizes),
        "busy_where": "on any CPU" if args.busy_anywhere else "pinned to one CPU",
        "load_start": list(os.getloadavg()), "records": [],
    }  # fmt: skip
    if args.reference is not None:
        result["reference"] = {"path": str(args.reference), **reference_version(args.reference.resolve())}
    with tempfile.TemporaryDirectory(prefix="dmd-busy-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {"before": tmp / "before"}
        result["before"] = unpack(args.before, trees["before"])
        if args.after is None:
            trees["after"] = ROOT
            from compare_reference import our_commit

            result["after"] = our_commit()
        else:
            trees["after"] = tmp / "after"
            result["after"] = unpack(args.after, trees["after"])
        data = tmp / "busy.pkl"
        result["synth"] = ["synth", "--dataset", "mosi", "--aligned", "--sizes", *map(str, args.sizes), "--seed", "0"]
        subprocess.run([sys.executable, "-m", "dmd_core.cli", *result["synth"], "--out", str(data)], check=True,
                       env=child_env(trees["after"], None), capture_output=True)  # fmt: skip
        threads = ["--threads", str(args.threads)] if args.threads else []
        for rnd, load, code, measure in plan(args.rounds, args.reference is not None):
            tree = trees.get(code, trees["after"])
            env = child_env(tree, args.threads)
            with competitor(load == "busy", pin=not args.busy_anywhere) as other:
                if measure == "bench":
                    out = tmp / f"bench-{rnd}-{load}-{code}"
                    cmd = [sys.executable, "-m", "dmd_core.cli", "bench", *BENCH_ARGS, *threads, "--out", str(out)]
                    child = {**run_child(cmd, env, meter, other, report=False), **bench_record(out)}
                elif code == "reference":
                    cmd = [sys.executable, str(Path(__file__).resolve()), "job", "reference", "--data", str(data),
                           "--reference", str(args.reference.resolve()), *threads]  # fmt: skip
                    child = run_child(cmd, env, meter, other)
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "job", "ours", "--data", str(data), *threads]
                    child = run_child(cmd, env, meter, other)
                    if not child["dmd_core"].startswith(str(tree)):
                        raise RuntimeError(f"{code}: imported dmd_core from {child['dmd_core']}, not {tree}")
            record = {"round": rnd, "load": load, "code": code, "measure": measure, **child}
            result["records"].append(record)
            print(f"round {rnd + 1} {load:4s} {code:9s} {measure:5s}: train {_num(record['train_samples_per_s'])}"
                  f" eval {_num(record['eval_samples_per_s'])} samples/s, eval threads {_threads([record])}, others "
                  f"{_num(record.get('others_cores'), 2)} cores, load {record['loadavg'][0]:.2f}", flush=True)  # fmt: skip
    result["load_end"] = list(os.getloadavg())
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["summary"] = summarize(result["records"])
    raw, table = write_results(result, args.results)
    print(markdown(result))
    print(f"wrote {table} and {raw}")


if __name__ == "__main__":
    main()
