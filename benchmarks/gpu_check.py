"""One command that proves the GPU path: ``python benchmarks/gpu_check.py`` (also ``make gpu-check``).

What it proves on a CUDA machine, in four stages, each run as subprocesses with a timeout out of one time
budget (``--budget-s``, default 450 s for one H200; time a stage leaves unused goes to the later ones):

1. ``tests``: ``pytest tests/test_gpu.py`` on CUDA: the three reference fixtures reproduced in exact float32
   (TF32 off for cuBLAS and cuDNN), bf16 and fp16 autocast within a stated bound of float32, fit, resume and
   predict, ``compile=True``, BERT fine-tuning, a training epoch under ``set_sync_debug_mode("error")``;
2. ``bench``: ``dmd bench`` rows (samples/s, peak GPU memory, MFU): MOSI aligned with a ``bert-base``-sized
   BERT (random weights) in fp32/TF32 and bf16, with and without ``torch.compile``; MOSEI unaligned;
3. ``full-run``: one official MOSI-sized run (``dmd synth`` full-size file, ``bert-base``-sized random BERT,
   ``dmd train`` with the official recipe until early stopping or 60 epochs): wall time per seed against
   the goal of 2 minutes on an H200;
4. ``chapters``: every chapter executed by papermill (``book/build.py --ci --no-build``) with
   ``device=cuda`` and the CI parameters, then checked for errors and warnings as the book build checks.

A stage that overruns its share is stopped and reported as timed out; the report is written in every case:
``<out>/gpu-check-<date>.md`` and ``.json`` (machine, each stage's status, duration and output tail, the
bench rows, the full run's time per seed) and ``.log`` (every step's output). The exit code is 1 when a
stage failed (timeouts alone are not failures), 2 when there is no CUDA device.

``--dry-run`` runs the same script end to end on the CPU with tiny sizes (``tests/test_gpu_check.py`` does,
about a minute, so that it cannot rot while no GPU is at hand): the GPU tests on the CPU minus the CUDA-only
ones, bench rows with a one-layer BERT and no ``torch.compile`` rows (Inductor's C++ build takes minutes on
two cores), a 32-sample synthetic file for one epoch, and only the first chapter.

On a bare GPU machine that reaches no package registry (PyTorch, transformers, pandas, scikit-learn, seaborn,
pytest there; no papermill, ipykernel, nbformat or myst-nb), first download the missing wheels here with
``make gpu-wheels`` (into ``.wheels/``, ignored by git), bring that folder along, and run there::

    python3 benchmarks/gpu_check.py --install-wheels .wheels --out "$OUT"

``--install-wheels`` runs ``pip install --no-deps -e .`` and installs papermill, ipykernel, nbformat, nbclient,
docutils and myst-nb (the chapters' ``glue``; without its Sphinx dependencies) from that folder, offline.
``--out`` gets three files only (a machine lent for a while may return few); copy them into
``benchmarks/results/``. ``--stages bench,full-run`` re-runs some stages only, e.g. on a second try, and
``--work-dir DIR`` keeps the data, runs, executed chapters and full logs.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("tests", "bench", "full-run", "chapters")
# Each stage's share of the budget (renormalised over the stages asked for). A stage's timeout is its share
# of the time still left, so what an early stage leaves unused goes to the later ones.
SHARES = {"tests": 0.25, "bench": 0.25, "full-run": 0.3, "chapters": 0.2}
GOAL_S = 120.0  # the full run's goal per seed on an H200
MAX_EPOCHS = 60
SEED = 1111
TAIL_CHARS = 3000
LOG_CHARS = 200_000  # of each step, in the combined log
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)  # fmt: skip
BERT_TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=512)  # fmt: skip
DMD_MODULE = ["-m", "dmd_core.cli"]  # `dmd` in a given interpreter, without relying on PATH
SAVE_BERT = (
    "import json, sys; from transformers import BertConfig, BertModel; "
    "BertModel(BertConfig(**json.loads(sys.argv[1]))).save_pretrained(sys.argv[2])"
)
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
for name in ("transformers", "papermill", "ipykernel", "nbclient", "myst-nb", "pytest"):
    try:
        info[name] = version(name)
    except PackageNotFoundError:
        info[name] = None
print(json.dumps(info))
"""
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


