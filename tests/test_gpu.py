"""The CUDA path, end to end: the first stage of ``benchmarks/gpu_check.py`` on a GPU machine.

* the three reference fixtures reproduced in exact float32 (TF32 off for cuBLAS and cuDNN, the flags
  restored afterwards), within the CPU tests' bounds;
* bf16 and fp16 autocast forwards against float32 on the same weights, within a stated relative bound;
* fit, resume and predict; ``compile=True``; BERT fine-tuning; a mixed-precision training epoch;
* a training epoch whose mini-batch loop never waits for the GPU (``torch.cuda.set_sync_debug_mode("error")``).

Where it runs: ``DMD_TEST_DEVICE`` when set, else CUDA when present; without either every test is skipped
(CI has no GPU). ``DMD_TEST_DEVICE=cpu`` runs the same tests on the CPU, minus those that need CUDA itself
(sync debug mode, data placed on the GPU), so that ``gpu_check.py --dry-run`` keeps this file working while no
GPU is at hand; there ``torch.compile`` gets the ``eager`` backend (Dynamo's tracing only: Inductor's C++ build
of the model takes minutes on two cores). Measured errors are recorded as test properties: ``gpu_check.py``
reads them from the JUnit XML into its report.
"""

from __future__ import annotations

import os
import traceback
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import dmd_core
from dmd_core import predict, train
from dmd_core import reference as R
from dmd_core.bench import random_split
from dmd_core.config import BertSpec, TrainConfig, preset
from dmd_core.data import MMSADataset
from dmd_core.devices import configure_cuda
from dmd_core.trainer import Trainer

from .conftest import tiny_config

DEVICE = os.environ.get("DMD_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
ON_CUDA = DEVICE.startswith("cuda")

pytestmark = pytest.mark.skipif(not DEVICE, reason="needs a CUDA GPU (or DMD_TEST_DEVICE=cpu)")
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="needs CUDA itself")

