"""One command that proves the GPU path: ``python benchmarks/gpu_check.py`` (also ``make gpu-check``).

One time budget, counted from the moment the process starts (the installs included), is shared out between
the stages below in the order they run: the cheapest proofs first, ``torch.compile`` and the long run last. It
prints the plan (each stage's share and the planned total, 400 s by default, under the 10-minute limit of a
lent GPU machine's command and leaving room for a second try in 15 minutes) before anything else. A stage may
use its share and whatever the stages before it left unused, never the later stages' shares; the two optional
stages run only where that leaves them enough time, and are skipped with the reason otherwise.

1. ``install`` (with ``--install-wheels DIR``): the project and the book's helpers (editable, no dependencies),
   papermill, ipykernel, nbformat, nbclient, docutils and myst-nb from DIR, offline;
2. ``machine``: Python, PyTorch, CUDA, cuDNN, the GPU, its driver, the commit;
3. ``first-step``: ``dmd train --device cuda`` for one epoch on a tiny ``dmd synth`` file, as a user runs it
   (this once crashed at its first step);
4. ``tests``: pytest on ``tests/test_gpu.py`` and the suite's CUDA-only tests, ``torch.compile`` left for
   stage 8: the reference fixtures in exact float32, bf16/fp16 within a stated bound of float32, fit, resume,
   predict, BERT fine-tuning, a training epoch under ``set_sync_debug_mode("error")``;
5. ``bench``: ``dmd bench`` rows in one process (one cold start): MOSI aligned with a ``bert-base``-sized
   BERT (random weights) in fp32/TF32 and bf16, MOSEI unaligned; samples/s, peak GPU memory, MFU;
6. ``chapters``: chapters 1, 2 and 4 (``--chapters all``: every one) executed by papermill through
   ``book/build.py --ci --no-build`` with ``device=cuda``, then checked for errors and warnings;
7. ``full-run`` (optional): a MOSI-sized ``dmd synth`` file (the official split sizes), a ``bert-base``-sized
   random BERT and the official recipe for 3 epochs: seconds per epoch (each writes its ``last.pt``, 1.3 GB
   with BERT) and how many epochs fit in the goal of 2 minutes per seed on an H200;
8. ``compile`` (optional): ``torch.compile``'s GPU test, then a bf16 ``dmd bench --compile`` row where time is left.

The report is written at the start, after every stage and when the check is stopped (SIGTERM, SIGINT: the
stage in progress and its step are marked "interrupted", their processes killed, and the exit code is
128 + the signal's number): ``<out>/gpu-check-<date>.md`` and ``.json`` (the plan, the machine, each stage's
status, duration and output tail, the bench rows, the full run's epochs) and ``.log`` (every step's output). A
stopped or killed machine therefore still returns every stage finished before. The exit code is 1 when a stage
failed or timed out, 2 when there is no CUDA device, 0 when every stage that ran passed.

The check reaches the package through its public surface only (``python -m dmd_core.cli``, pytest, papermill
through ``book/build.py``), so that the package's inner layout can change under it.

``--dry-run`` runs the same script end to end on the CPU with tiny sizes (``tests/test_gpu_check.py`` does, so
that it cannot rot while no GPU is at hand): the GPU tests on the CPU minus the CUDA-only ones, bench rows with
a one-layer BERT, a 32-sample file, only the first chapter, and ``torch.compile``'s test with the ``eager``
backend but no compiled bench row (Inductor's C++ build takes minutes on two cores). ``--stall STAGE=SECONDS``
(dry run only) gives STAGE that share (and no more) and replaces its work by a process that sleeps until
stopped: the tests use it to time a stage out and to stop the check in the middle of a stage.

On a bare GPU machine that reaches no package registry (PyTorch, transformers, pandas, scikit-learn, seaborn,
pytest there; no papermill, ipykernel, nbformat or myst-nb), first download the missing wheels here with
``make gpu-wheels`` (into ``.wheels/``, ignored by git), bring that folder along, and run there::

    python3 benchmarks/gpu_check.py --install-wheels .wheels --out "$OUT"

``--out`` gets three files only (a machine lent for a while may return few); copy them into
``benchmarks/results/``. ``--stages full-run,compile`` runs some stages only (install and machine always run),
e.g. on a second try; ``--budget SECONDS`` scales every share to that total; ``--work-dir DIR`` keeps the data,
runs, executed chapters and full logs.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T0 = time.monotonic()  # the budget counts from here: the process's start (its imports took milliseconds)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LIMIT_S = 420.0  # the default plan stays under 7 minutes: the machine's command limit is 10, its time for all tries 15


@dataclass(frozen=True)
class Stage:
    """One stage of the plan: its share of the budget on one H200 (seconds) and what it proves."""

    name: str
    share_s: float
    what: str
    min_s: float | None = None  # optional stages: run only with at least this much time left (None: always run)


# In the order they run. Shares estimated for one H200 with 16 CPU cores (cold starts of PyTorch about 5 s).
STAGES = (
    Stage("install", 60, "the project, the book's helpers and the notebook tools from --install-wheels, offline"),
    Stage("machine", 15, "Python, PyTorch, CUDA, cuDNN, GPU, driver, commit"),
    Stage("first-step", 30, "`dmd train --device cuda`, one epoch on a tiny synthetic file: the first CUDA step"),
    Stage("tests", 65, "pytest tests/test_gpu.py and the suite's CUDA-only tests (torch.compile left for last)"),
    Stage("bench", 50, "`dmd bench` rows in one process: MOSI aligned fp32/bf16, MOSEI unaligned, bert-base BERT"),
    Stage("chapters", 60, "chapters 01, 02 and 04 by papermill, CI parameters, on the device"),
    Stage("full-run", 55, "MOSI-sized data, bert-base BERT, the recipe for 3 epochs: s/epoch against the goal", 35),
    Stage("compile", 65, "torch.compile: its GPU test, then a bf16 `dmd bench --compile` row", 40),
)
ALWAYS = ("install", "machine")  # run on every call: a fresh machine needs them, a second try too
SELECTABLE = tuple(s.name for s in STAGES if s.name not in ALWAYS)
GOAL_S = 120.0  # the full run's goal per seed on an H200 (until early stopping)
FULL_RUN_EPOCHS = 3  # enough for a steady s/epoch, and three 1.3 GB last.pt files, not sixty
SEED = 1111
CHAPTERS = ("01_data", "02_decoupling", "04_training")  # data; the shared run trained on the device; training
TAIL_CHARS = 3000
LOG_CHARS = 200_000  # of each step, in the combined log
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
COMPILE_ROW_MIN_S = 40.0  # a compiled bench row starts only with this much of the compile stage left
# Where the suite's CUDA tests live (those of the files that exist).
GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_devices.py", "tests/test_precision.py", "tests/test_rng.py",
                  "tests/test_data.py", "tests/test_model.py", "tests/test_train.py")  # fmt: skip
GPU_TESTS = "(test_gpu or cuda) and not compile"  # pytest -k: test_gpu.py, and tests elsewhere named for CUDA
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)  # fmt: skip
BERT_TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=512)  # fmt: skip
DMD_MODULE = ["-m", "dmd_core.cli"]  # `dmd` in a given interpreter, without relying on PATH
# Several `dmd` commands in one process (one cold start): the CLI's own entry point, one argv after another.
DMD_SEQUENCE = r"""
import json, sys, time, traceback
from dmd_core.cli import main
for label, argv in json.loads(sys.argv[1]):
    print("[gpu-check] started " + label, flush=True)
    start = time.monotonic()
    try:
        code = main(argv)
    except SystemExit as err:  # argparse's errors
        code = err.code if isinstance(err.code, int) else 2
    except Exception:
        traceback.print_exc()
        code = 1
    done = {"label": label, "returncode": code, "seconds": round(time.monotonic() - start, 1)}
    print("[gpu-check] done " + json.dumps(done), flush=True)
