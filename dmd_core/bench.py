"""Speed and memory of DMD training and evaluation: ``dmd bench`` (also ``python benchmarks/run.py``).

For a named setting (dataset, aligned or not, stored text features or a BERT of a given
size, batch size, device, threads) this measures, on random inputs of the real shapes:

* training throughput: samples/s of the trainer's own epoch loop (:meth:`Trainer.train_epoch`:
  forward, all losses, backward, clipping, an Adam step every 10 mini-batches), the median
  over several windows after a warm-up window;
* evaluation throughput: samples/s of :func:`dmd_core.evaluation.predict` (eval mode, inference mode;
  on CPU on the threads it fits to the cores other processes leave free, :mod:`dmd_core.threads`:
  ``eval_threads`` in the result counts the last window's mini-batches per thread count);
* peak host memory (the process's maximum resident set size) and peak device memory;
* model FLOPs utilisation: FLOPs of one training (forward + backward) and one evaluation
  sample counted with ``torch.utils.flop_counter.FlopCounterMode``, times the throughput,
  divided by the device's peak in the run's precision: the data sheet's dense peak for the
  GPUs of :data:`DATASHEET_TFLOPS` (T4, L4, A10G, A100, H100, H200, V100; TF32 for float32
  runs with TF32 on), else the rate of a large matrix multiplication timed here (CPUs,
  other GPUs). ``peak_flops_source`` in the result says which.

Every measurement is appended as a row to ``benchmarks/results/results.md`` with the machine, library
versions and git commit; its whole record goes to ``benchmarks/results/raw/<setting>-<time>.json``.
Values vary with the machine's load: compare settings measured in one run.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import threads
from .config import BertSpec, DMDConfig, TrainConfig, preset
from .data import MMSADataset, Split
from .losses import total_loss

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@dataclass(frozen=True)
class BenchSetting:
    """What to measure. ``bert_layers=0`` means stored text features (768-d)."""

    dataset: str = "mosi"
    aligned: bool = True
    bert_layers: int = 0
    bert_hidden: int = 768
    batch_size: int = 16
    device: str = "cpu"
    threads: int | None = None
    window_batches: int = 20
    windows: int = 3
    eval_batches: int = 10
    precision: str = "fp32"  # TrainConfig.precision: fp32, bf16, fp16 or auto
    compile: bool = False

    @property
    def name(self) -> str:
        text = f"bert{self.bert_layers}x{self.bert_hidden}" if self.bert_layers else "features"
        extra = (f"-{self.precision}" if self.precision != "fp32" else "") + ("-compile" if self.compile else "")
        return f"{self.dataset}-{'aligned' if self.aligned else 'unaligned'}-{text}-b{self.batch_size}-{self.device}{extra}"

    def model_config(self) -> DMDConfig:
        bert = None
        if self.bert_layers:
            heads = max(1, self.bert_hidden // 64)
            bert = BertSpec(name_or_path=None, config=dict(
                vocab_size=30522, hidden_size=self.bert_hidden, num_hidden_layers=self.bert_layers,
                num_attention_heads=heads, intermediate_size=4 * self.bert_hidden, max_position_embeddings=512,
            ))  # fmt: skip
        return preset(self.dataset, self.aligned, bert=bert)


def random_split(cfg: DMDConfig, n: int, name: str, seed: int = 0) -> Split:
    """``n`` random samples with the shapes ``cfg`` expects (token ids when it uses BERT)."""
    g = torch.Generator().manual_seed(seed)
    (lt, lv, la), (dt, dv, da) = cfg.seq_lens, cfg.feature_dims
    if cfg.bert is not None:
        vocab = int((cfg.bert.config or {}).get("vocab_size", 30522))
        ids = torch.randint(1000, vocab, (n, lt), generator=g)
        text = torch.stack([ids, torch.ones_like(ids), torch.zeros_like(ids)], 1)
    else:
        text = torch.randn(n, lt, dt, generator=g)
    labels = torch.randint(-6, 7, (n,), generator=g).float() / 2
    return Split(
        name=name, text=text, audio=torch.randn(n, la, da, generator=g), vision=torch.randn(n, lv, dv, generator=g),
        labels=labels, audio_lengths=None, vision_lengths=None, ids=[f"s{i}" for i in range(n)],
        raw_text=[""] * n,
    )  # fmt: skip


def random_dataset(cfg: DMDConfig, n_train: int, n_eval: int) -> MMSADataset:
    """Train, valid and test splits of :func:`random_split` (seeds 1, 2, 3) as a dataset for the trainer."""
    splits = {"train": random_split(cfg, n_train, "train", 1), "valid": random_split(cfg, n_eval, "valid", 2),
              "test": random_split(cfg, n_eval, "test", 3)}  # fmt: skip
    return MMSADataset(Path("<random>"), splits, cfg.aligned, cfg.seq_lens, cfg.feature_dims,
                       "bert" if cfg.use_bert else "features", dataset_name=cfg.dataset)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Dense peaks (no sparsity) in TFLOP/s from NVIDIA's data sheets, per precision of the matmul inputs: ``tf32`` is
# float32 with TF32 on (T4 and V100 have no TF32 units: their float32 rate), no ``bf16`` where the GPU has no bf16
# units (T4, V100: emulated). Most specific name first; matched as whole words in torch.cuda.get_device_name().
# (NVIDIA publishes no A10G sheet: the A10G's figures are those cloud providers publish.)
DATASHEET_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (r"H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM
    (r"H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (r"H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5}),
    (r"H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM
    (r"A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),  # SXM and PCIe alike
    (r"A10G", {"fp32": 35.0, "tf32": 35.0, "bf16": 70.0, "fp16": 70.0}),
    (r"L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    (r"T4", {"fp32": 8.1, "tf32": 8.1, "fp16": 65.0}),
    (r"V100S", {"fp32": 16.4, "tf32": 16.4, "fp16": 130.0}),
    (r"V100\b.*PCIE", {"fp32": 14.0, "tf32": 14.0, "fp16": 112.0}),
    (r"V100", {"fp32": 15.7, "tf32": 15.7, "fp16": 125.0}),  # SXM2
)
PEAK_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def datasheet_peak_flops(gpu_name: str, dtype: str) -> float | None:
    """The data sheet's dense peak FLOP/s of ``gpu_name`` for ``dtype`` (fp32, tf32, bf16, fp16), or None."""
    for pattern, peaks in DATASHEET_TFLOPS:
        if re.search(rf"\b{pattern}\b", gpu_name, flags=re.IGNORECASE):
            return None if peaks.get(dtype) is None else peaks[dtype] * 1e12
    return None