# The CPU tests' bounds (tests/test_reference.py): exact float32 on the GPU must meet them too. TF32 (10-bit
# mantissa) does not: about 3e-4 relative error on a 1024-long dot product, where float32 makes 3e-7.
ATOL, RTOL = 1e-5, 1e-4
# Autocast against float32 on the same weights: relative L2 error of each output (prediction, branch logits,
# GD edges) over a batch of the official MOSI model. Measured on CPU: bf16 about 1e-2, fp16 about 1e-3.
AUTOCAST_BOUND = {"bf16": 5e-2, "fp16": 1e-2}
AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("bf16", "fp16")  # the trainer's mixed precisions
SMALL_BERT = dict(vocab_size=1100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)  # fmt: skip
NO_DROPOUT = dict(text_dropout=0.0, attn_dropout=0.0, attn_dropout_a=0.0, attn_dropout_v=0.0, embed_dropout=0.0,
                  relu_dropout=0.0, res_dropout=0.0, output_dropout=0.0)  # fmt: skip


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """On the CPU, one thread: tiny models gain nothing from more, and oversubscribed cores cost a lot."""
    before = torch.get_num_threads()
    if not ON_CUDA:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tf32_flags() -> dict[str, object]:
    """TF32 as PyTorch reports it: the matmul precision and cuDNN's flag (``devices.configure_cuda`` sets both)."""
    return {
        "matmul precision": torch.get_float32_matmul_precision(),
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def _set_tf32_flags(flags: dict[str, object]) -> None:
    torch.set_float32_matmul_precision(flags["matmul precision"])
    torch.backends.cudnn.allow_tf32 = flags["cudnn.allow_tf32"]


@contextmanager
def exact_fp32():
    """float32 matmuls and convolutions without TF32 (the trainer's switch, off); the previous settings are restored
    on exit through the same calls, so that every reader of them answers afterwards."""
    saved = _tf32_flags()
    configure_cuda(False)
    try:
        yield
    finally:
        _set_tf32_flags(saved)


def _dataset(cfg, n: int = 48, eval_n: int = 16) -> MMSADataset:
    """Random samples of the shapes ``cfg`` expects (token ids with BERT), as a dataset the trainer places."""
    sizes = {"train": n, "valid": eval_n, "test": eval_n}
    splits = {name: random_split(cfg, size, name, i) for i, (name, size) in enumerate(sizes.items())}
    return MMSADataset(Path("<random>"), splits, cfg.aligned, cfg.seq_lens, cfg.feature_dims,
                       "bert" if cfg.use_bert else "features", dataset_name=cfg.dataset)  # fmt: skip


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _bound_used(ours: dict, expected: dict) -> tuple[float, float]:
    """How much of the bound ``|a - b| <= ATOL + RTOL |b|`` the worst element uses (1: all of it), and the worst
    absolute difference."""
    diffs = {k: (ours[k].double() - v.double()).abs() for k, v in expected.items()}
    used = max(float((d / (ATOL + RTOL * expected[k].double().abs())).max()) for k, d in diffs.items())
    return used, max(float(d.max()) for d in diffs.values())


# ---- exact float32 -----------------------------------------------------------------------------------------


def test_exact_fp32_turns_tf32_off_and_restores_the_flags(record_property):
    before = _tf32_flags()
    with exact_fp32():
        assert _tf32_flags() == {"matmul precision": "highest", "cudnn.allow_tf32": False}
        if ON_CUDA:
            g = torch.Generator(device=DEVICE).manual_seed(0)
            a, b = (torch.randn(1024, 1024, device=DEVICE, generator=g) for _ in range(2))
            exact = a.double() @ b.double()
            err = _rel(a @ b, exact)
            record_property("fp32_matmul_rel_err", err)
            assert err < 1e-5, f"float32 matmul off by {err:.1e}: TF32 still on?"
    assert _tf32_flags() == before
    if ON_CUDA and torch.cuda.get_device_capability(DEVICE) >= (8, 0):  # TF32 exists: show that it would show
        configure_cuda(True)
        try:
            err = _rel(a @ b, exact)
        finally:
            _set_tf32_flags(before)
        record_property("tf32_matmul_rel_err", err)
        assert err > RTOL, f"TF32 matmul off by only {err:.1e}: the fixtures' bound would not tell it from float32"


def test_reference_fixtures_are_reproduced_in_exact_float32(fixture, record_property):
    cfg = R.config_from_args(fixture["official_args"], fixture["setting"]["seq_lens_LVA"], fixture["bert_config"])
    model = dmd_core.DMD(cfg)
    R.load_state_dict(model, fixture["state_dict"], fixture["homo_state_dict"], fixture["hetero_state_dict"])
    inp = {k: v.to(DEVICE) for k, v in fixture["inputs"].items()}
    with exact_fp32():
        ours = R.probe(model.to(DEVICE), inp["text"], inp["audio"], inp["vision"], inp["labels"])
    ours = {k: {n: t.cpu() for n, t in v.items()} if isinstance(v, dict) else v.cpu() for k, v in ours.items()}
    for group in ("outputs", "gd"):  # every tensor our probe reports (test_reference.py checks the names)
        expected = {name: fixture[group][name] for name in ours[group]}
        used, worst = _bound_used(ours[group], expected)
        record_property(f"{group}_bound_used", used)
        record_property(f"{group}_max_abs_err", worst)
        for name, value in expected.items():
            torch.testing.assert_close(ours[group][name], value, atol=ATOL, rtol=RTOL,
                                       msg=lambda m, name=name: f"{name}: {m}")  # fmt: skip
    for name in ("margin_loss", "ort_loss_batch_axis"):
        torch.testing.assert_close(ours[name], fixture[name], atol=ATOL, rtol=RTOL)


# ---- mixed precision ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_forward_stays_within_the_stated_bound_of_float32(precision, record_property):
    cfg = preset("mosi", True)  # the official MOSI model
    torch.manual_seed(0)
    model = dmd_core.DMD(cfg).to(DEVICE).eval()
    batch = next(random_split(cfg, 16, "test", 0).batches(16, device=DEVICE))
    with torch.no_grad():
        with exact_fp32():
            ref = model(batch.text, batch.audio, batch.vision)
        with torch.autocast(torch.device(DEVICE).type, dtype=AUTOCAST_DTYPE[precision]):
            out = model(batch.text, batch.audio, batch.vision)
    pairs = {
        "prediction": (out.prediction, ref.prediction),
        "homo_logits": (out.homo.logits, ref.homo.logits),
        "hetero_logits": (out.hetero.logits, ref.hetero.logits),
        "homo_edges": (out.homo_graph.edges, ref.homo_graph.edges),
        "hetero_edges": (out.hetero_graph.edges, ref.hetero_graph.edges),
    }
    bound = AUTOCAST_BOUND[precision]
    errors = {name: _rel(ours, theirs) for name, (ours, theirs) in pairs.items()}
    for name, err in errors.items():
        record_property(f"{name}_rel_err", err)
    assert all(torch.isfinite(ours).all() for ours, _ in pairs.values()), f"{precision}: non-finite outputs"
    assert max(errors.values()) <= bound, f"{precision} vs float32 (bound {bound}): {errors}"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_mixed_precision_training_epoch_gives_finite_losses(tmp_path, precision):
    cfg = tiny_config()
    trainer = Trainer(cfg, _dataset(cfg), TrainConfig(batch_size=8, precision=precision), tmp_path, seed=1,
                      device=DEVICE, progress=False, distributed=False)  # fmt: skip
    row = trainer.train_epoch()
    assert all(torch.isfinite(torch.tensor(v)) for v in row.values()), row


# ---- the trainer on the device -----------------------------------------------------------------------------


@cuda_only
def test_small_datasets_move_to_the_gpu_once(tmp_path):
    cfg = tiny_config()
    trainer = Trainer(cfg, _dataset(cfg), TrainConfig(batch_size=8), tmp_path, seed=1, device=DEVICE,
                      progress=False, distributed=False)  # fmt: skip
    assert trainer.dataset["train"].audio.is_cuda and trainer.dataset["test"].text.is_cuda


def test_fit_resume_and_predict_on_the_device(tmp_path):
    cfg = tiny_config()
    ds = _dataset(cfg)
    tc = TrainConfig(batch_size=8, accumulation=2, lr=1e-3, max_epochs=3, seeds=(3,), tf32=False)
    full = train(cfg, ds, tc, tmp_path / "full", seed=3, device=DEVICE, progress=False)
    train(cfg, ds, tc.replace(max_epochs=2), tmp_path / "part", seed=3, device=DEVICE, progress=False)
    resumed = train(cfg, ds, tc, tmp_path / "part", seed=3, device=DEVICE, resume=True, progress=False)
    assert (resumed.epochs, resumed.best_epoch, resumed.stop_reason) == (full.epochs, full.best_epoch, "max_epochs")
    assert [row["valid_loss"] for row in resumed.history] == pytest.approx(
        [row["valid_loss"] for row in full.history], rel=1e-4)  # fmt: skip
    assert resumed.test_metrics["MAE"] == pytest.approx(full.test_metrics["MAE"], rel=1e-4)
    run = dmd_core.load_run(tmp_path / "part")
    model = dmd_core.load_model(run, "best", device=DEVICE)
    assert next(model.parameters()).device.type == torch.device(DEVICE).type
    pred = predict(model, ds["test"], DEVICE, batch_size=tc.batch_size)  # as the run's test: the same batches
    assert pred.ids == run.test_predictions["id"].tolist()
    assert pred.prediction.tolist() == pytest.approx(run.test_predictions["prediction"].tolist(), rel=1e-4, abs=1e-5)


def test_bert_is_fine_tuned(tmp_path):
    cfg = tiny_config(feature_dims=(SMALL_BERT["hidden_size"], 6, 4), bert=BertSpec(name_or_path=None,
                      config=SMALL_BERT))  # fmt: skip
    trainer = Trainer(cfg, _dataset(cfg, n=32), TrainConfig(batch_size=8, accumulation=1, lr=1e-3), tmp_path,
                      seed=1, device=DEVICE, progress=False, distributed=False)  # fmt: skip
    bert = dict(trainer.model.text_encoder.named_parameters())
    before = {name: p.detach().clone() for name, p in bert.items()}
    row = trainer.train_epoch()
    assert all(torch.isfinite(torch.tensor(v)) for v in row.values()), row
    unchanged = [name for name, p in bert.items() if torch.equal(p.detach(), before[name])]
    assert all("pooler" in name for name in unchanged), f"BERT weights not trained: {unchanged}"
    assert len(unchanged) < len(bert)


# ---- no host synchronisation in the training loop ----------------------------------------------------------


@cuda_only
def test_a_training_epoch_never_waits_for_the_gpu_inside_its_mini_batch_loop(tmp_path):
    """The loop (forward, losses, backward, clipping, Adam) runs with ``set_sync_debug_mode("error")``.

    The epoch's one intended synchronisation, reading its summed losses at the end, may come after the
    last optimizer step: the test counts the steps taken before the first synchronising call.
    """
    cfg = tiny_config()
    n, batch_size, accumulation = 64, 8, 2
    trainer = Trainer(cfg, _dataset(cfg, n=n), TrainConfig(batch_size=batch_size, accumulation=accumulation),
                      tmp_path, seed=1, device=DEVICE, progress=False, distributed=False)  # fmt: skip
    assert trainer.dataset["train"].audio.is_cuda  # the data lives on the GPU: no copy needs to wait
    trainer.train_epoch()  # warm-up: library handles, allocator, lazy initialisation
    steps: list[int] = []
    step = trainer.optimizer.step

    def counted_step(*args, **kwargs):
        result = step(*args, **kwargs)
        steps.append(1)
        return result

    trainer.optimizer.step = counted_step
    torch.cuda.synchronize()
    where = "nowhere (the epoch ended without one)"
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_epoch()
    except RuntimeError as err:
        if "synchronizing" not in str(err):
            raise
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "dmd_core" in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in reversed(frames[-3:]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
        trainer.optimizer.step = step
    expected = n // batch_size // accumulation
    assert len(steps) == expected, f"synchronised after {len(steps)} of {expected} optimizer steps, at {where}"


# ---- torch.compile, last: it takes longest, and a run stopped at its limit keeps the rest ------------------


def test_compiled_training_matches_eager_training(tmp_path, monkeypatch, record_property):
    cfg = tiny_config(**NO_DROPOUT)  # no dropout: both runs compute the same function
    ds = _dataset(cfg, n=32)  # whole mini-batches only: one compiled graph
    tc = TrainConfig(batch_size=8, accumulation=2, lr=1e-3, max_epochs=2, seeds=(5,), tf32=False)
    eager = train(cfg, ds, tc, tmp_path / "eager", seed=5, device=DEVICE, progress=False)
    original, calls = torch.compile, []

    def spy(model, **options):
        calls.append(options)
        return original(model, **(options if ON_CUDA else {**options, "backend": "eager"}))

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    counters.clear()
    compiled = train(cfg, ds, tc.replace(compile=True), tmp_path / "compiled", seed=5, device=DEVICE,
                     progress=False)  # fmt: skip
    record_property("graph_breaks", sum(counters["graph_break"].values()))
    assert calls, "compile=True did not call torch.compile"
    for key in ("train_total", "valid_loss"):
        assert [row[key] for row in compiled.history] == pytest.approx([row[key] for row in eager.history],
                                                                       rel=1e-3), key  # fmt: skip
