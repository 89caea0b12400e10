"""TrainConfig.overlap: backward passes on a second CPU thread compute exactly what one thread does."""

from __future__ import annotations

import threading

import pytest
import torch

from dmd_core.cli import build_parser
from dmd_core.cli.train import _train_config_from_args
from dmd_core.config import BertSpec, TrainConfig
from dmd_core.devices import GradientSteps, Seam, resolve_overlap
from dmd_core.losses import total_loss
from dmd_core.model import DMD
from dmd_core.trainer import Trainer, train

from .conftest import tiny_bert_text, tiny_config, tiny_inputs
from .test_model import SMALL_BERT
from .test_train import history_without_time, same_weights, tiny_dataset

CPU = torch.device("cpu")


@pytest.fixture
def threads():
    """Restores the process's torch thread count after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_overlapped_training_equals_one_thread_bit_for_bit(tmp_path, threads):
    # 22 samples in mini-batches of 4 with groups of 3: two full groups and a leftover group per epoch.
    cfg = tiny_config()
    ds = tiny_dataset(cfg, sizes=(22, 8, 8))
    recipe = TrainConfig(batch_size=4, accumulation=3, max_epochs=2, seeds=(3,))
    torch.set_num_threads(1)
    one = train(cfg, ds, recipe.replace(overlap=False), tmp_path / "one", seed=3, progress=False)
    torch.set_num_threads(2)
    two = train(cfg, ds, recipe.replace(overlap=True), tmp_path / "two", seed=3, progress=False)
    assert torch.get_num_threads() == 2  # restored after every epoch
    assert same_weights(one.model.state_dict(), two.model.state_dict())
    # The training columns agree bit for bit; validation ran with two threads per operation in `two`.
    a, b = history_without_time(tmp_path / "one"), history_without_time(tmp_path / "two")
    train_columns = [c for c in a.columns if c.startswith("train_")]
    assert len(train_columns) > 10 and a[train_columns].equals(b[train_columns])


@pytest.mark.parametrize("overrides", [
    dict(),  # memory Transformers of 3 layers: the seam is above the first
    dict(nlevels=4, attn_mask=False),  # 4 layers (the official depth), no future mask
    dict(bert=BertSpec(name_or_path=None, config=SMALL_BERT)),  # BERT is below the seam
], ids=["nlevels1", "nlevels4-nomask", "bert"])  # fmt: skip
def test_the_seam_splits_one_backward_pass_in_two_without_changing_a_bit(overrides):
    cfg = tiny_config(**overrides)
    text, audio, vision, labels = tiny_inputs(cfg, batch=5)
    if cfg.use_bert:
        text = tiny_bert_text(cfg, 5)
    torch.manual_seed(0)
    model = DMD(cfg).train()
    named = dict(model.named_parameters())
    above = {n for n, p in named.items() if any(p is q for q in model.parameters_above_seam())}
    assert above and len(above) < len(named) / 2

    def forward_backward(seam):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        loss = total_loss(model, model(text, audio, vision, seam=seam), labels).total
        loss.backward()
        return loss.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in named.items()}

    loss_one, grads_one = forward_backward(None)
    seam = Seam()
    loss_two, grads_above = forward_backward(seam)
    # The loss's backward stops at the seam: exactly the parameters above it have gradients (the GD-Units'
    # edge biases may get none: the softmax over edges cancels them, see test_model).
    reached = {n for n, g in grads_above.items() if g is not None}
    assert reached <= above and above - reached <= {"hetero_gd.W_edge.bias"}
    seam.backward_below()
    assert torch.equal(loss_one, loss_two)
    for n, p in named.items():
        assert (p.grad is None) == (grads_one[n] is None), n
        assert p.grad is None or torch.equal(p.grad, grads_one[n]), f"{n} differs"
    seam.backward_below()  # the crossings were consumed: a second call does nothing
    assert all(p.grad is None or torch.equal(p.grad, grads_one[n]) for n, p in named.items())


def test_backward_runs_on_the_other_thread_while_the_next_forward_runs(tmp_path, threads):
    torch.set_num_threads(2)
    cfg = tiny_config()
    trainer = Trainer(cfg, tiny_dataset(cfg, sizes=(12, 4, 4)), TrainConfig(batch_size=4, overlap=True),
                      tmp_path / "run", seed=1, progress=False, distributed=False)  # fmt: skip
    seen: dict[str, set] = {"forward": set(), "backward": set(), "above": set()}
    trainer.model.register_forward_hook(lambda *a: seen["forward"].add(threading.get_ident()))
    first = trainer.params[0]  # the text projection: below the seam
    first.register_hook(lambda g: seen["backward"].add(threading.get_ident()))
    # The part above the seam (here the final head) runs its backward on the calling thread.
    above = trainer.model.final_head.proj1.weight
    assert any(above is p for p in trainer.gradients.above)
    above.register_hook(lambda g: seen["above"].add(threading.get_ident()))
    threads_inside: list[int] = []
    trainer.model.register_forward_hook(lambda *a: threads_inside.append(torch.get_num_threads()))
    trainer.train_epoch()
    assert seen["forward"] == {threading.get_ident()}
    assert len(seen["backward"]) == 1 and seen["backward"] != seen["forward"]
    assert seen["above"] == seen["forward"]
    assert set(threads_inside) == {1} and torch.get_num_threads() == 2


def test_an_error_in_a_queued_backward_reaches_the_trainer_and_the_thread_count_is_restored(threads):
    torch.set_num_threads(2)

    class Explodes(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("boom in backward")

    w = torch.nn.Parameter(torch.ones(3))
    steps = GradientSteps([w], torch.optim.Adam([w]), CPU, "fp32", clip=0.6, overlap=True)
    with pytest.raises(RuntimeError, match="boom in backward"):
        with steps.epoch():
            steps.zero_grad()
            steps.backward(Explodes.apply(w).sum())
            steps.clip()
            steps.step()
    assert torch.get_num_threads() == 2
    with steps.epoch():  # a later epoch starts clean
        steps.zero_grad()
        steps.backward((w * 2).sum())
        steps.clip()
        steps.step()
    assert w.grad is not None and torch.equal(w.grad, torch.full((3,), 0.6))  # 2, clipped at 0.6


def test_auto_overlaps_only_where_it_was_measured_to_pay():
    auto = dict(overlap=None, device=CPU, precision="fp32", distributed=False, compiled=False, aligned=True,
                bert=False, accumulation=10, threads=2)  # fmt: skip
    assert resolve_overlap(**auto)
    for change in (dict(threads=1), dict(threads=4), dict(accumulation=1), dict(aligned=False), dict(bert=True), dict(precision="bf16"),
                   dict(distributed=True), dict(compiled=True), dict(device=torch.device("cuda"))):  # fmt: skip
        assert not resolve_overlap(**(auto | change)), change
    assert not resolve_overlap(**(auto | dict(overlap=False)))
    assert resolve_overlap(**(auto | dict(overlap=True, aligned=False, threads=8)))
    with pytest.raises(ValueError, match="needs the CPU"):
        resolve_overlap(**(auto | dict(overlap=True, device=torch.device("cuda"))))
    with pytest.raises(ValueError, match="precision 'fp32'"):
        resolve_overlap(**(auto | dict(overlap=True, precision="bf16")))


def test_cli_overlap_option_maps_to_the_train_config():
    parser = build_parser()
    for word, value in (("auto", None), ("on", True), ("off", False)):
        args = parser.parse_args(["train", "--data", "x.pkl", "--overlap", word])
        assert _train_config_from_args(args).overlap is value
    assert _train_config_from_args(parser.parse_args(["train", "--data", "x.pkl"])).overlap is None