"""
# A `dmd synth` file and a BERT with random weights of a given size, in one process.
PREPARE = r"""
import json, sys
from transformers import BertConfig, BertModel
from dmd_core.cli import main
code = main(json.loads(sys.argv[1]))
if code:
    sys.exit(code)
BertModel(BertConfig(**json.loads(sys.argv[2]))).save_pretrained(sys.argv[3])
"""
STALL = "import time\nwhile True:\n    time.sleep(1)\n"  # --stall: a step that only ends when stopped
MACHINE_INFO = r"""
import json, os, platform
import torch
info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
from importlib.metadata import PackageNotFoundError, version
for name in ("dmd-core", "dmd-book", "transformers", "papermill", "ipykernel", "nbclient", "myst-nb", "pytest"):
    try:
        info[name] = version(name)
    except PackageNotFoundError:
        info[name] = None
print(json.dumps(info))
"""
PROGRAM_NAMES = {DMD_SEQUENCE: "python -c <dmd commands in one process>", PREPARE: "python -c <dmd synth, random BERT>",
                 STALL: "python -c <sleep until stopped>", MACHINE_INFO: "python -c <machine info>"}  # fmt: skip
# What a bare GPU machine lacks, installed from --install-wheels (myst-nb without its Sphinx dependencies:
# the chapters only call its `glue`, which needs IPython, nbformat and docutils).
WHEELS_WITH_DEPS = ("papermill", "ipykernel", "nbformat", "nbclient", "docutils")
WHEELS_NO_DEPS = ("myst-nb",)
# --download-wheels also fetches setuptools (`pip install -e .` builds offline from the folder) and, for 3.12,
# aiohttp (papermill needs it on 3.12 only, and pip evaluates such markers for the Python it runs on, not the target).
WHEELS_EXTRA = {"3.11": ("setuptools",), "3.12": ("setuptools", "aiohttp"), "3.13": ("setuptools",)}
WHEEL_PYTHONS = tuple(WHEELS_EXTRA)  # the H200 image's python3 was 3.12 when last seen
WHEEL_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_26_x86_64",
                   "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")  # fmt: skip


@dataclass(frozen=True)
class BenchRow:
    """One ``dmd bench`` row: always with a BERT of ``bert-base``'s size (one small layer in a dry run)."""

    dataset: str
    aligned: bool
    precision: str  # "fp32" (TF32 matmuls on CUDA, the trainer's default), "bf16" or "fp16"
    compile: bool = False

    @property
    def label(self) -> str:
        layout = "aligned" if self.aligned else "unaligned"
        return f"{self.dataset}-{layout}-{self.precision}" + ("-compile" if self.compile else "")

    def args(self) -> list[str]:
        return ["--dataset", self.dataset, "--aligned" if self.aligned else "--unaligned",
                "--precision", self.precision, *(["--compile"] if self.compile else [])]  # fmt: skip


BENCH_ROWS = (BenchRow("mosi", True, "fp32"), BenchRow("mosi", True, "bf16"), BenchRow("mosei", False, "fp32"))
COMPILE_ROW = BenchRow("mosi", True, "bf16", compile=True)


# ---- the plan ------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The stages to run with their shares (seconds), counted from the process's start (:data:`T0`)."""

    stages: list[Stage]
    shares: dict[str, float]

    @property
    def total_s(self) -> float:
        return sum(self.shares.values())

    def deadline(self, name: str) -> float:
        """Seconds after the start by which stage ``name`` must end: its share and the shares before it."""
        names = [s.name for s in self.stages]
        return sum(self.shares[n] for n in names[: names.index(name) + 1])

    def skip_reason(self, name: str, elapsed_s: float) -> str | None:
        """Why an optional stage does not start ``elapsed_s`` after the start (None: it runs)."""
        stage = next(s for s in self.stages if s.name == name)
        left = self.deadline(name) - elapsed_s
        if stage.min_s is not None and left < stage.min_s:
            return f"only {left:.0f} s of the budget left for it, it needs at least {stage.min_s:.0f} s"
        return None

    def lines(self) -> list[str]:
        lines = [f"plan: {len(self.stages)} stages, budget counted from the start of this process"]
        for s in self.stages:
            when = f"optional, with at least {s.min_s:.0f} s left" if s.min_s is not None else "always"
            lines.append(f"  {s.name:<10} {self.shares[s.name]:>5.0f} s  (by {self.deadline(s.name):>4.0f} s; {when})"
                         f"  {s.what}")  # fmt: skip
        lines.append(f"planned total: {self.total_s:.0f} s ({self.total_s / 60:.1f} min)")
        return lines

    def as_json(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "share_s": round(self.shares[s.name], 1), "by_s": round(self.deadline(s.name), 1),
                 "min_s": s.min_s, "what": s.what} for s in self.stages]  # fmt: skip


def make_plan(selected: list[str], budget_s: float | None = None, stall: dict[str, float] | None = None) -> Plan:
    """The plan of ``install``, ``machine`` and the ``selected`` stages; ``budget_s`` scales every share so that
    they add up to it; ``stall`` (dry run) sets some stages' shares."""
    stages = [s for s in STAGES if s.name in ALWAYS or s.name in selected]
    shares = {s.name: float(s.share_s) for s in stages}
    if budget_s is not None:
        scale = budget_s / sum(shares.values())
        shares = {name: share * scale for name, share in shares.items()}
    for name, seconds in (stall or {}).items():
        shares[name] = float(seconds)
    return Plan(stages, shares)


