"""``benchmarks/gpu_check.py``: its dry run passes on the CPU end to end (SLOW, about a minute), a stage that
overruns its time is stopped and reported, and the report renders whatever a stage left behind."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _check(out: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict, str]:
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    reports = sorted(out.glob("gpu-check-dry-run-*.json"))
    assert len(reports) == 1, f"no report:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    for suffix in (".md", ".log"):
        assert reports[0].with_suffix(suffix).is_file()
    return result, json.loads(reports[0].read_text()), reports[0].with_suffix(".md").read_text()


@pytest.mark.slow
def test_the_dry_run_passes_every_stage_and_reports_what_a_gpu_run_reports(tmp_path):
    result, report, markdown = _check(tmp_path)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    stages = report["stages"]
    assert list(stages) == ["tests", "bench", "full-run", "chapters"]
    for name, stage in stages.items():
        assert stage["status"] == "passed", (name, [s.get("tail") for s in stage.get("steps", [])])
        assert stage["seconds"] > 0 and stage["timeout_s"] > 0
    assert report["ok"] and report["dry_run"] and report["device"] == "cpu"
    assert {"python", "torch", "cuda_available", "transformers", "papermill"} <= set(report["machine"])

    tests = stages["tests"]
    assert tests["counts"]["failed"] == tests["counts"]["error"] == 0 and tests["counts"]["passed"] >= 10
    by_name = {t["name"]: t for t in tests["tests"]}
    fixture = by_name["test_reference_fixtures_are_reproduced_in_exact_float32[mosi_aligned_bert]"]
    assert 0 <= fixture["properties"]["outputs_bound_used"] < 1
    assert by_name["test_a_training_epoch_never_waits_for_the_gpu_inside_its_mini_batch_loop"]["outcome"] == "skipped"

    rows = {row["label"]: row for row in stages["bench"]["rows"]}
    assert set(rows) == {"mosi-aligned-fp32", "mosi-aligned-bf16", "mosei-unaligned-fp32"}
    assert set(stages["bench"]["not_run"]) == {"mosi-aligned-bf16-compile", "mosi-aligned-fp32-compile"}
    for row in rows.values():
        assert row["train_samples_per_s"] > 0 and row["eval_samples_per_s"] > 0 and 0 < row["train_mfu"]
        assert row["peak_device_gb"] is None and row["result"]["setting"]["device"] == "cpu"

    (seed,) = stages["full-run"]["seeds"]
    assert (seed["epochs"], seed["stop_reason"], seed["status"]) == (1, "max_epochs", "passed")
    assert seed["wall_s"] > 0 and seed["test"]["MAE"] >= 0 and stages["full-run"]["goal_s"] == 120

    chapters = stages["chapters"]
    assert list(chapters["chapter_seconds"]) == ["01_data"] and chapters["problems"] == []
    assert chapters["without_device_parameter"] == []
    for heading in ("DRY RUN", "## 1. GPU tests", "## 2. `dmd bench` rows", "## 3. Full official MOSI-sized run",
                    "## 4. Chapters", "mosi-aligned-bf16-compile | not run"):  # fmt: skip
        assert heading in markdown


def test_a_stage_over_its_time_is_stopped_and_reported_without_failing_the_check(tmp_path):
    result, report, markdown = _check(tmp_path, "--stages", "full-run", "--budget-s", "2", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    stage = report["stages"]["full-run"]
    assert stage["status"] == "timed out" and stage["timeout_s"] <= 2
    assert [s["name"] for s in stage["steps"]][0] == "synth" and stage["seeds"] == []
    assert not report["ok"] and "| full-run | timed out |" in markdown


def test_the_report_renders_stages_that_failed_or_left_nothing_behind():
    gpu_check = _load_script()
    step = {"name": "x", "command": "dmd x", "status": "failed", "seconds": 1.0, "tail": "boom"}
    report = {
        "dry_run": False, "device": "cuda", "command": "python benchmarks/gpu_check.py", "started": "now",
        "elapsed_s": 3.0, "budget_s": 450.0, "ok": False, "machine": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8},
        "stages": {
            "tests": {"status": "timed out", "steps": [step], "tests": [], "counts": dict.fromkeys(
                ("passed", "failed", "error", "skipped"), 0)},
            "bench": {"status": "failed", "steps": [step], "rows": [{"label": "mosi-aligned-fp32", "status": "failed",
                                                                     "seconds": 1.0, "result": None}]},
            "full-run": {"status": "timed out", "steps": [step], "goal_s": 120.0, "max_epochs": 60, "data": "synth",
                         "bert": {"num_hidden_layers": 12, "hidden_size": 768}, "seeds": [
                             {"seed": 1111, "status": "timed out", "wall_s": 99.0, "epochs": 3, "epochs_s": 80.0,
                              "mean_epoch_s": 26.7, "stop_reason": None, "best_epoch": None, "test": None,
                              "meets_goal": False}]},
            "chapters": {"status": "failed", "steps": [], "problems": ["not installed: papermill"]},
        },
    }  # fmt: skip
    markdown = gpu_check.render(report)
    assert "NVIDIA H200 (139.8 GiB)" in markdown and "| mosi-aligned-fp32 | failed | - |" in markdown
    assert "| 1111 | timed out | 99 | 3 | 80 | 26.70 | - | - | - | no |" in markdown
    assert "- not installed: papermill" in markdown and "boom" in markdown
    crashed = {**report, "error": "no CUDA device here", "stages": {"bench": {"status": "failed", "error": "KeyError"}}}
    markdown = gpu_check.render(crashed)
    assert "**check: error**" in markdown and "**bench: error**" in markdown and "| bench | failed |" in markdown


def test_a_stopped_pytest_run_still_tells_which_tests_finished():
    log = ("tests/test_gpu.py::test_a PASSED     [ 10%]\ntests/test_gpu.py::test_b[fp16] FAILED [ 20%]\n"
           "tests/test_gpu.py::test_c SKIPPED (needs CUDA itself) [ 30%]\ntests/test_gpu.py::test_d ")  # fmt: skip
    outcomes = [(t["name"], t["outcome"]) for t in _load_script().pytest_outcomes(log)]
    assert outcomes == [
        ("test_a", "passed"),
        ("test_b[fp16]", "failed"),
        ("test_c", "skipped"),
        ("test_d", "timed out"),
    ]