def peak_flops(device: torch.device, gpu_name: str | None, precision: str, tf32: bool) -> tuple[float, str, str]:
    """The MFU denominator: ``(FLOP/s, "datasheet" or "timed", dtype)`` for a run in ``precision`` (resolved).

    ``dtype`` is the matmuls' (``tf32`` for float32 with TF32 on); the data sheet where
    :data:`DATASHEET_TFLOPS` knows the GPU, else :func:`peak_matmul_flops` timed on ``device``.
    """
    dtype = "tf32" if precision == "fp32" and tf32 and device.type == "cuda" else precision
    if device.type == "cuda" and gpu_name:
        peak = datasheet_peak_flops(gpu_name, dtype)
        if peak is not None:
            return peak, "datasheet", dtype
    return peak_matmul_flops(device, PEAK_DTYPES[dtype]), "timed", dtype


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5,
                      budget_s: float = 10.0) -> float:  # fmt: skip
    """FLOP/s of a square matmul on ``device`` (best of ``repeats``): the MFU denominator where no data sheet is
    known. The matmul is ``size`` square, or smaller where ``dtype`` is so slow on ``device`` that timing it would
    take more than ``budget_s`` (bfloat16 on a CPU without bfloat16 instructions is emulated: a 2048-square
    matmul then takes minutes); a 256-square matmul measures the rate that decides (:func:`fitting_size`)."""
    rate = 2 * 256**3 / _matmul_seconds(device, dtype, 256, repeats=1)
    size = fitting_size(rate, budget_s / (repeats + 1), size)
    return 2 * size**3 / _matmul_seconds(device, dtype, size, repeats)


def fitting_size(flops_per_s: float, seconds: float, largest: int = 2048, smallest: int = 256) -> int:
    """The largest square size, ``largest`` halved as often as needed (not below ``smallest``), whose matmul
    (``2 n^3`` FLOPs) takes at most ``seconds`` at ``flops_per_s``."""
    size = largest
    while size > smallest and 2 * size**3 / flops_per_s > seconds:
        size //= 2
    return size


