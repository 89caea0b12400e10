"""``dmd bench``: what it measures, what it writes, and that MFU counts model FLOPs, not kernel FLOPs."""

from __future__ import annotations

import json

import pytest
import torch

from dmd_core import bench, kernels
from dmd_core.cli import main
from dmd_core.config import preset
from dmd_core.model import DMD

from .conftest import tiny_config, tiny_inputs

TINY = dict(batch_size=2, window_batches=1, windows=2, eval_batches=1, threads=1)


@pytest.fixture(scope="module", autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()  # a benchmark sets the thread count it is asked for
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result():
    return bench.run_benchmark(bench.BenchSetting(**TINY))


def test_a_run_measures_throughput_memory_and_mfu(result):
    assert result["setting"]["name"] == "mosi-aligned-features-b2-cpu"
    assert result["train_samples_per_s"] > 0 and result["eval_samples_per_s"] > 0
    assert len(result["train_window_s"]) == 2  # the median of the windows is reported
    assert result["peak_rss_gb"] > 0.1 and result["peak_device_gb"] is None
    # Official MOSI model: a training sample costs about 3x an evaluation sample (forward + backward).
    assert 2.0 < result["flops_per_train_sample"] / result["flops_per_eval_sample"] < 4.0
    assert 0 < result["train_mfu"] < 1 and result["peak_matmul_flops"] > 1e9
    assert {"cpu", "torch", "commit", "date", "cpu_attention"} <= result["machine"].keys()
    assert result["machine"]["cpu_attention"] in ("compiled", "pytorch tiling")


def test_record_writes_json_and_appends_one_row_per_run(result, tmp_path):
    first = bench.record(result, tmp_path)
    bench.record(result, tmp_path)
    assert json.loads(first.read_text())["train_samples_per_s"] == result["train_samples_per_s"]
    table = (tmp_path / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| 20")]
    assert table[0].startswith("# Benchmark results") and len(rows) == 2
    assert "mosi-aligned-features-b2-cpu" in rows[0] and f"{result['train_samples_per_s']:.1f}" in rows[0]


def test_model_flops_count_dense_attention_whatever_kernel_runs():
    cfg = tiny_config(seq_lens=(12, 12, 12), kernel_sizes=(1, 1, 1))
    model = DMD(cfg)
    text, audio, vision, labels = tiny_inputs(cfg)
    batch = type("B", (), dict(text=text, audio=audio, vision=vision, labels=labels.reshape(-1)))
    before = kernels.BACKEND
    counted = bench.count_flops(model, batch, bf16=False, train=True)
    assert kernels.BACKEND == before  # restored
    from torch.utils.flop_counter import FlopCounterMode

    from dmd_core.losses import total_loss

    with kernels.use("torch"), FlopCounterMode(display=False) as dense:
        model.eval()
        total_loss(model, model(text, audio, vision), labels).total.backward()
    assert counted == dense.get_total_flops() > 0


def test_the_cli_writes_to_the_given_folder(tmp_path, capsys):
    args = ["bench", "--batch-size", "2", "--window-batches", "1", "--windows", "1", "--eval-batches", "1",
            "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert "samples/s" in capsys.readouterr().out
    assert len(list(tmp_path.glob("mosi-aligned-features-b2-cpu-*.json"))) == 1
    assert (tmp_path / "results.md").exists()


def test_settings_name_and_configure_the_model():
    s = bench.BenchSetting(dataset="mosei", aligned=False, bert_layers=2, bert_hidden=128, batch_size=8)
    assert s.name == "mosei-unaligned-bert2x128-b8-cpu"
    cfg = s.model_config()
    assert cfg.bert.config["num_hidden_layers"] == 2 and cfg.feature_dims[0] == 128
    assert cfg.seq_lens == preset("mosei", False).seq_lens
    assert torch.get_num_threads() >= 1