# ---- signals and running steps -------------------------------------------------------------------------------


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: the check stops, and writes its report first."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_signals: dict[str, Any] = {"writing": False, "pending": None}


def _on_signal(signum: int, frame: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):  # one is enough: the report gets written whatever follows
        signal.signal(sig, signal.SIG_IGN)
    if _signals["writing"]:  # never leave a half-written report: stop once it is written
        _signals["pending"] = signum
        return
    raise Interrupted(signum)


def now_s() -> float:
    """Seconds since the process started."""
    return time.monotonic() - T0


class Runner:
    """Runs commands as subprocesses (their own process group, killed whole on timeout), logging to files."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.steps: list[dict[str, Any]] = []
        self.on_start: Any = None  # called once a step's process runs (main: the report is written again)

    def run(
        self, into: dict[str, Any], name: str, cmd: list[str], deadline_s: float, cwd: Path = ROOT
    ) -> dict[str, Any]:
        """Run ``cmd`` until it ends or ``deadline_s`` (seconds after the start) comes; the step goes into
        ``into["steps"]`` before it starts, so that a report written meanwhile shows it running."""
        timeout = deadline_s - now_s()
        log = self.logs / f"{len(self.steps):02d}-{name}.log"
        step: dict[str, Any] = {"name": name, "command": _shown(cmd), "status": "running",
                                "timeout_s": round(timeout, 1), "log": str(log)}  # fmt: skip
        self.steps.append(step)
        into.setdefault("steps", []).append(step)
        print(f"[gpu-check] {name}: {step['command']} (timeout {timeout:.0f} s)", flush=True)
        if timeout < 1:
            step.update(status="timed out", returncode=None, seconds=0.0, tail="not started: no time left")
            log.write_text("not started: no time left in the budget\n")
            return step
        start = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            step["pid"] = proc.pid
            try:
                if self.on_start is not None:
                    self.on_start()
                returncode = proc.wait(timeout=timeout)
                status = "passed" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                returncode, status = None, "timed out"
            except BaseException:  # stopped by a signal: leave nothing running
                _kill_group(proc, grace_s=2.0)
                step.update(status="interrupted", returncode=None, seconds=round(time.monotonic() - start, 1),
                            tail=_tail(log.read_text(errors="replace")))  # fmt: skip
                raise
        step.update(status=status, returncode=returncode, seconds=round(time.monotonic() - start, 1),
                    tail=_tail(log.read_text(errors="replace")))  # fmt: skip
        print(f"[gpu-check] {name}: {status} in {step['seconds']} s", flush=True)
        return step


def _kill_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM to the step's whole process group (papermill kernels, compile workers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # what the group's leader left behind (a kernel that outlived it)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _shown(cmd: list[str]) -> str:
    """A command as the report shows it: ``python`` for the interpreter, names for the inline programs."""
    if cmd[1:3] == DMD_MODULE:
        return shlex.join(["dmd", *cmd[3:]])
    if cmd[1:2] == ["-c"]:
        return " ".join([PROGRAM_NAMES.get(cmd[2], "python -c <code>"), *map(shlex.quote, cmd[3:])])
    return shlex.join(["python" if Path(cmd[0]).name.startswith("python") else cmd[0], *cmd[1:]])


def _tail(text: str, n: int = TAIL_CHARS) -> str:
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines())  # progress bars: last state
    return text if len(text) <= n else "..." + text[-n:]


def _fresh(folder: Path) -> Path:
    """``folder``, empty (a reused --work-dir holds an earlier check's files)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _combine(status: list[str]) -> str:
    for worst in ("interrupted", "failed", "timed out"):
        if worst in status:
            return worst
    return "passed" if status else "skipped"


def _read_log(step: dict[str, Any]) -> str:
    path = Path(step["log"])
    return path.read_text(errors="replace") if path.is_file() else ""


# ---- the stages ----------------------------------------------------------------------------------------------


@dataclass
class Check:
    """Settings of one check: CUDA for real, or the CPU with tiny sizes (``dry_run``)."""

    dry_run: bool
    device: str
    work: Path
    runner: Runner
    report: dict[str, Any]
    wheels: Path | None = None
    chapters: tuple[str, ...] = CHAPTERS
    stall: dict[str, float] = field(default_factory=dict)

    @property
    def py(self) -> str:
        return sys.executable

    def run(self, into: dict[str, Any], name: str, cmd: list[str], deadline_s: float, **kw: Any) -> dict[str, Any]:
        return self.runner.run(into, name, cmd, deadline_s, **kw)


def stage_install(c: Check, result: dict[str, Any], deadline_s: float) -> None:
    """The project and the book's helpers (editable, no dependencies) and what a bare GPU machine lacks, from
    ``--install-wheels``, offline."""
    assert c.wheels is not None
    pip = [c.py, "-m", "pip", "install", "--no-index", "--find-links", str(c.wheels.resolve()),
           "--disable-pip-version-check"]  # fmt: skip
    ours = ["-e", str(ROOT)] + (["-e", str(ROOT / "book")] if (ROOT / "book" / "pyproject.toml").is_file() else [])
    steps = [
        c.run(result, "install-project", [*pip, "--no-deps", *ours, *WHEELS_NO_DEPS], deadline_s),
        c.run(result, "install-notebook-tools", [*pip, *WHEELS_WITH_DEPS], deadline_s),
    ]
    result["status"] = _combine([s["status"] for s in steps])


def stage_machine(c: Check, result: dict[str, Any], deadline_s: float) -> None:
    step = c.run(result, "machine-info", [c.py, "-c", MACHINE_INFO], deadline_s)
    info: dict[str, Any] = {}
    if step["status"] == "passed":
        info = json.loads(_read_log(step).strip().splitlines()[-1])
    else:
        info["error"] = step.get("tail", "")
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)  # fmt: skip
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, timeout=20)
        info["commit"] = commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    c.report["machine"] = info
    result["status"] = step["status"]