def _matmul_seconds(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """The fastest of ``repeats`` timed ``size``-square matmuls, after one untimed warm-up."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def count_flops(model, batch, precision: str | bool, train: bool) -> float:
    """Model FLOPs of one forward (+ backward when ``train``) on ``batch``, by PyTorch's flop counter.

    Counted with ``scaled_dot_product_attention`` everywhere, so attention is the dense map
    (the usual MFU convention), whatever kernel the run uses: the CPU's tiled attention skips
    masked blocks and recomputes probabilities in the backward, which would count differently.
    Dropout is off while counting (it has no FLOPs; with it, CPU attention would materialise
    every map and the count alone would set the run's peak memory).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from . import kernels
    from .precision import autocast

    device = batch.labels.device
    model.eval()
    with kernels.use("torch"), FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(train), autocast(device, precision):
            out = model(batch.text, batch.audio, batch.vision)
            loss = total_loss(model, out, batch.labels).total if train else out.prediction.sum()
        if train:
            loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_rss_bytes() -> int:
    """Maximum resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)


def run_benchmark(setting: BenchSetting) -> dict[str, Any]:
    """Measure ``setting``; returns the result record (also what :func:`record` writes)."""
    from .devices import use_cuda_device
    from .evaluation import predict
    from .precision import resolve_precision
    from .trainer import Trainer

    if setting.threads:
        torch.set_num_threads(setting.threads)
    # With its index ("cuda": the current GPU), before anything asks about cuda:N (fails while CUDA is not initialised).
    device = use_cuda_device(setting.device)
    precision = resolve_precision(setting.precision, device)
    cfg = setting.model_config()
    n_train = setting.batch_size * setting.window_batches
    n_eval = setting.batch_size * setting.eval_batches
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the trainer puts the whole dataset on the GPU
    dataset = random_dataset(cfg, n_train, n_eval)
    tcfg = TrainConfig(batch_size=setting.batch_size, precision=precision, compile=setting.compile)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, dataset, tcfg, tmp, seed=1111, device=device, progress=False, distributed=False)
        first = next(dataset["train"].batches(setting.batch_size, device=device))
        flops_train = count_flops(trainer.model, first, precision, train=True) / setting.batch_size
        flops_eval = count_flops(trainer.model, first, precision, train=False) / setting.batch_size

        def timed(fn) -> float:
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            return time.perf_counter() - start

        warmup = timed(trainer.train_epoch)
        train_times = [timed(trainer.train_epoch) for _ in range(setting.windows)]
        evaluate = lambda: predict(trainer.model, dataset["test"], device, batch_size=setting.batch_size,  # noqa: E731
                                   precision=precision)  # fmt: skip
        timed(evaluate)
        eval_times = [timed(evaluate) for _ in range(setting.windows)]
        eval_threads = threads.last_used()
    train_sps = n_train / statistics.median(train_times)
    eval_sps = n_eval / statistics.median(eval_times)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak, source, peak_dtype = peak_flops(device, gpu, precision, tcfg.tf32)
    return {
        "setting": asdict(setting) | {"name": setting.name, "threads": torch.get_num_threads()},
        "precision": precision,  # what the setting's precision meant on this device
        "train_samples_per_s": train_sps,
        "train_window_s": train_times,
        "warmup_s": warmup,
        "eval_samples_per_s": eval_sps,
        "eval_threads": eval_threads,  # {threads: mini-batches} in the last window (dmd_core.threads)
        "peak_rss_gb": peak_rss_bytes() / 1e9,
        "peak_device_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "flops_per_train_sample": flops_train,
        "flops_per_eval_sample": flops_eval,
        "peak_flops": peak,
        "peak_flops_source": source,  # "datasheet" (DATASHEET_TFLOPS) or "timed" (peak_matmul_flops)
        "peak_flops_dtype": peak_dtype,
        "train_mfu": flops_train * train_sps / peak,
        "eval_mfu": flops_eval * eval_sps / peak,
        "machine": machine_info(device),
    }


def machine_info(device: torch.device) -> dict[str, Any]:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_attention": _cpu_attention(),
    }  # fmt: skip


def _cpu_attention() -> str:
    """Which CPU attention runs: the compiled kernel, or the PyTorch tiling (no compiler, or turned off)."""
    from . import kernels
    from .kernels import native

    if kernels.BACKEND == "torch":
        return "pytorch sdpa"
    return "compiled" if kernels.BACKEND == "auto" and native.library() is not None else "pytorch tiling"


TABLE_HEADER = (
    "| date | commit | setting | threads | train samples/s | eval samples/s | peak RSS GB | peak GPU GB "
    "| GFLOP/train sample | train MFU | machine |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def append_rows(table: Path, header: str, rows: list[str]) -> None:
    """Append ``rows`` (markdown table lines) to ``table``, starting it with ``header`` if it is new."""
    table.parent.mkdir(parents=True, exist_ok=True)
    if not table.exists():
        table.write_text(header)
    with table.open("a") as f:
        f.writelines(row if row.endswith("\n") else row + "\n" for row in rows)


def record(result: dict[str, Any], folder: Path = RESULTS) -> Path:
    """Append a row to ``results.md`` in ``folder`` and write ``result`` as JSON into ``folder/raw/`` (returned)."""
    (folder / "raw").mkdir(parents=True, exist_ok=True)
    m, s = result["machine"], result["setting"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / "raw" / f"{s['name']}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    gpu = "" if result["peak_device_gb"] is None else f"{result['peak_device_gb']:.2f}"
    row = (f"| {m['date']} | {m['commit']} | {s['name']} | {s['threads']} | {result['train_samples_per_s']:.1f} "
           f"| {result['eval_samples_per_s']:.1f} | {result['peak_rss_gb']:.2f} | {gpu} "
           f"| {result['flops_per_train_sample'] / 1e9:.2f} | {100 * result['train_mfu']:.1f}% "
           f"| {m['gpu'] or m['cpu']}, torch {m['torch']} |")  # fmt: skip
    append_rows(folder / "results.md", "# Benchmark results (`dmd bench`)\n\n" + TABLE_HEADER, [row])
    return path