# Most telling first: rows that a short budget cuts off are the last ones (compiling takes longest).
BENCH_ROWS = (
    BenchRow("mosi", True, "fp32"),
    BenchRow("mosi", True, "bf16"),
    BenchRow("mosei", False, "fp32"),
    BenchRow("mosi", True, "bf16", compile=True),
    BenchRow("mosi", True, "fp32", compile=True),
)
COMPILE_WEIGHT = 3.0  # a compiled row's share of the bench stage, against 1 for the others


# ---- running steps -------------------------------------------------------------------------------------------


class Budget:
    """The time left, shared out between the stages still to run in proportion to their shares."""

    def __init__(self, total_s: float, stages: list[str]) -> None:
        self.total_s, self.start = float(total_s), time.monotonic()
        self.shares = {name: SHARES[name] for name in stages}

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.start)

    def stage_timeout(self, name: str) -> float:
        names = list(self.shares)
        later = sum(self.shares[n] for n in names[names.index(name) :])
        return max(0.0, self.left() * self.shares[name] / later)


class Runner:
    """Runs commands as subprocesses (their own process group, killed whole on timeout), logging to files."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.steps: list[dict[str, Any]] = []

    def run(self, name: str, cmd: list[str], timeout_s: float, cwd: Path = ROOT) -> dict[str, Any]:
        log = self.logs / f"{len(self.steps):02d}-{name}.log"
        step: dict[str, Any] = {"name": name, "command": _shown(cmd), "timeout_s": round(timeout_s, 1),
                                "log": str(log)}  # fmt: skip
        self.steps.append(step)
        print(f"[gpu-check] {name}: {step['command']} (timeout {timeout_s:.0f} s)", flush=True)
        if timeout_s < 1:
            step.update(status="timed out", returncode=None, seconds=0.0, tail="not started: no time left")
            log.write_text("not started: no time left in the budget\n")
            return step
        start = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            try:
                returncode = proc.wait(timeout=timeout_s)
                status = "passed" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                returncode, status = None, "timed out"
            except BaseException:  # Ctrl-C: leave nothing running
                _kill_group(proc)
                raise
        step.update(status=status, returncode=returncode, seconds=round(time.monotonic() - start, 1),
                    tail=_tail(log.read_text(errors="replace")))  # fmt: skip
        print(f"[gpu-check] {name}: {status} in {step['seconds']} s", flush=True)
        return step


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's whole process group (papermill kernels, compile workers), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _shown(cmd: list[str]) -> str:
    """A command as the report shows it: ``python`` for the interpreter, names for the inline programs."""
    if cmd[1:3] == DMD_MODULE:
        return shlex.join(["dmd", *cmd[3:]])
    if cmd[1:2] == ["-c"]:
        names = {SAVE_BERT: "python -c <save a random BERT>", MACHINE_INFO: "python -c <machine info>"}
        return " ".join([names.get(cmd[2], "python -c <code>"), *map(shlex.quote, cmd[3:])])
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
    if "failed" in status:
        return "failed"
    if "timed out" in status:
        return "timed out"
    return "passed" if status else "skipped"


# ---- the stages ----------------------------------------------------------------------------------------------


@dataclass
class Check:
    """Settings of one check: CUDA for real, or the CPU with tiny sizes (``dry_run``)."""

    dry_run: bool
    device: str
    work: Path
    runner: Runner

    @property
    def py(self) -> str:
        return sys.executable


def stage_tests(c: Check, timeout_s: float) -> dict[str, Any]:
    xml = c.work / "test_gpu.xml"
    xml.unlink(missing_ok=True)  # a reused --work-dir holds an earlier run's
    cmd = [c.py, "-m", "pytest", "tests/test_gpu.py", "-v", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-o", "junit_family=xunit1"]  # fmt: skip
    step = c.runner.run("pytest", cmd, timeout_s)
    # The JUnit XML is written at the end; of a run stopped half-way, the verbose log tells what finished.
    tests = _junit(xml) if xml.is_file() else pytest_outcomes(Path(step["log"]).read_text(errors="replace"))
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"status": step["status"], "steps": [step], "tests": tests, "counts": counts}


def pytest_outcomes(log: str) -> list[dict[str, Any]]:
    """Outcomes from ``pytest -v`` lines (``tests/x.py::name PASSED [ 10%]``); the test running when the run was
    stopped, whose line has no outcome yet, is "timed out"."""
    cases = []
    for line in log.splitlines():
        if not line.startswith("tests/") or "::" not in line:
            continue
        words = line.split("::", 1)[1].split()
        name = words[0]
        outcome = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped"}.get(
            words[1] if len(words) > 1 else "", "timed out")  # fmt: skip
        cases.append({"name": name, "outcome": outcome, "seconds": 0.0, "properties": {}, "message": ""})
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
        cases.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                      "properties": props, "message": message})  # fmt: skip
    return cases


def _number(text: str | None) -> Any:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return text


def stage_bench(c: Check, timeout_s: float) -> dict[str, Any]:
    size = (["--bert-layers", "1", "--bert-hidden", "32", "--batch-size", "2", "--window-batches", "2",
             "--windows", "1", "--eval-batches", "1", "--threads", "1"] if c.dry_run
            else ["--bert-layers", str(BERT_BASE["num_hidden_layers"]), "--bert-hidden",
                  str(BERT_BASE["hidden_size"])])  # fmt: skip
    rows = [r for r in BENCH_ROWS if not (c.dry_run and r.compile)]
    deadline = time.monotonic() + timeout_s
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        weights = [COMPILE_WEIGHT if r.compile else 1.0 for r in rows[i:]]
        left = deadline - time.monotonic()
        folder = _fresh(c.work / "bench" / row.label)
        step = c.runner.run(
            f"bench-{row.label}",
            [c.py, *DMD_MODULE, "bench", "--device", c.device, *row.args(), *size, "--out", str(folder)],
            left * weights[0] / sum(weights),
        )
        found = sorted(folder.glob("raw/*.json"))  # dmd bench writes its record into raw/
        result = json.loads(found[-1].read_text()) if found else None
        out.append({"label": row.label, "dataset": row.dataset, "aligned": row.aligned, "precision": row.precision,
                    "compile": row.compile, "status": step["status"], "seconds": step["seconds"], "step": step,
                    "result": result, **_bench_numbers(result)})  # fmt: skip
    skipped = [r.label for r in BENCH_ROWS if c.dry_run and r.compile]
    return {
        "status": _combine([r["status"] for r in out]),
        "steps": [r["step"] for r in out],
        "rows": out,
        "not_run": {label: "dry run: Inductor's C++ build takes minutes on a CPU" for label in skipped},
    }


def _bench_numbers(result: dict[str, Any] | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {
        "name": result["setting"]["name"],
        "train_samples_per_s": result["train_samples_per_s"],
        "eval_samples_per_s": result["eval_samples_per_s"],
        "peak_device_gb": result["peak_device_gb"],
        "peak_rss_gb": result["peak_rss_gb"],
        "train_mfu": result["train_mfu"],
        "eval_mfu": result["eval_mfu"],
        "peak_flops_source": result.get("peak_flops_source"),
        "gflop_per_train_sample": result["flops_per_train_sample"] / 1e9,
        "warmup_s": result["warmup_s"],
    }


def stage_full_run(c: Check, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    folder = _fresh(c.work / "full-run")
    data, bert, runs = folder / "mosi_aligned_50.pkl", folder / "bert", folder / "run"
    sizes = ["--sizes", "32", "16", "16"] if c.dry_run else []  # else the official split sizes
    steps = [c.runner.run("synth", [c.py, *DMD_MODULE, "synth", "--dataset", "mosi", "--aligned", *sizes,
                                    "--out", str(data)], deadline - time.monotonic())]  # fmt: skip
    bert_config = BERT_TINY if c.dry_run else BERT_BASE
    steps.append(c.runner.run("random-bert", [c.py, "-c", SAVE_BERT, json.dumps(bert_config), str(bert)],
                              deadline - time.monotonic()))  # fmt: skip
    max_epochs = 1 if c.dry_run else MAX_EPOCHS
    if all(s["status"] == "passed" for s in steps):
        steps.append(c.runner.run("train", [c.py, *DMD_MODULE, "train", "--data", str(data), "--bert", str(bert),
                                            "--dataset", "mosi", "--aligned", "--seeds", str(SEED), "--max-epochs",
                                            str(max_epochs), "--device", c.device, "--out", str(runs),
                                            "--no-progress"], deadline - time.monotonic()))  # fmt: skip
    seeds = [_seed_result(runs / f"seed_{SEED}", steps[-1])] if steps[-1]["name"] == "train" else []
    return {"status": _combine([s["status"] for s in steps]), "steps": steps, "seeds": seeds, "goal_s": GOAL_S,
            "max_epochs": max_epochs, "bert": bert_config, "data": "dmd synth --dataset mosi --aligned " +
            (" ".join(sizes) if sizes else "(official split sizes 1284/229/686)")}  # fmt: skip


def _seed_result(folder: Path, step: dict[str, Any]) -> dict[str, Any]:
    """What one seed's run folder says, even of a run stopped half-way (history.csv is written every epoch)."""
    history = []
    if (folder / "history.csv").is_file():
        with (folder / "history.csv").open() as f:
            history = list(csv.DictReader(f))
    metrics_file = folder / "test_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    epoch_s = [float(row["time_s"]) for row in history]
    wall = step["seconds"]
    return {
        "seed": SEED,
        "status": step["status"],
        "wall_s": wall,  # the whole `dmd train` process: start-up, data and BERT loading, epochs, test
        "epochs": len(history),
        "epochs_s": round(sum(epoch_s), 1),
        "mean_epoch_s": round(sum(epoch_s) / len(epoch_s), 2) if epoch_s else None,
        "stop_reason": metrics.get("stop_reason") if metrics else None,
        "best_epoch": metrics.get("best_epoch") if metrics else None,
        "test": {k: metrics[k] for k in ("MAE", "Corr", "Non0_acc_2", "Mult_acc_7") if k in metrics}
        if metrics
        else None,
        "meets_goal": bool(metrics) and wall <= GOAL_S,
    }


