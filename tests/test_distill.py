"""The GD-Unit: edge order, softmax, priors, regulariser and the weighted losses, by hand."""

from __future__ import annotations

import pytest
import torch

from dmd_core.config import DMDConfig
from dmd_core.distill import EDGE_NAMES, STUDENTS, TEACHERS, GraphDistillation, cosine_along


def unit(distance="l1", **kw) -> GraphDistillation:
    return GraphDistillation(repr_dim=3, gd_size=2, prior=(0, 0, 1, 0, 1, 0), repr_distance=distance, **kw)


def test_edge_order_is_student_major_as_the_reference():
    assert EDGE_NAMES == ("V->L", "A->L", "L->V", "A->V", "L->A", "V->A")
    assert [(s, t) for s, t in zip(STUDENTS, TEACHERS)] == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


def test_edge_score_reads_student_then_teacher():
    gd = unit()
    with torch.no_grad():
        for p in gd.parameters():
            p.zero_()
        gd.W_logit.weight.fill_(1.0)  # q_m = [logit_m, logit_m, 0, 0]
        gd.W_edge.weight[0, 0] = 1.0  # score = student logit
        gd.W_edge.weight[0, 4] = 10.0  # + 10 * teacher logit
    logits = torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1)  # L, V, A
    graph = gd(logits, torch.zeros(3, 1, 3))
    expected = torch.tensor([1 + 20, 1 + 30, 2 + 10, 2 + 30, 3 + 10, 3 + 20], dtype=torch.float32)
    torch.testing.assert_close(graph.raw[:, 0], expected)
    torch.testing.assert_close(graph.edges[:, 0], torch.softmax(expected / 8, 0))
    torch.testing.assert_close(graph.raw_sum, expected.reshape(6, 1))


def test_priors_put_mass_on_the_papers_edges():
    cfg = DMDConfig(d=10, heads=2)
    homo, hetero = GraphDistillation.homo(cfg), GraphDistillation.hetero(cfg)
    e4 = torch.exp(torch.tensor(4.0))
    torch.testing.assert_close(homo.prior, torch.tensor([1, 1, e4, 1, e4, 1]) / (4 + 2 * e4))
    torch.testing.assert_close(hetero.prior, torch.tensor([1, 1, e4, 1, e4, e4]) / (3 + 3 * e4))
    top = [EDGE_NAMES[i] for i in torch.topk(hetero.prior, 3).indices]
    assert sorted(top) == ["L->A", "L->V", "V->A"]


def test_losses_by_hand_on_uniform_edges():
    gd = unit()
    B = 2
    edges = torch.full((6, B), 1 / 6)
    from dmd_core.distill import Graph

    graph = Graph(edges=edges, raw=torch.zeros(6, B))
    logits = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]]).reshape(3, B, 1)
    reprs = torch.zeros(3, B, 3)
    reprs[1] = 1.0  # V differs from L and A by 3 per sample
    parts = gd.losses(logits, reprs, graph)
    prior = gd.prior
    reg = 10 * ((1 / 6 - prior) ** 2).sum()
    w = 1 / 6 + prior
    d_logit = torch.tensor([[2, 1], [1, 1], [2, 1], [3, 2], [1, 1], [3, 2]], dtype=torch.float32)
    logit = (w * d_logit.mean(1)).sum()
    d_repr = torch.tensor([3, 0, 3, 3, 0, 3], dtype=torch.float32)
    rep = 10 * (w * d_repr).sum()
    torch.testing.assert_close(parts.reg, reg)
    torch.testing.assert_close(parts.logit, logit)
    torch.testing.assert_close(parts.repr, rep)
    torch.testing.assert_close(parts.total, 0.05 * (logit + reg + rep))


def test_homo_repr_loss_is_computed_but_left_out_of_the_total_by_default():
    cfg = DMDConfig(d=10, heads=2)
    gd = GraphDistillation.homo(cfg)
    torch.manual_seed(0)
    logits, reprs = torch.randn(3, 4, 1), torch.randn(3, 4, 10)
    parts = gd.losses(logits, reprs, gd(logits, reprs))
    assert parts.repr > 0
    torch.testing.assert_close(parts.total, 0.05 * (parts.logit + parts.reg))
    gd_in = GraphDistillation.homo(cfg.replace(homo_repr_in_total=True))
    gd_in.load_state_dict(gd.state_dict())
    parts_in = gd_in.losses(logits, reprs, gd_in(logits, reprs))
    torch.testing.assert_close(parts_in.total, 0.05 * (parts.logit + parts.reg + parts.repr))


def test_hetero_cosine_term_penalises_agreement_and_ignores_opposition():
    gd = unit("cosine")
    from dmd_core.distill import Graph

    graph = Graph(edges=torch.full((6, 1), 1 / 6), raw=torch.zeros(6, 1))
    same = torch.ones(3, 1, 3)
    assert gd.losses(torch.zeros(3, 1, 1), same, graph).repr > 0
    opposite = torch.ones(3, 1, 3)
    opposite[1] = -1  # V opposite to L and A; L and A agree
    torch.testing.assert_close(
        gd.losses(torch.zeros(3, 1, 1), opposite, graph).repr,
        10 * (1 / 6 + gd.prior[[1, 4]]).sum(),  # only the edges A->L and L->A agree (cos = 1)
    )


def test_teachers_are_detached():
    gd = unit()
    logits = torch.randn(3, 4, 1, requires_grad=True)
    reprs = torch.randn(3, 4, 3)
    graph = gd(logits.detach(), reprs)
    parts = gd.losses(logits, reprs, graph)
    (g,) = torch.autograd.grad(parts.logit, logits)
    # d/d logit_L only through L as student: edges V->L and A->L
    manual = torch.zeros(3, 4, 1)
    w = graph.edges + gd.prior[:, None]
    for k, (s, t) in enumerate(zip(STUDENTS, TEACHERS)):
        manual[s, :, 0] += w[k] * torch.sign(logits[s, :, 0] - logits[t, :, 0]).detach() / 4
    torch.testing.assert_close(g, manual)


def test_cosine_matches_torch_cosine_embedding_loss():
    x, y = torch.randn(5, 7), torch.randn(5, 7)
    ours = torch.relu(cosine_along(x, y, dim=1)).mean()
    theirs = torch.nn.CosineEmbeddingLoss()(x, y, -torch.ones(5))
    torch.testing.assert_close(ours, theirs)


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="repr_distance"):
        unit("l2")
