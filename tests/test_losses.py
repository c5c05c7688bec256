"""The per-example losses and CML's full objective against hand computations (spec §3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cml_cli.model.cml import CML, Batch, CMLOptions, Triples
from cml_cli.model.losses import bpr_loss, info_nce, l2_reg
from cml_cli.model.propagation import BehaviorGraph


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bpr_loss_hand_values():
    pos = torch.tensor([2.0, 0.0, -1.0, 30.0])
    neg = torch.tensor([1.0, 0.0, 1.5, -30.0])
    expected = [-math.log(_sigmoid(p - n)) for p, n in zip(pos.tolist(), neg.tolist())]
    out = bpr_loss(pos, neg)
    assert out.shape == (4,)
    assert out.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert float(bpr_loss(torch.tensor([0.0]), torch.tensor([0.0]))) == pytest.approx(math.log(2))


def _info_nce_loop(anchor: list[list[float]], other: list[list[float]], tau: float) -> list[float]:
    out = []
    for u, a in enumerate(anchor):
        dots = [sum(x * y for x, y in zip(a, o)) / tau for o in other]
        pos = math.exp(dots[u])
        neg = sum(math.exp(d) for v, d in enumerate(dots) if v != u)
        out.append(-math.log(pos / neg))
    return out


def test_info_nce_hand_values_three_users():
    # d = 2, tau = d: the positive (diagonal) is left out of the denominator.
    anchor = [[1.0, 0.0], [0.5, -1.0], [2.0, 1.0]]
    other = [[0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]]
    out = info_nce(torch.tensor(anchor), torch.tensor(other), tau=2.0)
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx(_info_nce_loop(anchor, other, 2.0), rel=1e-6)
    # user 0 by hand: scores a0.o_v / 2 = (0, 0.5, -0.5); loss = -log(e^0 / (e^0.5 + e^-0.5))
    assert float(out[0]) == pytest.approx(math.log(math.exp(0.5) + math.exp(-0.5)), rel=1e-6)


def test_info_nce_batched_over_behaviors():
    gen = torch.Generator().manual_seed(0)
    anchor = torch.randn(5, 4, generator=gen)
    other = torch.randn(3, 5, 4, generator=gen)
    out = info_nce(anchor.expand(3, -1, -1), other, tau=4.0)
    assert out.shape == (3, 5)
    for k in range(3):
        assert out[k].tolist() == pytest.approx(_info_nce_loop(anchor.tolist(), other[k].tolist(), 4.0), rel=1e-5)


def test_l2_reg_hand_values():
    a = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    b = torch.tensor([[3.0, 0.0]])
    assert float(l2_reg(a, b)) == pytest.approx(1 + 4 + 0 + 1 + 9)
    assert float(l2_reg(a)) == pytest.approx(6.0)


def _three_user_graph(norm: str) -> BehaviorGraph:
    """3 users, 4 items, 2 behaviors (view, buy)."""
    view = (np.array([0, 0, 1, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2, 3]))
    buy = (np.array([0, 1, 2, 2]), np.array([0, 2, 2, 3]))
    return BehaviorGraph([view[0], buy[0]], [view[1], buy[1]], 3, 4, norm=norm)


def _batch() -> Batch:
    t = torch.tensor
    triples = [
        Triples(t([0, 1, 2]), t([1, 1, 0]), t([3, 0, 1])),  # view: positives from view, negatives not viewed
        Triples(t([0, 1, 2, 2]), t([0, 2, 2, 3]), t([2, 1, 1, 0])),  # buy: the target pairs
    ]
    return Batch(triples, t([0, 1, 2]), size=4)


@pytest.mark.parametrize("norm", ["none", "symmetric"])
def test_cml_objective_unweighted_matches_direct_computation(norm):
    torch.manual_seed(0)
    graph = _three_user_graph(norm)
    reg, beta, dim = 0.01, 0.5, 4
    model = CML(3, 4, 2, CMLOptions(dim=dim, layers=2, dropout=0.0, reg=reg, beta=beta))
    batch = _batch()
    loss, parts = model.objective(graph, batch, weighting="none")

    with torch.no_grad():
        e_u, e_i, e_uk = model.encoder(graph)
    eu, ei, euk = e_u.tolist(), e_i.tolist(), e_uk.tolist()

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    bpr = 0.0
    for t in batch.triples:
        for u, p, n in zip(t.user.tolist(), t.pos.tolist(), t.neg.tolist()):
            bpr += -math.log(_sigmoid(dot(eu[u], ei[p]) - dot(eu[u], ei[n])))
    bpr /= 2  # K
    tgt = batch.triples[-1]
    l2 = sum(dot(eu[u], eu[u]) + dot(ei[p], ei[p]) + dot(ei[n], ei[n])
             for u, p, n in zip(tgt.user.tolist(), tgt.pos.tolist(), tgt.neg.tolist()))
    users = batch.ssl_users.tolist()
    cl = 0.0
    for k in range(2):
        anchor = [euk[-1][u] for u in users]
        other = [euk[k][u] for u in users]
        cl += sum(_info_nce_loop(anchor, other, float(dim)))
    cl /= 2
    total = (bpr + reg * l2 + beta * cl) / batch.size

    assert float(loss.detach()) == pytest.approx(total, rel=1e-5)
    assert parts["bpr"] == pytest.approx(bpr, rel=1e-5)
    assert parts["reg"] == pytest.approx(l2, rel=1e-5)
    assert parts["cl"] == pytest.approx(cl, rel=1e-5)
    assert parts["loss"] == pytest.approx(total, rel=1e-5)


def test_cml_objective_without_contrastive_drops_cl_term():
    torch.manual_seed(0)
    graph = _three_user_graph("symmetric")
    with_cl = CML(3, 4, 2, CMLOptions(dim=4, layers=2, dropout=0.0, reg=0.01, beta=0.5))
    without = CML(3, 4, 2, CMLOptions(dim=4, layers=2, dropout=0.0, reg=0.01, beta=0.5, contrastive=False))
    without.load_state_dict(with_cl.state_dict())
    batch = _batch()
    full, p_full = with_cl.objective(graph, batch, weighting="none")
    bare, p_bare = without.objective(graph, batch, weighting="none")
    assert p_bare["cl"] == 0.0
    assert float((full - bare).detach()) == pytest.approx(0.5 * p_full["cl"] / batch.size, rel=1e-5)
