"""Losses: the margin loss against the loop definition on every awkward batch; orthogonality variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dmd_core
from dmd_core.losses import margin_loss, margin_loss_definition, orthogonality_loss, total_loss

from .conftest import load_fixture, tiny_config, tiny_inputs

CASES = {
    "ties": [-1.0, 0.0, 1.6, 1.6, 0.0, 2.2],
    "all_equal_no_negatives": [0.4, 0.4, 0.4],
    "all_distinct": [-2.0, -1.0, 0.0, 1.0, 2.0],
    "batch_of_one": [1.2],
    "some_anchors_without_positive_other_sample": [1.0, 1.0, 2.0],
    "exact_zeros_and_negatives": [0.0, -0.0, 3.0, -3.0],
}


@pytest.mark.parametrize("name", CASES)
def test_margin_loss_equals_the_loop_definition(name):
    labels = torch.tensor(CASES[name])
    feats = torch.randn(3, len(labels), 5, generator=torch.Generator().manual_seed(len(name)))
    torch.testing.assert_close(margin_loss(feats, labels), margin_loss_definition(feats, labels))
    torch.testing.assert_close(margin_loss(feats, labels.reshape(-1, 1)), margin_loss(feats, labels))


@pytest.mark.parametrize("name", ["ties", "all_distinct", "some_anchors_without_positive_other_sample"])
def test_margin_loss_gradient_equals_the_loop_definitions(name):
    labels = torch.tensor(CASES[name])
    base = torch.randn(3, len(labels), 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ours, theirs = base.clone().requires_grad_(), base.clone().requires_grad_()
    margin_loss(ours, labels).backward()
    margin_loss_definition(theirs, labels).backward()
    torch.testing.assert_close(ours.grad, theirs.grad)
    assert torch.autograd.gradcheck(lambda f: margin_loss(f, labels), (base.clone().requires_grad_(),))


def test_margin_loss_is_zero_without_any_negative():
    feats = torch.randn(3, 4, 5)
    assert margin_loss(feats, torch.full((4,), 0.6)).item() == 0.0
    assert margin_loss(feats[:, :1], torch.tensor([0.6])).item() == 0.0


def test_margin_loss_by_hand_on_two_samples():
    # Sample 0 (label 0) has L, V, A = e1, e1, e2; sample 1 (label 1) has e1, e1, e1.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    feats = torch.stack([torch.stack([e1, e1]), torch.stack([e1, e1]), torch.stack([e2, e1])])  # (3, B=2, 2)
    # Anchor L0: positives V0 (cos 1), A0 (cos 0); negatives L1, V1, A1 (cos 1 each), margin 0.15.
    # hinge with V0: 0.15 - 1 + 1 = 0.15 (x3); with A0: 0.15 - 0 + 1 = 1.15 (x3) -> mean 0.65. Same for V0.
    # Anchor A0: positives L0, V0 (cos 0), negatives cos 0: hinge 0.15 -> 0.15.
    # Anchors of sample 1: positives cos 1, negatives L0, V0 (cos 1), A0 (cos 0):
    #   (0.15 - 1 + 1, 0.15 - 1 + 1, max(0, 0.15 - 1 + 0)) -> mean 0.1 each.
    expected = (0.65 + 0.65 + 0.15 + 3 * 0.1) / 6
    torch.testing.assert_close(margin_loss(feats, torch.tensor([0.0, 1.0])), torch.tensor(expected))


def test_margin_loss_on_the_fixture_features():
    fx = load_fixture("mosi_aligned_features")
    feats = torch.stack([fx["outputs"][f"c_{m}_sim"] for m in "lva"])
    torch.testing.assert_close(margin_loss(feats, fx["inputs"]["labels"]), fx["margin_loss"], atol=1e-6, rtol=1e-5)


def test_margin_loss_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        margin_loss(torch.randn(3, 4, 5), torch.zeros(3))


def _decoupled():
    cfg = tiny_config()
    text, audio, vision, _ = tiny_inputs(cfg)
    return dmd_core.DMD(cfg).eval()(text, audio, vision).decoupled


def test_orthogonality_batch_axis_is_one_cosine_per_time_step_and_channel():
    dec = _decoupled()
    expected = 0.0
    for m in "LVA":
        s, c = dec.private[m], dec.shared[m]  # (B, d, T)
        cos = F.cosine_similarity(s, c, dim=0)  # (d, T) along the batch
        expected = expected + cos.clamp_min(0).mean()
    torch.testing.assert_close(orthogonality_loss(dec, "batch"), expected, atol=1e-6, rtol=1e-5)


def test_orthogonality_feature_axis_equals_cosine_embedding_loss_per_sample_and_step():
    dec = _decoupled()
    expected = 0.0
    for m in "LVA":
        s = dec.private[m].transpose(1, 2).reshape(-1, dec.private[m].shape[1])  # (B*T, d)
        c = dec.shared[m].transpose(1, 2).reshape(-1, dec.shared[m].shape[1])
        expected = expected + F.cosine_embedding_loss(s, c, -torch.ones(len(s)))
    torch.testing.assert_close(orthogonality_loss(dec, "feature"), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(orthogonality_loss(dec, "feature"), orthogonality_loss(dec, "batch"))


def test_orthogonality_rejects_an_unknown_axis():
    with pytest.raises(ValueError, match="axis"):
        orthogonality_loss(_decoupled(), "time")


def test_total_is_the_weighted_sum_of_its_parts():
    cfg = tiny_config()
    text, audio, vision, labels = tiny_inputs(cfg)
    model = dmd_core.DMD(cfg)
    parts = total_loss(model, model(text, audio, vision), labels)
    expected = parts.task + parts.homo_gd + parts.hetero_gd + 0.1 * (
        parts.cycle + parts.recon + 0.1 * (parts.margin + parts.ort))  # fmt: skip
    torch.testing.assert_close(parts.total, expected)
    torch.testing.assert_close(parts.homo_gd, 0.05 * (parts.homo_logit + parts.homo_reg))
    torch.testing.assert_close(parts.hetero_gd, 0.05 * (parts.hetero_logit + parts.hetero_repr + parts.hetero_reg))
    assert set(parts.as_dict()) >= {"total", "task", "recon", "cycle", "ort", "margin", "homo_gd", "hetero_gd"}


def test_task_loss_sums_eight_l1_terms():
    cfg = tiny_config()
    text, audio, vision, labels = tiny_inputs(cfg)
    model = dmd_core.DMD(cfg).eval()
    out = model(text, audio, vision)
    preds = out.predictions()
    assert len(preds) == 8
    from dmd_core.losses import task_loss

    torch.testing.assert_close(task_loss(out, labels), sum((p - labels).abs().mean() for p in preds))
