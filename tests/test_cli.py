"""``dmd train`` and ``dmd test``: options, run folders, resume, reference checkpoints, clear failures."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch

from dmd_core import evaluation as evaluate_module
from dmd_core.cli import train as train_cli
from dmd_core.data import load_mmsa
from dmd_core.data.synth import SynthSpec, write_mmsa
from dmd_core.model import DMD
from dmd_core.reference import config_from_json, load_state_dict
from dmd_core.runs import load_run, load_seeds

from .conftest import load_fixture
from .test_train import one_thread  # noqa: F401  (autouse fixture)

TINY = ["--set", "d=8", "--set", "heads=2", "--set", "nlevels=1", "--batch-size", "8", "--no-progress"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmd")
    train_cli.add_cli(p.add_subparsers(dest="command", required=True))
    return p


def dmd(*argv: str) -> int:
    args = parser().parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
    """A small MOSI-aligned synthetic file whose text features are 32-d (like the reference fixtures)."""
    path = tmp_path_factory.mktemp("data") / "mosi_small.pkl"
    write_mmsa(path, SynthSpec(dataset="mosi", aligned=True, sizes=(32, 16, 16), text_dim=32, seed=0))
    return path


def _subparser(name: str) -> argparse.ArgumentParser:
    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["train", "test"])
def test_every_option_has_help(command):
    sub = _subparser(command)
    for action in sub._actions:
        if action.option_strings == ["--bf16"]:  # the one deprecated alias, hidden on purpose (--precision bf16)
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"dmd {command}: {action.option_strings} has no help"
    text = sub.format_help()
    for option in ("--data", "--bert", "--device", "--dataset", "--aligned", "--unaligned"):
        assert option in text
    if command == "train":
        for option in ("--seeds", "--max-epochs", "--out", "--resume"):
            assert option in text


def test_dmd_train_writes_seed_runs_and_a_summary_that_dmd_test_reads(synth_file, tmp_path, capsys):
    out = tmp_path / "runs"
    assert dmd("train", "--data", synth_file, "--seeds", "1", "2", "--max-epochs", "2", "--out", out, *TINY) == 0
    printed = capsys.readouterr().out
    assert "mean (std) over 2 seed(s)" in printed and "Non0_acc_2" in printed
    seeds = load_seeds(out)
    assert sorted(seeds.runs) == [1, 2]
    run = seeds.runs[1]
    assert run.config.d == 8 and run.config.dataset == "mosi" and run.config.feature_dims == (32, 20, 5)
    assert run.train_config.max_epochs == 2 and run.data == str(synth_file.resolve())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and isinstance(summary["metrics"]["MAE"]["mean"], float)

    # dmd test on the folder: every seed, the data file recorded in the run, optional missing-modality table.
    report = tmp_path / "test.json"
    assert dmd("test", out, "--missing", "--json", report, "--split", "test") == 0
    results = json.loads(report.read_text())
    assert len(results) == 2
    first = results[str(out / "seed_1")]
    for name in ("MAE", "Corr", "Non0_acc_2", "Mult_acc_7"):
        assert first["metrics"][name] == run.test_metrics[name]
    assert [row["zeroed"] for row in first["missing_modality"]] == ["-", "L", "V", "A", "L+V", "L+A", "V+A"]


def test_dmd_train_resume_continues_and_a_used_folder_without_resume_is_refused(synth_file, tmp_path, caplog):
    out = tmp_path / "run"
    assert dmd("train", "--data", synth_file, "--seeds", "3", "--max-epochs", "1", "--out", out, *TINY) == 0
    with caplog.at_level(logging.ERROR):
        assert dmd("train", "--data", synth_file, "--seeds", "3", "--max-epochs", "2", "--out", out, *TINY) == 2
    assert "--resume" in caplog.text
    assert dmd("train", "--data", synth_file, "--seeds", "3", "--max-epochs", "2", "--out", out, "--resume",
               *TINY) == 0  # fmt: skip
    assert len(load_run(out / "seed_3").history) == 2


def test_dmd_test_scores_a_reference_checkpoint(synth_file, tmp_path):
    fixture = load_fixture("mosi_aligned_features")  # reference DMD, MOSI aligned, 32-d text, d=10
    ckpt = tmp_path / "dmd-mosi.pth"
    torch.save(fixture["state_dict"], ckpt)
    config = tmp_path / "config.json"
    args = {k: v for k, v in fixture["official_args"].items() if k not in ("dataset_name", "need_data_aligned")}
    config.write_text(json.dumps({
        "datasetCommonParams": {"mosi": {"aligned": {"featurePath": "MOSI/aligned_50.pkl"}}},
        "dmd": {"commonParams": {}, "datasetParams": {"mosi": args}},
    }))  # fmt: skip
    report = tmp_path / "ref.json"
    assert dmd("test", "--checkpoint", ckpt, "--reference-config", config, "--data", synth_file, "--json", report) == 0
    got = json.loads(report.read_text())[str(ckpt)]["metrics"]

    cfg = config_from_json(str(config), "mosi", True)
    model = DMD(cfg)
    load_state_dict(model, fixture["state_dict"])
    want = evaluate_module.evaluate(model, load_mmsa(synth_file, config=cfg)["test"])
    assert got == pytest.approx(want)


def test_unavailable_bert_fails_at_once_with_what_to_do(synth_file, tmp_path, monkeypatch, caplog, connections):
    # No network in CI either way; point the hub at a closed local port so this never depends on one.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with caplog.at_level(logging.ERROR):
        code = dmd("train", "--data", synth_file, "--bert", "bert-base-uncased", "--out", tmp_path / "r", *TINY)
    assert code == 2
    assert connections == [("127.0.0.1", 9)]  # one probe of the hub, no download retries
    assert "local folder" in caplog.text and "stored" in caplog.text and "text features" in caplog.text
    assert not (tmp_path / "r").exists()


def test_wrong_alignment_and_unknown_config_fields_are_clear_errors(synth_file, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert dmd("train", "--data", synth_file, "--unaligned", "--out", tmp_path / "a", *TINY) == 2
        assert "--unaligned given, but the file is aligned" in caplog.text
        assert dmd("train", "--data", synth_file, "--set", "depth=3", "--out", tmp_path / "b", *TINY) == 2
        assert "--set 'depth=3'" in caplog.text


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["synth", "--scale", "0", "--out", "{tmp}/x.pkl"], "scale"),
        (["train", "--data", "{tmp}/missing.pkl"], "missing.pkl"),
        (["test", "{tmp}"], "seed_"),
    ],
)
def test_every_command_reports_a_bad_argument_in_one_line_without_a_traceback(tmp_path, argv, expected):
    import subprocess
    import sys

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = subprocess.run([sys.executable, "-m", "dmd_core.cli", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and expected in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


def test_the_console_script_exits_with_the_commands_code_and_freezes_the_garbage_collector_only_then():
    import gc
    import subprocess
    import sys

    import dmd_core.cli

    assert gc.get_freeze_count() == 0  # in-process callers use main(), which freezes nothing
    # The console script's entry point, as pip writes it, and `python -m dmd_core.cli`: same exit codes as main().
    code = "import gc, sys; from dmd_core.cli import run; sys.argv[0] = 'dmd'; run()"
    for cmd in (
        [sys.executable, "-c", code, "synth", "--sizes", "x"],
        [sys.executable, "-m", "dmd_core.cli", "--help"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == (2 if "synth" in cmd else 0), done.stderr[-500:]
    original = dmd_core.cli.main
    try:
        dmd_core.cli.main = lambda argv=None: 3
        with pytest.raises(SystemExit) as done:
            dmd_core.cli.run([])
        assert done.value.code == 3 and gc.get_freeze_count() > 0
    finally:
        dmd_core.cli.main = original
        gc.unfreeze()
