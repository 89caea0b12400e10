"""``dmd bench``: what it measures, what it writes, and that MFU counts model FLOPs, not kernel FLOPs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

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
    assert 0 < result["train_mfu"] < 1 and result["peak_flops"] > 1e9
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
    counted = bench.count_flops(model, batch, precision="fp32", train=True)
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
    assert len(list(tmp_path.glob("raw/mosi-aligned-features-b2-cpu-*.json"))) == 1  # raw records apart
    assert (tmp_path / "results.md").exists()


def test_settings_name_and_configure_the_model():
    s = bench.BenchSetting(dataset="mosei", aligned=False, bert_layers=2, bert_hidden=128, batch_size=8)
    assert s.name == "mosei-unaligned-bert2x128-b8-cpu"
    cfg = s.model_config()
    assert cfg.bert.config["num_hidden_layers"] == 2 and cfg.feature_dims[0] == 128
    assert cfg.seq_lens == preset("mosei", False).seq_lens
    assert torch.get_num_threads() >= 1


def test_the_result_says_where_the_mfu_peak_comes_from(result):
    assert result["peak_flops_source"] == "timed" and result["peak_flops"] > 1e9  # a CPU has no datasheet entry
    assert result["train_mfu"] == pytest.approx(result["flops_per_train_sample"] * result["train_samples_per_s"]
                                                / result["peak_flops"])  # fmt: skip


@pytest.mark.parametrize(
    "gpu,dtype,tflops",
    [("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "tf32", 378.0), ("NVIDIA H200", "fp16", 989.4),
     ("NVIDIA A100-SXM4-40GB", "tf32", 156.0), ("NVIDIA A100-PCIE-80GB", "fp32", 19.5), ("NVIDIA A10G", "bf16", 70.0), ("NVIDIA A10G", "tf32", 35.0),
     ("NVIDIA L4", "bf16", 121.0), ("Tesla T4", "fp16", 65.0), ("Tesla T4", "tf32", 8.1),
     ("Tesla V100-SXM2-16GB", "fp16", 125.0), ("Tesla V100-PCIE-32GB", "fp32", 14.0)],
)  # fmt: skip
def test_datasheet_peaks_are_dense_and_looked_up_by_gpu_name(gpu, dtype, tflops):
    assert bench.datasheet_peak_flops(gpu, dtype) == pytest.approx(tflops * 1e12)


def test_unknown_gpus_and_missing_dtypes_have_no_datasheet_peak():
    assert bench.datasheet_peak_flops("Tesla T4", "bf16") is None  # no bf16 units: emulated, no datasheet rate
    assert bench.datasheet_peak_flops("NVIDIA GeForce RTX 4090", "bf16") is None
    assert bench.datasheet_peak_flops("NVIDIA L40S", "bf16") is None  # not the L4
    assert bench.datasheet_peak_flops("NVIDIA A100 80GB PCIe", "bf16") == pytest.approx(312e12)  # not the A10G


def test_the_mfu_peak_is_timed_only_for_gpus_without_a_datasheet_entry(monkeypatch):
    timed = []
    monkeypatch.setattr(bench, "peak_matmul_flops", lambda device, dtype: timed.append(dtype) or 1e12)
    gpu = torch.device("cuda", 0)
    assert bench.peak_flops(gpu, "NVIDIA H200", "bf16", tf32=True) == (pytest.approx(989.4e12), "datasheet", "bf16")
    assert bench.peak_flops(gpu, "NVIDIA H200", "fp32", tf32=True) == (pytest.approx(494.7e12), "datasheet", "tf32")
    assert bench.peak_flops(gpu, "NVIDIA H200", "fp32", tf32=False)[2] == "fp32"
    assert timed == []
    assert bench.peak_flops(gpu, "Some New GPU", "fp16", tf32=True) == (1e12, "timed", "fp16")
    assert timed == [torch.float16]


def test_the_timed_peak_shrinks_its_matmul_only_where_the_dtype_is_too_slow_for_the_budget():
    assert bench.fitting_size(1e12, 0.5) == 2048  # a GPU, or float32 on any CPU: the full 2048-square matmul
    assert bench.fitting_size(2e10, 1.0) == 2048  # 2 * 2048**3 FLOPs take 0.86 s at 20 GFLOP/s
    assert bench.fitting_size(2e10, 0.5) == 1024
    assert bench.fitting_size(1e8, 0.1) == 256 and bench.fitting_size(1.0, 1.0) == 256  # never below 256


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_timed_peak_of_the_cpu_is_a_positive_rate_in_each_precision(dtype):
    # bfloat16 on a CPU without bfloat16 instructions is emulated: a 2048-square matmul would take minutes there
    # (the GPU check's dry run timed out on it); the measured rate picks a size that fits the budget.
    rate = bench.peak_matmul_flops(torch.device("cpu"), dtype, repeats=1, budget_s=2.0)
    assert math.isfinite(rate) and rate > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_bench_on_cuda_without_a_gpu_says_so_before_measuring():
    with pytest.raises(RuntimeError, match="'cuda' asked for, but CUDA is not available here"):
        bench.run_benchmark(bench.BenchSetting(device="cuda", **TINY))


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARK_SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARK_SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_script_starts(script):
    """Each script imports what it needs from the package as laid out now (``--help`` runs its imports)."""
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr[-2000:]


def test_the_attention_benchmark_times_one_map_and_appends_a_row(tmp_path):
    from dmd_core.kernels import native

    if native.library() is None:
        pytest.skip("the compiled kernel does not build here: the benchmark has nothing to compare")
    results = tmp_path / "attention.md"
    script = BENCHMARKS / "bench_attention.py"
    done = subprocess.run([sys.executable, str(script), "--threads", "1", "--repeats", "1", "--maps", "MOSEI",
                           "--results", str(results)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MOSEI aligned 46x46 (dropout 0.4): train sdpa" in done.stdout
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 1 and "| MOSEI aligned 46x46 | 0.4 | 1 |" in rows[0]
