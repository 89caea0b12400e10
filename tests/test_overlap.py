"""TrainConfig.overlap: backward passes on a second CPU thread compute exactly what one thread does."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

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


def assert_overlap_trains_as_one_thread(tmp_path, cfg, ds, threads_with_overlap: int) -> None:
    """Two epochs with overlap (at ``threads_with_overlap`` torch threads) and without (one thread): same bits."""
    recipe = TrainConfig(batch_size=4, accumulation=3, max_epochs=2, seeds=(3,))
    torch.set_num_threads(1)
    one = train(cfg, ds, recipe.replace(overlap=False), tmp_path / "one", seed=3, progress=False)
    torch.set_num_threads(threads_with_overlap)
    two = train(cfg, ds, recipe.replace(overlap=True), tmp_path / "two", seed=3, progress=False)
    assert torch.get_num_threads() == threads_with_overlap  # restored after every epoch
    assert same_weights(one.model.state_dict(), two.model.state_dict())
    # The training columns agree bit for bit; validation ran with two threads per operation in `two`.
    a, b = history_without_time(tmp_path / "one"), history_without_time(tmp_path / "two")
    train_columns = [c for c in a.columns if c.startswith("train_")]
    assert len(train_columns) > 10 and a[train_columns].equals(b[train_columns])


def test_overlapped_training_equals_one_thread_bit_for_bit(tmp_path, threads):
    # 22 samples in mini-batches of 4 with groups of 3: two full groups and a leftover group per epoch.
    cfg = tiny_config()
    assert_overlap_trains_as_one_thread(tmp_path, cfg, tiny_dataset(cfg, sizes=(22, 8, 8)), threads_with_overlap=2)


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
        if model.text_encoder is not None:
            model.text_encoder.seed_dropout(1)  # BERT's draw their own seeds
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
    assert resolve_overlap(**(auto | dict(bert=True)))  # BERT's forward passes ahead
    assert not resolve_overlap(**(auto | dict(bert=True, bert_seeded=False)))  # masks would depend on the thread
    with pytest.raises(ValueError, match="seeded dropout"):
        resolve_overlap(**(auto | dict(overlap=True, bert=True, bert_seeded=False)))
    for change in (dict(threads=1), dict(threads=4), dict(accumulation=1), dict(aligned=False), dict(precision="bf16"),
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


# ---- with BERT: its forward pass one mini-batch ahead (devices.TextAhead) ----

BERT_1100 = dict(SMALL_BERT, vocab_size=1100)  # dmd_core.bench.random_split draws token ids from 1000 on


def bert_dataset(cfg, sizes=(22, 8, 8)):
    from dmd_core.bench import random_split

    return {name: random_split(cfg, n, name, k) for k, (name, n) in enumerate(zip(("train", "valid", "test"), sizes))}


def test_bert_ahead_training_equals_one_thread_bit_for_bit(tmp_path, threads):
    # BERT's forward passes ahead on the second thread, every operation single-threaded: the same bits.
    cfg = tiny_config(bert=BertSpec(name_or_path=None, config=BERT_1100))
    assert_overlap_trains_as_one_thread(tmp_path, cfg, bert_dataset(cfg), threads_with_overlap=1)


def test_bert_ahead_runs_where_it_should_with_two_threads(tmp_path, threads):
    """Where each part runs: BERT ahead on the other thread, one thread per operation; the rest of the model here,
    one thread while BERT runs beside it; BERT's backward and the group's first BERT pass here with both."""
    cfg = tiny_config(bert=BertSpec(name_or_path=None, config=BERT_1100))
    torch.set_num_threads(2)
    trainer = Trainer(cfg, bert_dataset(cfg, sizes=(24, 4, 4)), TrainConfig(batch_size=4, accumulation=3, overlap=True),
                      tmp_path / "run", seed=1, progress=False, distributed=False)  # fmt: skip
    assert trainer.text_ahead and trainer.gradients.overlap is False
    seen: dict[str, list] = {"bert": [], "model": [], "bert backward": []}

    def record(key):
        return lambda *a: seen[key].append((threading.get_ident() == main, torch.get_num_threads()))

    main = threading.get_ident()
    trainer.model.text_encoder.register_forward_hook(record("bert"))
    trainer.model.fusion_head.register_forward_hook(record("model"))
    trainer.model.text_encoder.bert.embeddings.LayerNorm.weight.register_hook(record("bert backward"))
    trainer.train_epoch()
    # 6 mini-batches in groups of 3: the 2nd and 3rd of each group ran ahead.
    assert seen["bert"] == [(True, 2), (False, 1), (False, 1)] * 2
    assert seen["model"] == [(True, 1), (True, 1), (True, 2)] * 2
    assert seen["bert backward"] == [(True, 2)] * 6 and torch.get_num_threads() == 2


def test_bert_dropout_masks_follow_their_seed_not_the_thread_or_other_draws():
    from dmd_core.text_encoder import TextEncoder

    torch.manual_seed(0)
    enc = TextEncoder(BertSpec(name_or_path=None, config=dict(SMALL_BERT, hidden_dropout_prob=0.3)))
    assert enc.seeded
    cfg = tiny_config(bert=BertSpec(name_or_path=None, config=SMALL_BERT))
    text = tiny_bert_text(cfg, 6)
    text[0, 1, 5:] = 0  # some padding: the mask reaches the attention
    enc.train()
    enc.seed_dropout(7)
    first, second = enc(text), enc(text)
    assert not torch.equal(first, second)  # a new pass, new masks
    enc.seed_dropout(7, passes=1)
    torch.rand(1000)  # other draws on torch's generator change nothing
    with ThreadPoolExecutor(1) as pool:
        again = pool.submit(enc, text).result()  # nor the thread
    assert torch.equal(again, second)
    # The rate: the embeddings' dropout (p 0.3) zeroes about 30% of a wide output.
    seeds = enc.seeds
    seeds.seed, seeds.passes = 1, 0
    seeds.next_pass()
    x = torch.ones(200, 500)
    dropped = enc.bert.embeddings.dropout(x)
    assert abs((dropped == 0).float().mean().item() - 0.3) < 0.01
    assert torch.allclose(dropped.max(), torch.tensor(1 / 0.7))
    # Evaluation is BERT as transformers computes it (sdpa), bit for bit.
    from transformers import BertConfig, BertModel

    plain = BertModel(BertConfig(**dict(SMALL_BERT, hidden_dropout_prob=0.3)), add_pooling_layer=False).eval()
    plain.load_state_dict(enc.bert.state_dict())
    enc.eval()
    ids, mask = text[:, 0].long(), text[:, 1].float()
    assert torch.equal(enc(text), plain(input_ids=ids, attention_mask=mask, token_type_ids=text[:, 2].long())[0])


def test_an_error_in_bert_ahead_reaches_the_trainer_and_the_thread_count_is_restored(threads):
    from dmd_core.devices import TextAhead

    torch.set_num_threads(2)
    calls = []

    def encoder(text):
        calls.append(threading.get_ident())
        if len(calls) == 2:
            raise RuntimeError("boom ahead")
        return text * 2

    a, b = torch.ones(2, requires_grad=True), torch.zeros(2)
    ahead = TextAhead(encoder)
    with pytest.raises(RuntimeError, match="boom ahead"):
        try:
            out = ahead.features(a, upcoming=b)  # a here, b ahead on the other thread
            assert torch.get_num_threads() == 1 and out.requires_grad and out.grad_fn is None
            out.sum().backward()
            ahead.backward()  # waits for b: raises its error
        finally:
            ahead.close()
    assert torch.get_num_threads() == 2 and calls[0] == threading.get_ident() != calls[1]
    assert a.grad is None  # the error is raised before BERT's backward
    # Asking for another mini-batch than the one computed ahead is a bug in the caller, said at once.
    ahead = TextAhead(lambda t: t * 2)
    try:
        ahead.features(a, upcoming=b)
        ahead.backward()
        with pytest.raises(RuntimeError, match="not this mini-batch's"):
            ahead.features(a, upcoming=None)
    finally:
        ahead.close()
    assert torch.get_num_threads() == 2


def test_a_resumed_bert_run_draws_the_masks_an_uninterrupted_one_draws(tmp_path, threads):
    """BERT's dropout stream is set at every epoch from the run's seed and the mini-batches before it."""
    torch.set_num_threads(1)
    cfg = tiny_config(bert=BertSpec(name_or_path=None, config=BERT_1100))
    ds = bert_dataset(cfg, sizes=(16, 4, 4))
    recipe = TrainConfig(batch_size=4, accumulation=2, max_epochs=3, seeds=(5,))
    full = train(cfg, ds, recipe, tmp_path / "full", seed=5, progress=False)
    train(cfg, ds, recipe.replace(max_epochs=1), tmp_path / "part", seed=5, progress=False)
    resumed = train(cfg, ds, recipe, tmp_path / "part", seed=5, resume=True, progress=False)
    assert same_weights(full.model.state_dict(), resumed.model.state_dict())
    assert history_without_time(tmp_path / "full").equals(history_without_time(tmp_path / "part"))
    # Each training pass had its own masks: the stream moved on over 3 epochs of 4 mini-batches, not per epoch.
    assert full.model.text_encoder.seeds.passes == resumed.model.text_encoder.seeds.passes == 12


def test_under_torch_compile_bert_draws_as_nn_dropout_does():
    """Seeds are for the eager CPU path; traced by Dynamo, BERT's dropout uses torch's generator (no seed to
    specialise on, so no recompilation per call), and the model still trains and evaluates."""
    from dmd_core.text_encoder import TextEncoder

    torch.manual_seed(0)
    enc = TextEncoder(BertSpec(name_or_path=None, config=SMALL_BERT)).train()
    text = tiny_bert_text(tiny_config(bert=BertSpec(name_or_path=None, config=SMALL_BERT)), 4)
    torch._dynamo.reset()
    compiled = torch.compile(enc, backend="eager")
    a, b = compiled(text), compiled(text)
    assert enc.seeds.passes == 0 and not torch.equal(a, b)  # not seeded, and fresh masks each call
    a.sum().backward()
    assert enc.bert.embeddings.word_embeddings.weight.grad is not None
    enc.eval()
    assert torch.equal(compiled(text), enc(text))
