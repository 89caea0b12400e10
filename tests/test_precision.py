"""Mixed precision, checked on the CPU: autocast leaves labels and losses in float32, fp16 trains through a
gradient scaler that respects the recipe's clipping, and ``precision`` is read from every place it is set."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from dmd_core import precision as amp
from dmd_core.cli import build_parser
from dmd_core.config import TrainConfig
from dmd_core.losses import total_loss
from dmd_core.model import DMD
from dmd_core.runs import load_run
from dmd_core.trainer import Trainer, train

from .conftest import tiny_config, tiny_inputs
from .test_train import tiny_dataset

LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
# W_edge's bias shifts all six edge scores alike; the softmax over edges cancels it (tests/test_model.py).
SHIFT_INVARIANT = {"homo_gd.W_edge.bias", "hetero_gd.W_edge.bias"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_the_model_low_and_keeps_labels_and_every_loss_in_float32(precision):
    cfg = tiny_config()
    text, audio, vision, labels = tiny_inputs(cfg, batch=5)  # labels 1.6, 2.2, -0.4: not exact in bf16/fp16
    kept = labels.clone()
    torch.manual_seed(0)
    model = DMD(cfg).train()
    with amp.autocast(torch.device("cpu"), precision):
        out = model(text, audio, vision)
        parts = total_loss(model, out, labels)
    assert out.prediction.dtype == LOW[precision], "autocast was not active"
    assert {k: v.dtype for k, v in parts.detached().items()} == {k: torch.float32 for k in parts.detached()}
    assert labels.dtype == torch.float32 and torch.equal(labels, kept)
    # The task loss compares the (low-precision) predictions with the float32 labels, in float32.
    y = labels.reshape(-1, 1)
    expected = sum(F.l1_loss(p.float(), y) for p in out.predictions())
    assert parts.task.item() == pytest.approx(expected.item(), rel=1e-6)
    parts.total.backward()
    for name, p in model.named_parameters():
        if name not in SHIFT_INVARIANT:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_auto_precision_picks_bf16_fp16_or_fp32_by_device(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert amp.resolve_precision("auto", cpu) == "fp32"
    assert amp.resolve_precision("bf16", cpu) == "bf16"  # asked for explicitly: CPU autocast
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert amp.resolve_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert amp.resolve_precision("auto", gpu) == "fp16"  # a T4: bf16 only emulated
    with pytest.raises(ValueError, match="precision"):
        amp.resolve_precision("fp8", cpu)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="half")


def _clip_spy(trainer: Trainer) -> list[float]:
    """The largest |gradient| the optimizer sees at each step (after the scaler has unscaled it)."""
    seen = []
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.append(max(float(p.grad.abs().max()) for p in trainer.params if p.grad is not None))
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    return seen


def test_an_fp16_epoch_trains_through_the_gradient_scaler_and_clips_the_unscaled_sum(tmp_path):
    cfg = tiny_config()
    tc = TrainConfig(batch_size=4, accumulation=3, grad_clip=1e-3, lr=1e-2, precision="fp16")
    trainer = Trainer(cfg, tiny_dataset(cfg, sizes=(24, 8, 8)), tc, tmp_path, seed=1, device="cpu", progress=False,
                      distributed=False)  # fmt: skip
    assert trainer.scaler.is_enabled() and trainer.precision == "fp16" and trainer.scaler.get_scale() == 2.0**16
    # With 2**16 the first steps of this tiny model overflow in fp16 and are skipped, as they should be;
    # a smaller scale takes every step here.
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = _clip_spy(trainer)
    row = trainer.train_epoch()
    assert all(math.isfinite(v) for v in row.values()), row
    assert len(seen) == 2 and trainer.steps == 2  # 6 mini-batches, groups of 3
    # Clipped by value at 0.6 * scale on the scaled gradients = at 0.6 on the true ones; active here.
    assert all(m == pytest.approx(1e-3, rel=1e-5) for m in seen), seen
    assert trainer.scaler.get_scale() == 2.0**8  # no overflow: the scale stays
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2


def test_an_fp16_overflow_skips_the_step_even_though_clipping_would_hide_it(tmp_path):
    cfg = tiny_config()
    tc = TrainConfig(batch_size=4, accumulation=2, grad_clip=0.6, precision="fp16")
    trainer = Trainer(cfg, tiny_dataset(cfg, sizes=(8, 8, 8)), tc, tmp_path, seed=1, device="cpu", progress=False,
                      distributed=False)  # fmt: skip
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # no overflow of its own (see above)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    fired = []

    def overflow(grad):  # the first backward overflows in one layer, as fp16 can
        if not fired:
            fired.append(True)
            return torch.full_like(grad, math.inf)
        return grad

    trainer.model.final_head.out.weight.register_hook(overflow)
    trainer.train_epoch()
    assert fired
    assert trainer.scaler.get_scale() == 2.0**7, "the scaler did not see the overflow"
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items()), "a step was taken"


def test_an_fp16_run_resumes_with_its_scaler_state(tmp_path):
    cfg = tiny_config()
    ds = tiny_dataset(cfg, sizes=(16, 8, 8))
    tc = TrainConfig(batch_size=4, accumulation=2, max_epochs=2, precision="fp16")
    full = train(cfg, ds, tc, tmp_path / "full", seed=3, device="cpu", progress=False)
    train(cfg, ds, tc.replace(max_epochs=1), tmp_path / "part", seed=3, device="cpu", progress=False)
    resumed = train(cfg, ds, tc, tmp_path / "part", seed=3, device="cpu", resume=True, progress=False)
    assert resumed.test_metrics == full.test_metrics
    scales = [load_run(tmp_path / r).checkpoint("last")["scaler"]["scale"] for r in ("full", "part")]
    assert scales[0] == scales[1] < 2.0**16  # the early overflows lowered it, in both runs alike
    assert load_run(tmp_path / "part").meta["precision"] == "fp16"


def test_old_config_files_with_bf16_are_read_and_resumed(tmp_path):
    assert TrainConfig.from_dict({"bf16": True}).precision == "bf16"
    assert TrainConfig.from_dict({"bf16": False}).precision == "fp32"
    assert TrainConfig.from_dict({"precision": "auto"}).precision == "auto"
    assert "bf16" not in TrainConfig().to_dict() and TrainConfig().precision == "fp32"
    assert TrainConfig(bf16=True).precision == "bf16"  # the deprecated keyword, for code written before
    cfg = tiny_config()
    ds = tiny_dataset(cfg, sizes=(8, 8, 8))
    tc = TrainConfig(batch_size=4, accumulation=2, max_epochs=1)
    train(cfg, ds, tc, tmp_path / "run", seed=1, device="cpu", progress=False)
    config_file = tmp_path / "run" / "config.json"
    meta = json.loads(config_file.read_text())
    del meta["train"]["precision"]
    meta["train"]["bf16"] = False  # what runs folders written before `precision` hold
    config_file.write_text(json.dumps(meta))
    assert load_run(tmp_path / "run").train_config.precision == "fp32"
    resumed = train(cfg, ds, tc.replace(max_epochs=2), tmp_path / "run", seed=1, device="cpu", resume=True,
                    progress=False)  # fmt: skip
    assert resumed.epochs == 2


@pytest.mark.parametrize("command", ["train", "bench"])
def test_precision_is_a_cli_option_and_bf16_a_hidden_alias(command):
    parser = build_parser()
    base = ["train", "--data", "x.pkl"] if command == "train" else ["bench"]
    assert parser.parse_args(base).precision == "fp32"
    assert parser.parse_args([*base, "--precision", "auto"]).precision == "auto"
    assert parser.parse_args([*base, "--bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--precision", "fp8"])
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "--bf16" not in commands.choices[command].format_help()