def stage_first_step(c: Check, result: dict[str, Any], deadline_s: float) -> None:
    """``dmd train --device cuda`` as a user types it, one epoch on a tiny file: the first CUDA training step."""
    folder = _fresh(c.work / "first-step")
    data, runs = folder / "tiny.pkl", folder / "run"
    steps = [c.run(result, "synth", [c.py, *DMD_MODULE, "synth", "--dataset", "mosi", "--aligned", "--sizes", "32",
                                     "16", "16", "--out", str(data)], deadline_s)]  # fmt: skip
    if steps[-1]["status"] == "passed":
        steps.append(c.run(result, "train", [c.py, *DMD_MODULE, "train", "--data", str(data), "--bert", "none",
                                             "--seeds", str(SEED), "--max-epochs", "1", "--device", c.device,
                                             "--out", str(runs), "--no-progress"], deadline_s))  # fmt: skip
    status = _combine([s["status"] for s in steps])
    if steps[-1]["name"] == "train":
        seed = _seed_result(runs / f"seed_{SEED}", steps[-1])
        result["seed"] = seed
        if status == "passed" and not (seed["epochs"] == 1 and seed["test"]):
            status, result["problem"] = "failed", "dmd train ended without one epoch in history.csv and test metrics"
    result["status"] = status


def stage_tests(c: Check, result: dict[str, Any], deadline_s: float, keyword: str = GPU_TESTS) -> None:
    xml = c.work / f"pytest-{len(c.runner.steps)}.xml"
    files = [f for f in GPU_TEST_FILES if (ROOT / f).is_file()] if keyword == GPU_TESTS else [GPU_TEST_FILES[0]]
    cmd = [c.py, "-m", "pytest", *files, "-k", keyword, "-v", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-o", "junit_family=xunit1"]  # fmt: skip
    try:
        step = c.run(result, "pytest", cmd, deadline_s)
    finally:  # the JUnit XML is written at the end; of a run stopped half-way, the verbose log tells what finished
        step = result["steps"][-1]
        tests = _junit(xml) if xml.is_file() else pytest_outcomes(_read_log(step), step["status"])
        result["tests"] = tests
        result["counts"] = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    status = step["status"]
    if status == "passed" and not tests:
        status, result["problem"] = "failed", "pytest selected no test"
    result["status"] = status


def pytest_outcomes(log: str, stopped: str = "timed out") -> list[dict[str, Any]]:
    """Outcomes from ``pytest -v`` lines (``tests/x.py::name PASSED [ 10%]``); the test running when the run was
    stopped, whose line has no outcome yet, gets ``stopped`` ("timed out" or "interrupted")."""
    cases = []
    for line in log.splitlines():
        if not line.startswith("tests/") or "::" not in line:
            continue
        module, rest = line.split("::", 1)
        words = rest.split()
        outcome = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped"}.get(
            words[1] if len(words) > 1 else "", stopped)  # fmt: skip
        cases.append({"name": words[0], "module": module, "outcome": outcome, "seconds": 0.0, "properties": {},
                      "message": ""})  # fmt: skip
    return cases


