"""``benchmarks/bench_busy.py``: its command line, its measurement order, its summary and the busy.md it writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmarks_bench_busy", BENCHMARKS / "bench_busy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


busy = load_script()


def fake_reference(tmp_path: Path) -> Path:
    ref = tmp_path / "DMD"
    (ref / "config").mkdir(parents=True)
    (ref / "run.py").write_text("")
    (ref / "config" / "config.json").write_text("{}")
    return ref


def test_defaults_are_two_rounds_the_default_sizes_and_each_sides_own_threads():
    args = busy.parse_args(["--before", "HEAD~1"])
    assert (args.before, args.after, args.reference) == ("HEAD~1", None, None)
    assert args.rounds == 2 and tuple(args.sizes) == (160, 96, 160) and args.threads is None
    assert not args.busy_anywhere and args.results == busy.RESULTS


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--rounds", "0"], "--rounds 0: expected at least 1"),
     (["--sizes", "16", "0", "16"], "--sizes 16 0 16: every split needs at least one sample"),
     (["--threads", "0"], "--threads 0: expected at least 1"),
     (["--reference", "/nonexistent/DMD"], "--reference /nonexistent/DMD: not a checkout of mdswyz/DMD")],
)  # fmt: skip
def test_bad_arguments_are_named_with_what_was_expected(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        busy.parse_args(["--before", "HEAD~1", *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_before_is_required(capsys):
    with pytest.raises(SystemExit):
        busy.parse_args([])
    assert "--before" in capsys.readouterr().err


def test_a_reference_checkout_is_accepted(tmp_path):
    assert busy.parse_args(["--before", "HEAD", "--reference", str(fake_reference(tmp_path))]).reference is not None


def test_every_round_runs_each_side_idle_then_busy_in_the_same_alternation():
    order = busy.plan(2, reference=True)
    assert len(order) == 2 * 2 * 5
    assert order[:5] == [(0, "idle", "before", "file"), (0, "idle", "after", "file"), (0, "idle", "reference", "file"),
                         (0, "idle", "before", "bench"), (0, "idle", "after", "bench")]  # fmt: skip
    assert [o[1] for o in order] == ["idle"] * 5 + ["busy"] * 5 + ["idle"] * 5 + ["busy"] * 5
    assert all(code != "reference" for _, _, code, _ in busy.plan(1, reference=False))


def record(rnd, load, code, measure, train, evaluation, threads=None, others=0.5):
    return {"round": rnd, "load": load, "code": code, "measure": measure, "train_samples_per_s": train,
            "eval_samples_per_s": evaluation, "eval_threads": threads or {"2": 4}, "others_cores": others,
            "loadavg": [3.0, 2.0, 1.0]}  # fmt: skip


RECORDS = [
    record(0, "idle", "before", "file", 50, 150), record(0, "idle", "after", "file", 50, 160),
    record(0, "busy", "before", "file", 12, 40), record(0, "busy", "after", "file", 13, 120, {"1": 10, "2": 1}),
    record(1, "idle", "before", "file", 40, 100), record(1, "idle", "after", "file", 44, 100),
    record(1, "busy", "before", "file", 10, 20), record(1, "busy", "after", "file", 10, 80, {"1": 11}),
]  # fmt: skip


def test_summary_gives_medians_and_the_median_of_per_round_ratios():
    summary = busy.summarize(RECORDS)
    assert summary["medians"]["busy|after|file"] == {"train": 11.5, "eval": 100.0, "others": 0.5, "n": 2}
    ratios = {r["what"]: r for r in summary["ratios"]}
    assert ratios["after / before, busy"]["eval"] == pytest.approx((120 / 40 + 80 / 20) / 2)  # paired by round
    assert ratios["before, busy / idle"]["train"] == pytest.approx((12 / 50 + 10 / 40) / 2)
    assert "after / reference, busy" not in ratios  # no reference measured


def result(tmp_path: Path) -> dict:
    return {
        "command": "python benchmarks/bench_busy.py --before abc --rounds 2", "stamp": "20260101-000000",
        "machine": {"date": "2026-01-01 00:00", "cpu": "Some CPU", "cpus": 2, "python": "3.11", "torch": "2.x"},
        "rounds": 2, "threads": None, "busy_where": "pinned to one CPU", "before": "abc", "after": "def",
        "synth": ["synth", "--sizes", "160", "96", "160"], "total_s": 300.0, "load_start": [4.5, 4.0, 3.0],
        "load_end": [6.25, 5.0, 4.0], "records": RECORDS, "summary": busy.summarize(RECORDS),
    }  # fmt: skip


def test_results_start_busy_md_once_and_append_a_section_with_command_machine_and_load(tmp_path):
    raw, table = busy.write_results(result(tmp_path), tmp_path)
    busy.write_results(result(tmp_path) | {"stamp": "20260101-000001"}, tmp_path)
    text = table.read_text()
    assert text.startswith(busy.HEADER) and text.count("# Training and evaluation on a busy CPU") == 1
    assert text.count("## 2026-01-01 00:00: before abc, after def") == 2
    assert "Command: `python benchmarks/bench_busy.py --before abc --rounds 2`" in text
    assert "Load average (1 min) at the start 4.50, at the end 6.25" in text
    assert "Some CPU, 2 cores" in text
    assert (
        "| busy | after | 1 epoch on the file + its evaluation | 11.5 | 100.0 | 8.70 | 2: 1, 1: 21 | 0.50 | 3.00 |"
        in text
    )
    assert "| after / before, busy | 1 epoch on the file + its evaluation | 1.04 | 3.50 |" in text
    assert json.loads(raw.read_text())["records"] == RECORDS
    assert raw.parent == tmp_path / "raw"


def test_bench_record_reads_dmd_bench_json_with_or_without_eval_threads(tmp_path):
    (tmp_path / "raw").mkdir()
    base = {"train_samples_per_s": 12.5, "eval_samples_per_s": 140.0, "setting": {"threads": 2}}
    (tmp_path / "raw" / "r.json").write_text(json.dumps(base | {"eval_threads": {"1": 6}}))
    assert busy.bench_record(tmp_path) == {"train_samples_per_s": 12.5, "eval_samples_per_s": 140.0,
                                           "eval_threads": {"1": 6}, "threads": 2}  # fmt: skip
    (tmp_path / "raw" / "r.json").write_text(json.dumps(base))  # a commit before dmd_core.threads
    assert busy.bench_record(tmp_path)["eval_threads"] == {"2": busy.BENCH_EVAL_BATCHES}