def stage_chapters(c: Check, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    names = [p.stem for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    no_device = [n for n in names if "device" not in _parameters(ROOT / "notebooks" / f"{n}.ipynb")]
    run = names[:1] if c.dry_run else names
    result: dict[str, Any] = {"chapters": run, "without_device_parameter": no_device, "chapter_seconds": {},
                              "problems": []}  # fmt: skip
    importlib.invalidate_caches()  # --install-wheels may just have installed them
    missing = [m for m in ("papermill", "ipykernel", "nbformat", "myst_nb") if importlib.util.find_spec(m) is None]
    if missing:
        result.update(status="failed", steps=[], problems=[f"not installed: {', '.join(missing)} (bring them as "
                      "wheels: make gpu-wheels here, --install-wheels .wheels there)"])  # fmt: skip
        return result
    # A copy of the book's sources, as tests/test_notebooks.py makes: the checkout's book/executed stays as is.
    repo, _ = _fresh(c.work / "book-repo"), _fresh(c.work / "book-work")
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    shutil.copytree(ROOT / "book", repo / "book",
                    ignore=shutil.ignore_patterns("executed", "screenshots", "__pycache__", "_build"))  # fmt: skip
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, repo / name)
    cmd = [c.py, str(repo / "book" / "build.py"), "--ci", "--no-build", "--work-dir", str(c.work / "book-work"),
           "-p", f"device={c.device}", "--only", *run]  # fmt: skip
    step = c.runner.run("chapters", cmd, deadline - time.monotonic(), cwd=repo)
    executed = repo / "book" / "executed"
    timings = executed / "timings.json"
    if timings.is_file():
        result["chapter_seconds"] = json.loads(timings.read_text())["seconds"]
    else:  # stopped: the chapters that finished are in the log
        for line in Path(step["log"]).read_text(errors="replace").splitlines():
            if " executed in " in line:
                name, _, rest = line.split(": ", 1)[-1].partition(" executed in ")
                result["chapter_seconds"][name] = float(rest.split()[0])
    build = _load_module(repo / "book" / "build.py")
    for name in result["chapter_seconds"]:
        result["problems"] += build.notebook_problems(executed / f"{name}.ipynb")
    status = step["status"]
    if status == "passed" and (result["problems"] or set(result["chapter_seconds"]) != set(run)):
        status = "failed"
    result.update(status=status, steps=[step])
    return result


def _parameters(notebook: Path) -> set[str]:
    """The names a notebook's ``parameters`` cell assigns (papermill's parameters)."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return set(re.findall(r"^(\w+)\s*=", "".join(cell["source"]), re.MULTILINE))
    return set()


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location("book_build_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


STAGE_FUNCTIONS = {"tests": stage_tests, "bench": stage_bench, "full-run": stage_full_run,
                   "chapters": stage_chapters}  # fmt: skip


# ---- setup and machine ---------------------------------------------------------------------------------------


def download_wheels(folder: Path) -> int:
    """Download here what :func:`install_wheels` installs there: binary wheels for each of ``WHEEL_PYTHONS``."""
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


def install_wheels(runner: Runner, wheels: Path) -> list[dict[str, Any]]:
    """The project (editable, no dependencies) and what a bare GPU machine lacks, from ``wheels``, offline."""
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels.resolve()),
           "--disable-pip-version-check"]  # fmt: skip
    steps = [runner.run("install-project", [*pip, "--no-deps", "-e", str(ROOT)], 300)]
    steps.append(runner.run("install-notebook-tools", [*pip, *WHEELS_WITH_DEPS], 300))
    steps.append(runner.run("install-myst-nb", [*pip, "--no-deps", *WHEELS_NO_DEPS], 120))
    return steps


def machine_info(runner: Runner) -> dict[str, Any]:
    step = runner.run("machine-info", [sys.executable, "-c", MACHINE_INFO], 120)
    info: dict[str, Any] = {}
    if step["status"] == "passed":
        info = json.loads(Path(step["log"]).read_text().strip().splitlines()[-1])
    else:
        info["error"] = step["tail"]
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, timeout=30)
        info["commit"] = commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


# ---- the report ----------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".1f") -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        value = int(value)
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def render(report: dict[str, Any]) -> str:
    m, stages = report["machine"], report["stages"]
    gpu = f"{m['gpu']} ({m.get('gpu_memory_gib')} GiB)" if m.get("gpu") else "none"
    title = "GPU check" + (" (DRY RUN on the CPU: tiny sizes, proves only that the script works)"
                           if report["dry_run"] else "")  # fmt: skip
    lines = [f"# {title}", "", f"`{report['command']}`, {report['started']}, {report['elapsed_s']:.0f} s of a "
             f"{report['budget_s']:.0f} s budget: **{'all stages passed' if report['ok'] else 'NOT all passed'}**.",
             "", "## Machine", "", "| GPU | driver | torch | CUDA | cuDNN | Python | transformers | CPUs | commit |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {gpu} | {_fmt(m.get('driver'))} "
             f"| {_fmt(m.get('torch'))} | {_fmt(m.get('cuda'))} | {_fmt(m.get('cudnn'))} | {_fmt(m.get('python'))} "
             f"| {_fmt(m.get('transformers'))} | {_fmt(m.get('cpus'))} | {_fmt(m.get('commit'))} |", "",
             "## Stages", "", "| stage | status | seconds | timeout s |", "|---|---|---|---|"]  # fmt: skip
    for name, s in stages.items():
        lines.append(f"| {name} | {s['status']} | {_fmt(s.get('seconds'))} | {_fmt(s.get('timeout_s'), '.0f')} |")
    for name, s in [("check", report), *stages.items()]:
        if s.get("error"):
            lines += ["", f"**{name}: error**", "", "```", s["error"].rstrip(), "```"]
    detailed = {name: s for name, s in stages.items() if "error" not in s}  # a stage that crashed shows its error
    if report.get("setup"):
        lines += ["", "Setup: " + ", ".join(f"{s['name']} {s['status']} ({s['seconds']} s)" for s in report["setup"])]
    if "tests" in detailed:
        t = stages["tests"]
        lines += [
            "",
            "## 1. GPU tests (`pytest tests/test_gpu.py`)",
            "",
            f"{t['counts']['passed']} passed, {t['counts']['failed']} failed, {t['counts']['error']} errors, "
            f"{t['counts']['skipped']} skipped.",
            "",
            "| test | outcome | s | measured |",
            "|---|---|---|---|",
        ]
        for case in t["tests"]:
            props = ", ".join(f"{k} {_fmt(v, '.3g')}" for k, v in case["properties"].items())
            note = props or case["message"].replace("|", "/").replace("\n", " ")[:200]
            lines.append(f"| {case['name']} | {case['outcome']} | {case['seconds']:.1f} | {note} |")
    if "bench" in detailed:
        b = stages["bench"]
        lines += ["", "## 2. `dmd bench` rows", "", "BERT: " + ("one layer of 32 (dry run)" if report["dry_run"] else
                  "`bert-base` size, random weights") + "; fp32 means TF32 matmuls (the trainer's default on CUDA). "
                  "MFU is against the GPU's datasheet peak in the same precision where the GPU is known (else a "
                  "timed matmul); each row's `peak_flops_source` in the JSON says which.", "",
                  "| row | status | train samples/s | eval samples/s | peak GPU GB | train MFU | GFLOP/sample "
                  "| warm-up s | s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in b["rows"]:
            mfu = "-" if r.get("train_mfu") is None else f"{100 * r['train_mfu']:.1f}%"
            lines.append(f"| {r['label']} | {r['status']} | {_fmt(r.get('train_samples_per_s'))} "
                         f"| {_fmt(r.get('eval_samples_per_s'))} | {_fmt(r.get('peak_device_gb'), '.2f')} "
                         f"| {mfu} | {_fmt(r.get('gflop_per_train_sample'), '.2f')} "
                         f"| {_fmt(r.get('warmup_s'))} | {_fmt(r['seconds'])} |")  # fmt: skip
        for label, why in b.get("not_run", {}).items():
            lines.append(f"| {label} | not run ({why}) | | | | | | | |")
    if "full-run" in detailed:
        f = stages["full-run"]
        lines += ["", "## 3. Full official MOSI-sized run", "", f"Data: `{f['data']}`; BERT: "
                  f"{f['bert']['num_hidden_layers']} layer(s) of width {f['bert']['hidden_size']} (random weights); the "
                  f"official recipe until early stopping, at most {f['max_epochs']} epoch(s). Goal: under "
                  f"{f['goal_s']:.0f} s per seed.", "",
                  "| seed | status | wall s | epochs | epochs s | s/epoch | stop | best epoch | test MAE | goal met |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for s in f["seeds"]:
            mae = (s["test"] or {}).get("MAE")
            lines.append(f"| {s['seed']} | {s['status']} | {_fmt(s['wall_s'])} | {s['epochs']} | {_fmt(s['epochs_s'])} "
                         f"| {_fmt(s['mean_epoch_s'], '.2f')} | {_fmt(s['stop_reason'])} | {_fmt(s['best_epoch'])} "
                         f"| {_fmt(mae, '.4f')} | {'yes' if s['meets_goal'] else 'no'} |")  # fmt: skip
    if "chapters" in detailed:
        ch = stages["chapters"]
        shown = ", ".join(f"{n} {_fmt(v)} s" for n, v in ch.get("chapter_seconds", {}).items()) or "none"
        lines += ["", "## 4. Chapters (papermill, CI parameters, `device=" + report["device"] + "`)", "",
                  ("Dry run: only the first chapter. " if report["dry_run"] else "") + f"Executed: {shown}.",
                  "Chapters without a `device` parameter: " + (", ".join(ch.get("without_device_parameter", []))
                                                                or "none") + "."]  # fmt: skip
        for problem in ch.get("problems", []):
            lines.append(f"- {problem}")
    lines += ["", "## Output of each step (tails)", ""]
    for name, s in stages.items():
        for step in s.get("steps", []):
            lines += [f"<details><summary>{name} / {step['name']}: {step['status']} ({_fmt(step.get('seconds'))} s)"
                      f"</summary>", "", f"`{step['command']}`", "", "```", step.get("tail", ""), "```", "",
                      "</details>", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path, runner: Runner) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (("gpu-check-dry-run-" if report["dry_run"] else "gpu-check-") + report["stamp"])
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    with open(f"{stem}.log", "w") as log:
        for step in runner.steps:
            text = Path(step["log"]).read_text(errors="replace") if Path(step["log"]).is_file() else ""
            log.write(f"===== {step['name']}: {step['command']}\n{text[-LOG_CHARS:]}\n")
    Path(f"{stem}.md").write_text(render(report))
    return Path(f"{stem}.md")


# ---- main ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run everything on the CPU with tiny sizes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes (default %(default)s)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="time for all stages (default %(default)s)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    parser.add_argument("--device", default=None, help="CUDA device (default cuda; cpu with --dry-run)")
    parser.add_argument(
        "--install-wheels",
        type=Path,
        default=None,
        metavar="DIR",
        help="first install the project and the notebook tools from the wheels in DIR, offline",
    )
    parser.add_argument(
        "--download-wheels",
        type=Path,
        default=None,
        metavar="DIR",
        help="only download, into DIR, the wheels that --install-wheels needs (make gpu-wheels)",
    )
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where data, runs and logs go (kept; default: a temporary folder, removed)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.download_wheels:
        return download_wheels(args.download_wheels)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        parser.error(f"--stages: expected some of {','.join(STAGES)}, found {args.stages!r}")
    stages = [s for s in STAGES if s in stages]
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
    report: dict[str, Any] = {"dry_run": args.dry_run, "device": device, "command": _shown([sys.executable, *sys.argv]),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stamp": time.strftime("%Y%m%d-%H%M%S"),
                              "budget_s": args.budget_s, "goal_s": GOAL_S, "stages": {}}  # fmt: skip
    start = time.monotonic()
    try:
        if args.install_wheels:
            report["setup"] = install_wheels(runner, args.install_wheels)
        report["machine"] = machine_info(runner)
        if device.startswith("cuda") and not report["machine"].get("cuda_available"):
            report["error"] = "no CUDA device here (PyTorch sees none): nothing was checked; --dry-run runs on the CPU"
            print(f"[gpu-check] {report['error']}", flush=True)
            return 2
        budget = Budget(args.budget_s, stages)
        check = Check(args.dry_run, device, work, runner)
        for name in stages:
            timeout = budget.stage_timeout(name)
            began = time.monotonic()
            try:
                result = STAGE_FUNCTIONS[name](check, timeout)
            except Exception:  # a bug of this script: report it, and go on with the next stage
                result = {"status": "failed", "steps": [], "error": traceback.format_exc()[-TAIL_CHARS:]}
            result.update(seconds=round(time.monotonic() - began, 1), timeout_s=round(timeout, 1))
            report["stages"][name] = result
            print(f"[gpu-check] stage {name}: {result['status']} in {result['seconds']} s", flush=True)
    finally:
        report["elapsed_s"] = time.monotonic() - start
        report["ok"] = bool(report["stages"]) and all(s["status"] == "passed" for s in report["stages"].values())
        report.setdefault("machine", {})
        path = write_report(report, args.out, runner)
        print(f"[gpu-check] report: {path} (and .json, .log)", flush=True)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, s in report["stages"].items() if s["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