def _junit(path: Path) -> list[dict[str, Any]]:
    """Each test case of a JUnit XML file: name, outcome, seconds, recorded properties, message."""
    if not path.is_file():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = (found.get("message") or "")[:500]
                break
        props = {p.get("name"): _number(p.get("value")) for p in case.iter("property")}
        module = (case.get("classname") or "").replace(".", "/") + ".py"
        cases.append({"name": case.get("name"), "module": module, "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "properties": props, "message": message})  # fmt: skip
    return cases


def _number(text: str | None) -> Any:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return text


def _bench_size(c: Check) -> list[str]:
    if c.dry_run:
        return ["--bert-layers", "1", "--bert-hidden", "32", "--batch-size", "2", "--window-batches", "2",
                "--windows", "1", "--eval-batches", "1", "--threads", "1"]  # fmt: skip
    return ["--bert-layers", str(BERT_BASE["num_hidden_layers"]), "--bert-hidden", str(BERT_BASE["hidden_size"])]


def run_bench_rows(c: Check, result: dict[str, Any], name: str, rows: list[BenchRow], deadline_s: float) -> str:
    """``rows`` as ``dmd bench`` commands in one process (one cold start); their results go to
    ``result["rows"]``, also those of a process stopped half-way (each finished row has written its JSON)."""
    folders = {row.label: _fresh(c.work / "bench" / row.label) for row in rows}
    argv = [[row.label, ["bench", "--device", c.device, *row.args(), *_bench_size(c), "--out", str(folders[row.label])]]
            for row in rows]  # fmt: skip
    result.setdefault("rows", [])
    try:
        c.run(result, name, [c.py, "-c", DMD_SEQUENCE, json.dumps(argv)], deadline_s)
    finally:
        step = result["steps"][-1]
        result["rows"] += _bench_rows(rows, folders, _read_log(step), step["status"])
    return step["status"]


def _bench_rows(rows: list[BenchRow], folders: dict[str, Path], log: str, stopped: str) -> list[dict[str, Any]]:
    started, done = set(), {}
    for line in log.splitlines():
        if line.startswith("[gpu-check] started "):
            started.add(line.split(" ", 2)[2].strip())
        elif line.startswith("[gpu-check] done "):
            row = json.loads(line.split(" ", 2)[2])
            done[row["label"]] = row
    out = []
    for row in rows:
        found = sorted(folders[row.label].rglob("*.json"))  # the row's record (dmd bench writes it into raw/)
        bench = json.loads(found[-1].read_text()) if found else None
        if row.label in done:
            status, seconds = ("passed" if done[row.label]["returncode"] == 0 else "failed"), done[row.label]["seconds"]
        else:
            status, seconds = (stopped if row.label in started else f"not started ({stopped})"), None
        out.append({"label": row.label, "dataset": row.dataset, "aligned": row.aligned, "precision": row.precision,
                    "compile": row.compile, "status": status, "seconds": seconds, "result": bench,
                    **_bench_numbers(bench)})  # fmt: skip
    return out


def _bench_numbers(result: dict[str, Any] | None) -> dict[str, Any]:
    if result is None:
        return {}
    keys = ("train_samples_per_s", "eval_samples_per_s", "peak_device_gb", "peak_rss_gb", "train_mfu", "eval_mfu",
            "peak_flops_source", "warmup_s")  # fmt: skip
    numbers = {k: result.get(k) for k in keys}
    flops = result.get("flops_per_train_sample")
    numbers["gflop_per_train_sample"] = None if flops is None else flops / 1e9
    return numbers


def stage_bench(c: Check, result: dict[str, Any], deadline_s: float) -> None:
    result["status"] = run_bench_rows(c, result, "bench-rows", list(BENCH_ROWS), deadline_s)
    if result["status"] == "passed" and any(r["status"] != "passed" for r in result["rows"]):
        result["status"] = "failed"


def stage_chapters(c: Check, result: dict[str, Any], deadline_s: float) -> None:
    names = [p.stem for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    no_device = [n for n in names if "device" not in _parameters(ROOT / "notebooks" / f"{n}.ipynb")]
    run = [n for n in names if n in c.chapters]
    result.update(chapters=run, without_device_parameter=no_device, chapter_seconds={}, problems=[])
    wanted = ["papermill", "ipykernel", "nbformat", "myst_nb"] + (["dmd_book"] if (ROOT / "book" / "dmd_book").is_dir()
                                                                   else [])  # fmt: skip
    missing = _missing_modules(c, wanted)
    if missing:
        result.update(status="failed", problems=[f"not installed: {', '.join(missing)} (bring them as wheels: make "
                                                 "gpu-wheels here, --install-wheels .wheels there)"])  # fmt: skip
        return
    # A copy of the book's sources, as tests/test_notebooks.py makes: the checkout's book/executed stays as is.
    repo, work = _fresh(c.work / "book-repo"), _fresh(c.work / "book-work")
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    shutil.copytree(ROOT / "book", repo / "book", ignore=shutil.ignore_patterns("executed", "_build", "__pycache__",
                                                                                "*.egg-info"))  # fmt: skip
    for name in ("_config.yml", "_toc.yml"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, repo / name)
    cmd = [c.py, str(repo / "book" / "build.py"), "--ci", "--no-build", "--work-dir", str(work),
           "-p", f"device={c.device}", "--only", *run]  # fmt: skip
    executed = repo / "book" / "executed"
    try:
        step = c.run(result, "chapters", cmd, deadline_s, cwd=repo)
    finally:
        step = result["steps"][-1]
        result["chapter_seconds"] = _chapter_seconds(executed, _read_log(step))
    for name in result["chapter_seconds"]:
        result["problems"] += _notebook_problems(repo / "book" / "build.py", executed / f"{name}.ipynb")
    status = step["status"]
    if status == "passed" and (result["problems"] or set(result["chapter_seconds"]) != set(run)):
        status = "failed"
    result["status"] = status


def _missing_modules(c: Check, modules: list[str]) -> list[str]:
    """Which of ``modules`` the steps' interpreter does not find, asked in a fresh one: an editable install made by
    ``--install-wheels`` is seen by the interpreters started after it only."""
    code = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    try:
        found = subprocess.run([c.py, "-c", code, *modules], env=c.runner.env, capture_output=True, text=True,
                               timeout=60)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        return [f"{' '.join(modules)} (could not ask: {err})"]
    return found.stdout.split() if found.returncode == 0 else [f"{' '.join(modules)} ({found.stderr.strip()[-300:]})"]


def _chapter_seconds(executed: Path, log: str) -> dict[str, float]:
    timings = executed / "timings.json"
    if timings.is_file():
        return {k: v for k, v in json.loads(timings.read_text())["seconds"].items() if k != "jupyter-book build"}
    seconds = {}  # stopped: the chapters that finished are in the log
    for line in log.splitlines():
        if " executed in " in line:
            name, _, rest = line.split(": ", 1)[-1].partition(" executed in ")
            seconds[name.strip()] = float(rest.split()[0])
    return seconds


def _notebook_problems(build_py: Path, notebook: Path) -> list[str]:
    """The book build's own check of an executed chapter (``notebook_problems`` of ``book/build.py``)."""
    spec = importlib.util.spec_from_file_location("book_build_copy", build_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "notebook_problems"):
        return [f"{build_py.name} has no notebook_problems: {notebook.name} was not checked"]
    return module.notebook_problems(notebook)


def _parameters(notebook: Path) -> set[str]:
    """The names a notebook's ``parameters`` cell assigns (papermill's parameters)."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return set(re.findall(r"^(\w+)\s*=", "".join(cell["source"]), re.MULTILINE))
    return set()


def stage_full_run(c: Check, result: dict[str, Any], deadline_s: float) -> None:
    folder = _fresh(c.work / "full-run")
    data, bert, runs = folder / "mosi_aligned_50.pkl", folder / "bert", folder / "run"
    sizes = ["--sizes", "32", "16", "16"] if c.dry_run else []  # else the official split sizes
    bert_config = BERT_TINY if c.dry_run else BERT_BASE
    epochs = 2 if c.dry_run else FULL_RUN_EPOCHS
    result.update(goal_s=GOAL_S, max_epochs=epochs, bert=bert_config, seeds=[],
                  data="dmd synth --dataset mosi --aligned " + (" ".join(sizes) or "(official split sizes 1284/229/686)"))  # fmt: skip
    synth = ["synth", "--dataset", "mosi", "--aligned", *sizes, "--out", str(data)]
    steps = [c.run(result, "prepare", [c.py, "-c", PREPARE, json.dumps(synth), json.dumps(bert_config), str(bert)],
                   deadline_s)]  # fmt: skip
    if steps[-1]["status"] == "passed":
        try:
            steps.append(c.run(result, "train", [c.py, *DMD_MODULE, "train", "--data", str(data), "--bert", str(bert),
                                                 "--dataset", "mosi", "--aligned", "--seeds", str(SEED), "--max-epochs",
                                                 str(epochs), "--device", c.device, "--out", str(runs), "--no-progress"],
                               deadline_s))  # fmt: skip
        finally:
            result["seeds"] = [_seed_result(runs / f"seed_{SEED}", result["steps"][-1])]
    result["status"] = _combine([s["status"] for s in steps])


def _seed_result(folder: Path, step: dict[str, Any]) -> dict[str, Any]:
    """What one seed's run folder says, even of a run stopped half-way (history.csv is written every epoch)."""
    history = []
    if (folder / "history.csv").is_file():
        with (folder / "history.csv").open() as f:
            history = list(csv.DictReader(f))
    metrics_file = folder / "test_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    epoch_s = [float(row["time_s"]) for row in history if row.get("time_s")]
    later = epoch_s[1:] or epoch_s  # the first epoch also pays CUDA's and cuBLAS's start-up
    wall = step.get("seconds") or 0.0
    mean = sum(later) / len(later) if later else None
    start_s = wall - sum(epoch_s) if epoch_s else None  # start-up, data, BERT, test: what is not an epoch
    fit = math.floor((GOAL_S - start_s) / mean) if mean and start_s is not None and GOAL_S > start_s else None
    last = folder / "last.pt"
    return {
        "seed": SEED,
        "status": step.get("status"),
        "wall_s": wall,  # the whole `dmd train` process: start-up, data and BERT loading, epochs, test
        "epochs": len(history),
        "epochs_s": round(sum(epoch_s), 1),
        "first_epoch_s": round(epoch_s[0], 2) if epoch_s else None,
        "mean_epoch_s": round(mean, 2) if mean else None,  # the epochs after the first
        "other_s": round(start_s, 1) if start_s is not None else None,
        "epochs_in_goal": fit,  # epochs that fit in GOAL_S besides the rest of the process, at mean_epoch_s
        "last_pt_gb": round(last.stat().st_size / 1e9, 2) if last.is_file() else None,
        "stop_reason": metrics.get("stop_reason") if metrics else None,
        "best_epoch": metrics.get("best_epoch") if metrics else None,
        "test": {k: metrics[k] for k in ("MAE", "Corr", "Non0_acc_2", "Mult_acc_7") if k in metrics}
        if metrics
        else None,
    }


def stage_compile(c: Check, result: dict[str, Any], deadline_s: float) -> None:
    stage_tests(c, result, deadline_s, keyword="compile")
    statuses = [result["status"]]
    result["rows"] = []
    if c.dry_run:
        result["not_run"] = {COMPILE_ROW.label: "dry run: Inductor's C++ build takes minutes on a CPU"}
    elif deadline_s - now_s() < COMPILE_ROW_MIN_S:
        result["not_run"] = {COMPILE_ROW.label: f"only {deadline_s - now_s():.0f} s left, it needs "
                                                f"{COMPILE_ROW_MIN_S:.0f} s"}  # fmt: skip
    else:
        statuses.append(run_bench_rows(c, result, "bench-compile", [COMPILE_ROW], deadline_s))
    result["status"] = _combine(statuses)


def stage_stall(c: Check, result: dict[str, Any], deadline_s: float) -> None:
    """--stall (dry run): a step that sleeps until its timeout or a signal stops it."""
    result["status"] = c.run(result, "stall", [c.py, "-c", STALL], deadline_s)["status"]


STAGE_FUNCTIONS = {"install": stage_install, "machine": stage_machine, "first-step": stage_first_step,
                   "tests": stage_tests, "bench": stage_bench, "chapters": stage_chapters,
                   "full-run": stage_full_run, "compile": stage_compile}  # fmt: skip


# ---- wheels for a bare machine -------------------------------------------------------------------------------


def download_wheels(folder: Path) -> int:
    """Download here what ``--install-wheels`` installs there: binary wheels for each of ``WHEEL_PYTHONS``."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()  # one version of each package
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    for version in WHEEL_PYTHONS:
        base = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
                "--python-version", version, "--implementation", "cp", *platforms, "-d", str(folder)]  # fmt: skip
        for cmd in ([*base, *WHEELS_WITH_DEPS, *WHEELS_EXTRA[version]], [*base, "--no-deps", *WHEELS_NO_DEPS]):
            if subprocess.run(cmd).returncode != 0:
                print(f"[gpu-check] failed: {shlex.join(cmd)}", file=sys.stderr)
                return 1
    wheels = sorted(folder.glob("*.whl"))
    mib = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"[gpu-check] {len(wheels)} wheels, {mib:.1f} MiB in {folder} (for Python {', '.join(WHEEL_PYTHONS)})")
    return 0


# ---- the report ----------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".1f") -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        value = int(value)
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _cell(text: Any, n: int = 160) -> str:
    return str(text or "").replace("|", "/").replace("\n", " ")[:n]


def _headline(report: dict[str, Any]) -> str:
    if report.get("interrupted"):
        return f"STOPPED by {report['interrupted']}"
    if "exit_code" not in report:
        return "running"
    return "all stages that ran passed" if report.get("ok") else "NOT all passed"


def render(report: dict[str, Any]) -> str:
    m, stages = report.get("machine") or {}, report.get("stages", {})
    gpu = f"{m['gpu']} ({m.get('gpu_memory_gib')} GiB)" if m.get("gpu") else "none"
    title = "GPU check" + (" (DRY RUN on the CPU: tiny sizes, proves only that the script works)"
                           if report.get("dry_run") else "")  # fmt: skip
    lines = [f"# {title}", "", f"`{report.get('command')}`, {report.get('started')}, "
             f"{_fmt(report.get('elapsed_s'), '.0f')} s of a {_fmt(report.get('budget_s'), '.0f')} s plan: "
             f"**{_headline(report)}** (exit code {_fmt(report.get('exit_code'))}).", "",
             "## Machine", "", "| GPU | driver | torch | CUDA | cuDNN | Python | transformers | CPUs | commit |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {gpu} | {_fmt(m.get('driver'))} "
             f"| {_fmt(m.get('torch'))} | {_fmt(m.get('cuda'))} | {_fmt(m.get('cudnn'))} | {_fmt(m.get('python'))} "
             f"| {_fmt(m.get('transformers'))} | {_fmt(m.get('cpus'))} | {_fmt(m.get('commit'))} |", "",
             "## Stages", "", "In the order they ran; the share is the plan's, the timeout what the stage had "
             "(its share and what earlier stages left).", "",
             "| stage | status | seconds | share s | timeout s | note |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in stages.items():
        note = s.get("reason") or s.get("problem") or ("error, see below" if s.get("error") else "")
        lines.append(f"| {name} | {s.get('status')} | {_fmt(s.get('seconds'))} | {_fmt(s.get('share_s'), '.0f')} "
                     f"| {_fmt(s.get('timeout_s'), '.0f')} | {_cell(note)} |")  # fmt: skip
    for name, s in [("check", report), *stages.items()]:
        if s.get("error"):
            lines += ["", f"**{name}: error**", "", "```", str(s["error"]).rstrip(), "```"]
    shown = {name: s for name, s in stages.items() if s.get("status") not in ("planned", "skipped", None)}
    if "first-step" in shown and shown["first-step"].get("seed"):
        seed = shown["first-step"]["seed"]
        lines += ["", "## First CUDA training step (`dmd train --device " + str(report.get("device")) + "`)", "",
                  f"{seed['epochs']} epoch(s) in {_fmt(seed['epochs_s'])} s, the whole process "
                  f"{_fmt(seed['wall_s'])} s; test MAE {_fmt((seed['test'] or {}).get('MAE'), '.4f')}."]  # fmt: skip
    for name, heading in (("tests", "GPU tests (pytest)"), ("compile", "torch.compile")):
        if name in shown and "tests" in shown[name]:
            lines += _render_tests(shown[name], heading)
    for name in ("bench", "compile"):
        if name in shown and (shown[name].get("rows") or shown[name].get("not_run")):
            lines += _render_rows(shown[name], report, "`dmd bench` rows" if name == "bench" else "compiled bench row")
    if "chapters" in shown and "chapters" in shown["chapters"]:
        ch = shown["chapters"]
        done = ", ".join(f"{n} {_fmt(v)} s" for n, v in ch.get("chapter_seconds", {}).items()) or "none"
        lines += ["", f"## Chapters (papermill, CI parameters, `device={report.get('device')}`)", "",
                  f"Asked: {', '.join(ch['chapters'])}. Executed: {done}. Chapters without a `device` parameter: "
                  f"{', '.join(ch.get('without_device_parameter', [])) or 'none'}."]  # fmt: skip
        lines += [f"- {problem}" for problem in ch.get("problems", [])]
    if "full-run" in shown and "bert" in shown["full-run"]:
        lines += _render_full_run(shown["full-run"])
    lines += ["", "## Output of each step (tails)", ""]
    for name, s in stages.items():
        for step in s.get("steps", []):
            lines += [f"<details><summary>{name} / {step['name']}: {step['status']} ({_fmt(step.get('seconds'))} s)"
                      f"</summary>", "", f"`{step['command']}`", "", "```", step.get("tail", ""), "```", "",
                      "</details>", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def _render_tests(t: dict[str, Any], heading: str) -> list[str]:
    counts = t.get("counts", {})
    lines = ["", f"## {heading}", "", f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
             f"{counts.get('error', 0)} errors, {counts.get('skipped', 0)} skipped.", "",
             "| test | outcome | s | measured |", "|---|---|---|---|"]  # fmt: skip
    for case in t["tests"]:
        props = ", ".join(f"{k} {_fmt(v, '.3g')}" for k, v in case["properties"].items())
        name = (
            case["name"] if case.get("module", "").endswith("test_gpu.py") else f"{case.get('module')}::{case['name']}"
        )
        lines.append(f"| {name} | {case['outcome']} | {case['seconds']:.1f} | {props or _cell(case['message'], 200)} |")
    return lines


def _render_rows(b: dict[str, Any], report: dict[str, Any], heading: str) -> list[str]:
    bert = "one layer of 32 (dry run)" if report.get("dry_run") else "`bert-base` size, random weights"
    lines = ["", f"## {heading}", "", f"BERT: {bert}; fp32 means TF32 matmuls (the trainer's default on CUDA). All "
             "rows in one process: the first row's warm-up includes CUDA's start. MFU is against the GPU's datasheet "
             "peak in the same precision where the GPU is known (else a timed matmul); each row's `peak_flops_source` "
             "in the JSON says which.", "",
             "| row | status | train samples/s | eval samples/s | peak GPU GB | train MFU | GFLOP/sample "
             "| warm-up s | s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in b.get("rows", []):
        mfu = "-" if r.get("train_mfu") is None else f"{100 * r['train_mfu']:.1f}%"
        lines.append(f"| {r['label']} | {r['status']} | {_fmt(r.get('train_samples_per_s'))} "
                     f"| {_fmt(r.get('eval_samples_per_s'))} | {_fmt(r.get('peak_device_gb'), '.2f')} "
                     f"| {mfu} | {_fmt(r.get('gflop_per_train_sample'), '.2f')} "
                     f"| {_fmt(r.get('warmup_s'))} | {_fmt(r.get('seconds'))} |")  # fmt: skip
    for label, why in b.get("not_run", {}).items():
        lines.append(f"| {label} | not run ({why}) | | | | | | | |")
    return lines


def _render_full_run(f: dict[str, Any]) -> list[str]:
    lines = ["", "## Official MOSI-sized run, bounded", "", f"Data: `{f['data']}`; BERT: "
             f"{f['bert']['num_hidden_layers']} layer(s) of width {f['bert']['hidden_size']} (random weights); the "
             f"official recipe for {f['max_epochs']} epochs (each writes `last.pt`). Goal: an official run (until early "
             f"stopping) in under {f['goal_s']:.0f} s per seed; *epochs in goal* is how many epochs at the later "
             "epochs' pace fit in it besides the rest of the process (start-up, data, BERT, test).", "",
             "| seed | status | wall s | epochs | first epoch s | later s/epoch | rest s | epochs in goal | last.pt GB "
             "| test MAE |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in f.get("seeds", []):
        lines.append(f"| {s['seed']} | {s['status']} | {_fmt(s['wall_s'])} | {s['epochs']} "
                     f"| {_fmt(s['first_epoch_s'], '.2f')} | {_fmt(s['mean_epoch_s'], '.2f')} | {_fmt(s['other_s'])} "
                     f"| {_fmt(s['epochs_in_goal'])} | {_fmt(s['last_pt_gb'], '.2f')} "
                     f"| {_fmt((s['test'] or {}).get('MAE'), '.4f')} |")  # fmt: skip
    return lines


class Reporter:
    """Writes the report (JSON, markdown, combined log) to the same three files each time it is asked."""

    def __init__(self, out: Path, stem: str, runner: Runner) -> None:
        self.out, self.runner = out, runner
        self.stem = out / stem

    def write(self, report: dict[str, Any]) -> Path:
        """Write all three files, each whole (a signal meanwhile waits until they are written)."""
        _signals["writing"] = True
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            report["elapsed_s"] = round(now_s(), 1)
            parts = [f"===== {step['name']}: {step['command']}\n{_read_log(step)[-LOG_CHARS:]}\n"
                     for step in self.runner.steps]  # fmt: skip
            for suffix, text in ((".json", json.dumps(report, indent=2, default=str) + "\n"), (".log", "".join(parts)),
                                 (".md", render(report))):  # fmt: skip
                tmp = Path(f"{self.stem}{suffix}.tmp")
                tmp.write_text(text)
                os.replace(tmp, f"{self.stem}{suffix}")
        finally:
            _signals["writing"] = False
        pending, _signals["pending"] = _signals["pending"], None
        if pending is not None:
            raise Interrupted(pending)
        return Path(f"{self.stem}.md")


# ---- main ----------------------------------------------------------------------------------------------------


def _parse_stall(items: list[str], parser: argparse.ArgumentParser) -> dict[str, float]:
    stall = {}
    for item in items:
        name, sep, seconds = item.partition("=")
        try:
            stall[name] = float(seconds)
        except ValueError:
            sep = ""
        if not sep or name not in SELECTABLE:
            parser.error(f"--stall: expected STAGE=SECONDS with STAGE one of {','.join(SELECTABLE)}, found {item!r}")
    return stall


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run everything on the CPU with tiny sizes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes (default %(default)s)")
    parser.add_argument("--budget", "--budget-s", type=float, default=None, metavar="SECONDS",
                        help="the planned total, counted from the start (default: the sum of the stages' shares, "
                        "400 s for all)")  # fmt: skip
    parser.add_argument("--stages", default=",".join(SELECTABLE),
                        help="comma-separated subset of " + ",".join(SELECTABLE) + " (install and machine always run)")  # fmt: skip
    parser.add_argument("--chapters", default=None,
                        help=f"comma-separated chapters, or all (default {','.join(CHAPTERS)}; dry run: 01_data)")  # fmt: skip
    parser.add_argument("--device", default=None, help="CUDA device (default cuda; cpu with --dry-run)")
    parser.add_argument("--install-wheels", type=Path, default=None, metavar="DIR",
                        help="first install the project and the notebook tools from the wheels in DIR, offline")  # fmt: skip
    parser.add_argument("--download-wheels", type=Path, default=None, metavar="DIR",
                        help="only download, into DIR, the wheels that --install-wheels needs (make gpu-wheels)")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where data, runs and logs go (kept; default: a temporary folder, removed)")  # fmt: skip
    parser.add_argument("--stall", action="append", default=[], metavar="STAGE=SECONDS",
                        help="dry run only: STAGE gets SECONDS (no more) and its work is a process that sleeps until stopped "
                        "(for the tests of timeouts and signals)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.download_wheels:
        return download_wheels(args.download_wheels)
    selected = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(selected) - set(SELECTABLE))
    if unknown or not selected:
        parser.error(f"--stages: expected some of {','.join(SELECTABLE)}, found {args.stages!r}")
    stall = _parse_stall(args.stall, parser)
    if stall and not args.dry_run:
        parser.error("--stall: only with --dry-run")
    if set(stall) - set(selected):
        parser.error(f"--stall: {','.join(sorted(set(stall) - set(selected)))} is not among --stages")
    names = [p.stem for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    chapters = tuple(CHAPTERS[:1] if args.dry_run else CHAPTERS)
    if args.chapters:
        chapters = tuple(names) if args.chapters == "all" else tuple(n.strip() for n in args.chapters.split(","))
        if set(chapters) - set(names):
            parser.error(f"--chapters: expected all or some of {','.join(names)}, found {args.chapters!r}")
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget: expected a positive number of seconds, found {args.budget}")

    plan = make_plan(selected, args.budget, stall)
    for line in plan.lines():
        print(f"[gpu-check] {line}", flush=True)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    work = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               DMD_TEST_DEVICE=device)  # fmt: skip
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"  # tiny sizes: one thread is fastest, and CI's two cores are shared
    runner = Runner(work, env)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "dry_run": args.dry_run, "device": device, "command": _shown([sys.executable, *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": round(plan.total_s, 1), "plan": plan.as_json(),
        "goal_s": GOAL_S, "machine": {}, "interrupted": None,
        "stages": {s.name: {"status": "planned", "share_s": round(plan.shares[s.name], 1)} for s in plan.stages},
    }  # fmt: skip
    reporter = Reporter(args.out, ("gpu-check-dry-run-" if args.dry_run else "gpu-check-") + stamp, runner)
    check = Check(args.dry_run, device, work, runner, report, args.install_wheels, chapters, stall)
    runner.on_start = lambda: reporter.write(report)  # the report shows each step running, with its process id
    code = 0
    try:
        path = reporter.write(report)
        print(f"[gpu-check] report (rewritten after every stage): {path} (and .json, .log)", flush=True)
        code = run_stages(check, plan, reporter)
    except Interrupted as stop:
        report["interrupted"] = str(stop)
        for result in report["stages"].values():  # stopped between two of its steps, or while its report was written
            if result["status"] == "running":
                result["status"] = "interrupted"
        code = 128 + stop.signum
        print(f"[gpu-check] stopped by {stop}: writing the report", flush=True)
    finally:
        report["exit_code"] = code
        report["ok"] = code == 0
        for sig in (signal.SIGTERM, signal.SIGINT):  # the last report is written whatever comes now
            signal.signal(sig, signal.SIG_IGN)
        try:
            path = reporter.write(report)
        except Interrupted:
            path = reporter.stem.with_suffix(".md")
        print(f"[gpu-check] report: {path} (and .json, .log); exit code {code}", flush=True)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return code


def run_stages(c: Check, plan: Plan, reporter: Reporter) -> int:
    """Each stage of ``plan`` in turn, the report rewritten before and after each; returns the exit code."""
    report = c.report
    for stage in plan.stages:
        result = report["stages"][stage.name]
        deadline = plan.deadline(stage.name)
        if stage.name in c.stall:  # its share at most, whatever earlier stages left
            deadline = min(deadline, now_s() + c.stall[stage.name])
        reason = plan.skip_reason(stage.name, now_s())
        if stage.name == "install" and c.wheels is None:
            reason = "no --install-wheels: nothing to install"
        if reason:
            result.update(status="skipped", reason=reason)
            print(f"[gpu-check] stage {stage.name}: skipped ({reason})", flush=True)
            reporter.write(report)
            continue
        result.update(status="running", started_s=round(now_s(), 1), timeout_s=round(deadline - now_s(), 1))
        print(f"[gpu-check] stage {stage.name}: running (until {deadline:.0f} s after the start)", flush=True)
        reporter.write(report)
        began = time.monotonic()
        try:
            function = stage_stall if stage.name in c.stall else STAGE_FUNCTIONS[stage.name]
            function(c, result, deadline)
        except Interrupted:
            result["status"] = "interrupted"
            raise
        except Exception:  # a bug of this script: report it, and go on with the next stage
            result.update(status="failed", error=traceback.format_exc()[-TAIL_CHARS:])
        finally:
            result["seconds"] = round(time.monotonic() - began, 1)
        print(f"[gpu-check] stage {stage.name}: {result['status']} in {result['seconds']} s", flush=True)
        reporter.write(report)
        if stage.name == "machine" and c.device.startswith("cuda") and not report["machine"].get("cuda_available"):
            report["error"] = "no CUDA device here (PyTorch sees none): nothing was checked; --dry-run runs on the CPU"
            print(f"[gpu-check] {report['error']}", flush=True)
            for later in plan.stages[plan.stages.index(stage) + 1 :]:
                report["stages"][later.name].update(status="skipped", reason="no CUDA device")
            return 2
    failed = [name for name, s in report["stages"].items() if s["status"] in ("failed", "timed out")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
