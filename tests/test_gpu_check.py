"""``benchmarks/gpu_check.py``: its dry run passes on the CPU end to end (SLOW, about a minute) after printing a plan
under 7 minutes; a check stopped by a signal in the middle of a stage, or a stage that times out, still writes its
report and exits non-zero; the optional stages give way to a short budget; the report renders whatever a stage
left behind."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
LIMIT_S = 420  # the plan's total must stay under 7 minutes: a lent GPU machine's command stops at 10
PLAN_LINE = re.compile(r"^\[gpu-check\]\s+(\S+)\s+(\d+) s\s+\(by\s+(\d+) s; (always|optional)", re.MULTILINE)


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _command(out: Path, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args]


def _report(out: Path) -> tuple[dict, str]:
    reports = sorted(out.glob("gpu-check-dry-run-*.json"))
    assert len(reports) == 1, f"expected one report in {out}, found {reports}"
    for suffix in (".md", ".log"):
        assert reports[0].with_suffix(suffix).is_file()
    return json.loads(reports[0].read_text()), reports[0].with_suffix(".md").read_text()


def _check(out: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict, str]:
    result = subprocess.run(_command(out, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert list(out.glob("*.json")), f"no report:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return (result, *_report(out))


@pytest.mark.slow
def test_the_dry_run_prints_a_plan_under_7_minutes_passes_every_stage_and_reports_them(tmp_path):
    # The default plan (what a GPU machine runs) stays under 7 minutes. The dry run itself gets six times that
    # budget: it proves that every stage passes and reports, not how fast a shared CI machine is.
    gpu_check = _load_script()
    assert gpu_check.make_plan(list(gpu_check.SELECTABLE)).total_s < LIMIT_S
    result, report, markdown = _check(tmp_path, "--budget", str(6 * LIMIT_S), timeout=6 * LIMIT_S + 60)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"

    # The plan, printed before any stage ran: every stage with its share, in the order they run, adding up.
    plan = PLAN_LINE.findall(result.stdout)
    names = [name for name, *_ in plan]
    assert names == ["install", "machine", "first-step", "tests", "bench", "chapters", "full-run", "compile"]
    total = int(re.search(r"planned total: (\d+) s", result.stdout).group(1))
    assert sum(int(share) for _, share, _, _ in plan) == pytest.approx(total, abs=len(plan))
    assert total == int(plan[-1][2]) == 6 * LIMIT_S
    assert [kind for *_, kind in plan][-2:] == ["optional", "optional"]  # the long run and torch.compile, last
    assert result.stdout.index("planned total") < result.stdout.index("stage machine: running")
    assert [p["name"] for p in report["plan"]] == names and report["budget_s"] == total

    stages = report["stages"]
    assert list(stages) == names
    assert stages["install"]["status"] == "skipped" and "--install-wheels" in stages["install"]["reason"]
    for name in names[1:]:
        stage = stages[name]
        assert stage["status"] == "passed", (name, [s.get("tail") for s in stage.get("steps", [])])
        assert stage["seconds"] > 0 and stage["timeout_s"] > 0 and stage["share_s"] > 0
    assert report["ok"] and report["exit_code"] == 0 and report["dry_run"] and report["device"] == "cpu"
    assert {"python", "torch", "cuda_available", "transformers", "papermill"} <= set(report["machine"])

    seed = stages["first-step"]["seed"]
    assert [s["name"] for s in stages["first-step"]["steps"]] == ["synth", "train"]
    assert "--device cpu" in stages["first-step"]["steps"][1]["command"] and seed["epochs"] == 1

    tests = stages["tests"]
    assert tests["counts"]["failed"] == tests["counts"]["error"] == 0 and tests["counts"]["passed"] >= 10
    by_name = {t["name"]: t for t in tests["tests"]}
    fixture = by_name["test_reference_fixtures_are_reproduced_in_exact_float32[mosi_aligned_bert]"]
    assert 0 <= fixture["properties"]["outputs_bound_used"] < 1
    assert by_name["test_a_training_epoch_never_waits_for_the_gpu_inside_its_mini_batch_loop"]["outcome"] == "skipped"
    assert not [name for name in by_name if "compile" in name]  # torch.compile has its own stage, last
    assert [t["name"] for t in stages["compile"]["tests"]] == ["test_compiled_training_matches_eager_training"]
    assert set(stages["compile"]["not_run"]) == {"mosi-aligned-bf16-compile"}

    (bench_step,) = stages["bench"]["steps"]  # the rows in one process: one cold start
    rows = {row["label"]: row for row in stages["bench"]["rows"]}
    assert set(rows) == {"mosi-aligned-fp32", "mosi-aligned-bf16", "mosei-unaligned-fp32"}
    for row in rows.values():
        assert row["status"] == "passed" and row["seconds"] <= bench_step["seconds"]
        assert row["train_samples_per_s"] > 0 and row["eval_samples_per_s"] > 0 and 0 < row["train_mfu"]
        assert row["peak_device_gb"] is None and row["result"]["setting"]["device"] == "cpu"

    full = stages["full-run"]
    (seed,) = full["seeds"]
    assert (seed["epochs"], seed["stop_reason"], seed["status"]) == (full["max_epochs"], "max_epochs", "passed")
    assert seed["mean_epoch_s"] > 0 and seed["test"]["MAE"] >= 0 and seed["last_pt_gb"] > 0 and full["goal_s"] == 120

    chapters = stages["chapters"]
    assert list(chapters["chapter_seconds"]) == ["01_data"] and chapters["problems"] == []
    assert chapters["without_device_parameter"] == []
    for heading in ("DRY RUN", "## First CUDA training step", "## GPU tests", "## `dmd bench` rows",
                    "## Chapters", "## Official MOSI-sized run", "## torch.compile",
                    "mosi-aligned-bf16-compile | not run"):  # fmt: skip
        assert heading in markdown


def _wait_for_running(process: subprocess.Popen, out: Path, stage: str, timeout_s: float = 120) -> dict:
    """The report as soon as it shows ``stage`` running its step (rewritten whenever a step starts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the check ended early:\n{process.stdout.read()}"
        found = sorted(out.glob("gpu-check-dry-run-*.json"))
        if found:
            try:
                report = json.loads(found[0].read_text())
            except json.JSONDecodeError:  # written whole by os.replace: cannot happen, but never wait forever
                report = {}
            steps = report.get("stages", {}).get(stage, {}).get("steps", [])
            if steps and steps[-1].get("status") == "running" and steps[-1].get("pid"):
                return report
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{stage} never showed as running")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_check_stopped_by_a_signal_in_the_middle_of_a_stage_writes_its_report_and_exits_non_zero(tmp_path, sig):
    process = subprocess.Popen(_command(tmp_path, "--stages", "first-step,bench", "--stall", "first-step=300"),
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        running = _wait_for_running(process, tmp_path, "first-step")
        process.send_signal(sig)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + sig, output[-3000:]
    report, markdown = _report(tmp_path)
    stage = report["stages"]["first-step"]
    assert report["interrupted"] == sig.name and report["exit_code"] == 128 + sig and not report["ok"]
    assert stage["status"] == "interrupted" and [s["status"] for s in stage["steps"]] == ["interrupted"]
    assert report["stages"]["machine"]["status"] == "passed" and report["stages"]["bench"]["status"] == "planned"
    assert f"STOPPED by {sig.name}" in markdown and "| first-step | interrupted |" in markdown
    with pytest.raises(ProcessLookupError):  # the stage's process was stopped with the check
        os.kill(running["stages"]["first-step"]["steps"][-1]["pid"], 0)


def test_a_stage_that_times_out_makes_the_exit_code_non_zero(tmp_path):
    result, report, markdown = _check(tmp_path, "--stages", "first-step", "--stall", "first-step=2", timeout=300)
    assert result.returncode == 1, result.stdout[-3000:]
    stage = report["stages"]["first-step"]
    assert stage["status"] == "timed out" and stage["timeout_s"] <= 2
    assert [s["status"] for s in stage["steps"]] == ["timed out"]
    assert not report["ok"] and report["exit_code"] == 1 and "| first-step | timed out |" in markdown


def test_the_optional_stages_give_way_to_a_short_budget_with_a_reason(tmp_path):
    result, report, _ = _check(tmp_path, "--stages", "full-run,compile", "--budget", "30", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    total = int(re.search(r"planned total: (\d+) s", result.stdout).group(1))
    shares = [int(share) for _, share, *_ in PLAN_LINE.findall(result.stdout)]
    assert total == 30 and abs(sum(shares) - total) <= len(shares) / 2  # each share rounded to a second
    for name in ("full-run", "compile"):
        assert report["stages"][name]["status"] == "skipped", report["stages"][name]
        assert "needs at least" in report["stages"][name]["reason"]
        assert not report["stages"][name].get("steps")


def test_the_plan_gives_each_stage_its_share_and_what_earlier_stages_leave():
    gpu_check = _load_script()
    plan = gpu_check.make_plan(["tests", "compile"])
    assert [s.name for s in plan.stages] == ["install", "machine", "tests", "compile"]
    assert plan.deadline("tests") == 60 + 15 + 65 and plan.deadline("compile") == plan.total_s == 60 + 15 + 65 + 65
    assert plan.skip_reason("compile", elapsed_s=plan.deadline("tests")) is None  # its whole share is left
    assert plan.skip_reason("compile", elapsed_s=plan.total_s - 39).startswith("only 39 s")
    assert plan.skip_reason("tests", elapsed_s=plan.total_s) is None  # a required stage never gives way
    assert gpu_check.make_plan(["tests"], budget_s=70).total_s == pytest.approx(70)


def test_the_report_renders_stages_that_failed_or_left_nothing_behind():
    gpu_check = _load_script()
    step = {"name": "x", "command": "dmd x", "status": "failed", "seconds": 1.0, "tail": "boom"}
    report = {
        "dry_run": False, "device": "cuda", "command": "python benchmarks/gpu_check.py", "started": "now",
        "elapsed_s": 3.0, "budget_s": 400.0, "ok": False, "exit_code": 1,
        "machine": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8},
        "stages": {
            "install": {"status": "skipped", "reason": "no --install-wheels: nothing to install"},
            "first-step": {"status": "failed", "steps": [step]},
            "tests": {"status": "timed out", "steps": [step], "tests": [], "counts": dict.fromkeys(
                ("passed", "failed", "error", "skipped"), 0)},
            "bench": {"status": "failed", "steps": [step], "rows": [{"label": "mosi-aligned-fp32", "status": "failed",
                                                                     "seconds": 1.0, "result": None}]},
            "chapters": {"status": "failed", "steps": [], "problems": ["not installed: papermill"],
                         "chapters": ["01_data"]},
            "full-run": {"status": "timed out", "steps": [step], "goal_s": 120.0, "max_epochs": 3, "data": "synth",
                         "bert": {"num_hidden_layers": 12, "hidden_size": 768}, "seeds": [
                             {"seed": 1111, "status": "timed out", "wall_s": 99.0, "epochs": 2, "epochs_s": 80.0,
                              "first_epoch_s": 50.0, "mean_epoch_s": 30.0, "other_s": 19.0, "epochs_in_goal": 3,
                              "last_pt_gb": 1.33, "stop_reason": None, "best_epoch": None, "test": None}]},
            "compile": {"status": "planned", "share_s": 65},
        },
    }  # fmt: skip
    markdown = gpu_check.render(report)
    assert "NVIDIA H200 (139.8 GiB)" in markdown and "| mosi-aligned-fp32 | failed | - |" in markdown
    assert "| 1111 | timed out | 99 | 2 | 50 | 30 | 19 | 3 | 1.33 | - |" in markdown
    assert "- not installed: papermill" in markdown and "boom" in markdown and "| compile | planned |" in markdown
    crashed = {**report, "error": "no CUDA device here", "stages": {"bench": {"status": "failed", "error": "KeyError"}}}
    markdown = gpu_check.render(crashed)
    assert "**check: error**" in markdown and "**bench: error**" in markdown and "| bench | failed |" in markdown


def test_a_stopped_pytest_run_still_tells_which_tests_finished():
    log = ("tests/test_gpu.py::test_a PASSED     [ 10%]\ntests/test_gpu.py::test_b[fp16] FAILED [ 20%]\n"
           "tests/test_gpu.py::test_c SKIPPED (needs CUDA itself) [ 30%]\ntests/test_gpu.py::test_d ")  # fmt: skip
    outcomes = [(t["name"], t["outcome"]) for t in _load_script().pytest_outcomes(log, "interrupted")]
    assert outcomes == [
        ("test_a", "passed"),
        ("test_b[fp16]", "failed"),
        ("test_c", "skipped"),
        ("test_d", "interrupted"),
    ]
