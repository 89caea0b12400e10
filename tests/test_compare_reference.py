"""``benchmarks/compare_reference.py``: ratios, alternation, the reference's run-time adjustments, and a quick run.

The quick run needs a checkout of the reference implementation (mdswyz/DMD) beside the
repository (``../shared/reference/mdswyz-DMD``) and ``easydict``; it is skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
REFERENCE = ROOT.parent / "shared" / "reference" / "mdswyz-DMD"  # where CI keeps a checkout, beside the clone


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


compare = load("compare_reference")
runner = load("reference_runner")


def test_settings_keep_the_given_order_and_reject_unknown_or_repeated_names():
    assert [s.name for s in compare.parse_settings("bert, aligned")] == ["bert", "aligned"]
    assert [s.name for s in compare.parse_settings("aligned,unaligned,bert")] == ["aligned", "unaligned", "bert"]
    for bad in ("aligned,mosei", "aligned,aligned", "", ","):
        with pytest.raises(ValueError):
            compare.parse_settings(bad)
    unaligned = compare.SETTINGS["unaligned"]
    assert not unaligned.aligned and not unaligned.bert and unaligned.train_samples == 64
    assert compare.SETTINGS["aligned"].train_samples == 640 and compare.SETTINGS["bert"].bert


def test_alternation_runs_reference_then_ours_in_every_repeat():
    assert compare.alternation(3) == [(0, "reference"), (0, "ours"), (1, "reference"), (1, "ours"),
                                      (2, "reference"), (2, "ours")]  # fmt: skip
    assert compare.alternation(0) == []


def test_ratios_say_how_many_times_better_ours_is_per_repeat_with_median_and_range():
    # samples/s: higher is better, ratio ours / reference
    speed = compare.summarize([10.0, 20.0, 10.0], [40.0, 50.0, 20.0], higher_is_better=True)
    assert speed["ratios"] == [4.0, 2.5, 2.0]
    assert (speed["ratio_median"], speed["ratio_min"], speed["ratio_max"]) == (2.5, 2.0, 4.0)
    assert (speed["reference_median"], speed["ours_median"]) == (10.0, 40.0)
    # seconds and megabytes: lower is better, ratio reference / ours
    wall = compare.summarize([30.0, 36.0], [10.0, 18.0], higher_is_better=False)
    assert wall["ratios"] == [3.0, 2.0] and wall["ratio_median"] == 2.5
    assert compare.ratio(100.0, 50.0, higher_is_better=False) == 2.0 == compare.ratio(50.0, 100.0, True)
    with pytest.raises(ValueError):
        compare.summarize([1.0, 2.0], [1.0], higher_is_better=True)
    with pytest.raises(ValueError):
        compare.summarize([], [], higher_is_better=True)


def test_markdown_has_one_row_per_metric_with_the_median_ratio_and_range():
    metrics = {
        key: compare.summarize([10.0, 12.0], [20.0, 30.0], higher) for key, (_, higher) in compare.METRICS.items()
    }
    rows = compare.markdown_rows(compare.SETTINGS["aligned"], 640, metrics)
    assert len(rows) == len(compare.METRICS) == 3
    assert rows[0] == "| aligned | 640 | train-loop samples/s | 11.00 | 25.00 | 2.25x | 2.00-2.50x |"
    assert all(row.startswith("| aligned | 640 |") and row.count("|") == 8 for row in rows)


def test_cosine_embedding_loss_on_3d_inputs_takes_the_cosine_over_dim_1_as_pytorch_1_9():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(7, 4, 5, generator=g), torch.randn(7, 4, 5, generator=g)  # (T, B, d)
    target = torch.tensor([-1])
    got = runner.cosine_embedding_loss_torch19(x1, x2, target, margin=0.1)
    cos = torch.stack([F.cosine_similarity(x1[t, :, j], x2[t, :, j], dim=0) for t in range(7) for j in range(5)])
    torch.testing.assert_close(got, (cos - 0.1).clamp_min(0).mean())
    # 2-D inputs: the same as today's PyTorch
    a, b = x1[0], x2[0]
    for y in (torch.tensor([-1]), torch.tensor([1, -1, 1, 1])):
        torch.testing.assert_close(runner.cosine_embedding_loss_torch19(a, b, y), F.cosine_embedding_loss(a, b, y))


class ListLoader:
    """What EpochClock uses of a DataLoader: iteration, len, dataset."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches, self.dataset = batches, [i for b in batches for i in b]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@pytest.mark.parametrize("dataset,dims", [("mosi", (768, 20, 5)), ("mosei", (768, 35, 74))])
def test_the_setting_file_has_the_chosen_datasets_shapes(tmp_path, dataset, dims):
    import dmd_core

    path = tmp_path / f"{dataset}.pkl"
    args = compare.write_synth(compare.SETTINGS["unaligned"], dataset, 4, 2, path, compare.child_env(1))
    assert args[:3] == ["synth", "--dataset", dataset] and "--unaligned" in args
    ds = dmd_core.load_mmsa(path, text="features")
    assert ds.dataset_name == dataset and not ds.aligned and tuple(ds.feature_dims) == dims
    assert ds.suggest_config().heads == (6 if dataset == "mosei" else 10)


def test_epoch_clock_times_each_pass_and_ends_the_reference_loop_after_the_limit():
    loader = ListLoader([[0, 1], [2, 3], [4, 5]])
    args = SimpleNamespace(early_stop=10)
    clock = runner.EpochClock(loader, limit=2, args=args)
    assert len(clock) == 3 and len(clock.dataset) == 6
    assert list(clock) == [[0, 1], [2, 3], [4, 5]] and args.early_stop == 10  # one pass: go on
    assert list(clock) == loader.batches and args.early_stop == 0  # second pass: stop after this epoch
    assert len(clock.seconds) == 2 and all(s >= 0 for s in clock.seconds)


@pytest.mark.slow
def test_quick_run_against_the_reference_writes_ratios_and_a_markdown_row(tmp_path):
    if not (REFERENCE / "run.py").is_file():
        pytest.skip("no reference checkout at ../shared/reference/mdswyz-DMD")
    if importlib.util.find_spec("easydict") is None:
        pytest.skip("the reference needs easydict (pip install -e '.[bench]')")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "compare_reference.py"), "--reference", str(REFERENCE), "--quick",
         "--settings", "aligned", "--threads", "1", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (json_path,) = tmp_path.glob("raw/reference-*.json")  # the raw record apart from the summary
    result = json.loads(json_path.read_text())
    setting = result["settings"]["aligned"]
    assert setting["train_samples"] == 32 and result["repeats"] == 1
    assert [(r["repeat"], r["side"]) for r in setting["runs"]] == [(0, "reference"), (0, "ours")]
    for key in ("train_samples_per_s", "wall_s", "peak_rss_mb"):
        metric = setting["metrics"][key]
        assert metric["ratio_min"] <= metric["ratio_median"] <= metric["ratio_max"] and metric["ratio_median"] > 0
        assert metric["reference_median"] > 0 and metric["ours_median"] > 0
    assert all(run["train_loop"]["n_train"] == 32 and run["train_loop"]["threads"] == 1 for run in setting["runs"])
    assert {"cpu", "python", "torch", "transformers"} <= result["machine"].keys() and result["ours"]["commit"]
    assert result["reference"]["files_sha256"] and "--quick" in result["command"]
    table = (tmp_path / "reference.md").read_text()
    assert "| aligned | 32 | train-loop samples/s |" in table and "| aligned | 32 | whole-process wall s |" in table
