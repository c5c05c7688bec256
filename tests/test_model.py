"""CML's encoder, meta weight network and the three-step meta update (spec §2, §4, §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cml_cli.config import RunConfig
from cml_cli.data.preprocess import ReadOptions, preprocess
from cml_cli.model.encoder import BehaviorEncoder
from cml_cli.model.propagation import BehaviorGraph
from cml_cli.model.weighting import MetaWeightNet
from cml_cli.train.cml_trainer import CMLTrainer

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- encoder


def _dense(users, items, n_users, n_items, norm):
    a = np.zeros((n_users, n_items))
    a[users, items] = 1.0
    if norm == "symmetric":
        du, di = a.sum(1), a.sum(0)
        su = np.where(du > 0, du, 1.0) ** -0.5 * (du > 0)
        si = np.where(di > 0, di, 1.0) ** -0.5 * (di > 0)
        a = su[:, None] * a * si[None, :]
    return torch.tensor(a, dtype=torch.float32)


@pytest.mark.parametrize("norm", ["none", "symmetric"])
def test_encoder_matches_dense_recomputation(norm):
    # 3 users, 4 items, 3 behaviors (user 1 has no item under behavior 1: zero degree rows)
    users = [np.array([0, 0, 1, 1, 2, 2, 2]), np.array([0, 2, 2]), np.array([0, 1, 2])]
    items = [np.array([0, 1, 1, 2, 0, 2, 3]), np.array([0, 2, 3]), np.array([0, 2, 3])]
    graph = BehaviorGraph(users, items, 3, 4, norm=norm)
    torch.manual_seed(0)
    enc = BehaviorEncoder(3, 4, dim=4, layers=2)
    e_u, e_i, e_uk = enc(graph)
    assert e_u.shape == (3, 4) and e_i.shape == (4, 4) and e_uk.shape == (3, 3, 4)

    adj = [_dense(u, i, 3, 4, norm) for u, i in zip(users, items)]
    h_u, h_i = enc.user_emb.detach(), enc.item_emb.detach()
    agg_u, agg_i, spec = [], [], [[] for _ in adj]
    for layer in range(2):
        m_u = [a @ h_i @ enc.w_user[layer].detach() for a in adj]
        m_i = [a.T @ h_u @ enc.w_item[layer].detach() for a in adj]
        for k, m in enumerate(m_u):
            spec[k].append(torch.sigmoid(m))
        h_u = torch.sigmoid(sum(m_u) / len(adj))
        h_i = torch.sigmoid(sum(m_i) / len(adj))
        agg_u.append(h_u)
        agg_i.append(h_i)
    p_u, p_i = enc.p_user.detach(), enc.p_item.detach()
    torch.testing.assert_close(e_u.detach(), torch.cat(agg_u, 1) @ p_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e_i.detach(), torch.cat(agg_i, 1) @ p_i, rtol=1e-5, atol=1e-6)
    for k in range(3):
        torch.testing.assert_close(e_uk[k].detach(), torch.cat(spec[k], 1) @ p_u, rtol=1e-5, atol=1e-6)


def test_mean_norm_propagates_neighbour_means():
    users, items = [np.array([0, 0, 1]), np.array([1])], [np.array([0, 1, 1]), np.array([2])]
    graph = BehaviorGraph(users, items, 2, 3, norm="mean")
    x = torch.randn(3, 2)
    to_users, to_items = graph.to_users(x), graph.to_items(x[:2])
    torch.testing.assert_close(to_users[0], torch.stack([x[:2].mean(0), x[1]]))
    torch.testing.assert_close(to_users[1], torch.stack([torch.zeros(2), x[2]]))
    torch.testing.assert_close(to_items[0], torch.stack([x[0], x[:2].mean(0), torch.zeros(2)]))


@pytest.mark.parametrize("ego", [False, True])
def test_held_out_edges_equal_a_graph_built_without_them(ego):
    users = [np.array([0, 0, 1, 1, 2, 2, 2]), np.array([0, 2, 2])]
    items = [np.array([0, 1, 1, 2, 0, 2, 3]), np.array([0, 2, 3])]
    # hold out (0, 0) in both behaviors and (2, 3) in behavior 0, in block coordinates
    rows, cols = torch.tensor([0, 3 + 0, 2]), torch.tensor([0, 4 + 0, 3])
    kept = [np.ones(7, bool), np.ones(3, bool)]
    kept[0][[0, 6]] = False
    kept[1][0] = False
    full = BehaviorGraph(users, items, 3, 4)
    reduced = BehaviorGraph([u[m] for u, m in zip(users, kept)], [i[m] for i, m in zip(items, kept)], 3, 4)
    torch.manual_seed(0)
    enc = BehaviorEncoder(3, 4, dim=4, layers=2, ego=ego)
    for got, want in zip(enc(full.without(rows, cols)), enc(reduced)):
        torch.testing.assert_close(got, want)
    assert full.held_out is None


def test_ego_prepends_the_layer0_tables():
    graph = BehaviorGraph([np.array([0, 1]), np.array([1])], [np.array([0, 1]), np.array([2])], 2, 3)
    torch.manual_seed(0)
    enc = BehaviorEncoder(2, 3, dim=4, layers=2, ego=True)
    assert enc.p_user.shape == (12, 4)
    with torch.no_grad():
        enc.p_user[4:] = 0
        enc.p_item[4:] = 0
    e_u, e_i, e_uk = enc(graph)
    torch.testing.assert_close(e_u, enc.user_emb @ enc.p_user[:4])
    torch.testing.assert_close(e_i, enc.item_emb @ enc.p_item[:4])
    torch.testing.assert_close(e_uk, (enc.user_emb @ enc.p_user[:4]).expand(2, -1, -1))


# ----------------------------------------------------------------------------- weight net


@pytest.mark.parametrize("n", [1, 7])
def test_meta_weight_net_shapes_and_ranges(n):
    torch.manual_seed(0)
    net = MetaWeightNet(dim=6, dropout=0.8)
    loss = torch.rand(n)
    a, b = torch.randn(n, 6), torch.randn(n, 6)
    w_cl = net.contrastive(loss, a, b)
    w_bpr = net.bpr(loss, a, b)
    assert w_cl.shape == (n,) and w_bpr.shape == (n,)
    assert bool(((w_cl > 0) & (w_cl < 1)).all())  # mean of two sigmoids
    assert bool(((w_bpr > 0) & (w_bpr < 2)).all())  # sum of two sigmoids
    net.eval()
    assert net.contrastive(loss, a, b).shape == (n,)


def test_meta_weight_net_layer_shapes():
    net = MetaWeightNet(dim=16)
    assert net.cl1.weight.shape == (24, 48) and net.cl2.weight.shape == (1, 24) and net.cl3.weight.shape == (1, 32)
    assert net.bpr1.weight.shape == (24, 48) and net.bpr2.weight.shape == (1, 24) and net.bpr3.weight.shape == (1, 16)


def test_weights_are_not_detached_from_the_losses():
    torch.manual_seed(0)
    net = MetaWeightNet(dim=4, dropout=0.0)
    loss = torch.rand(5, requires_grad=True)
    w = net.bpr(loss, torch.randn(5, 4), torch.randn(5, 4))
    (grad,) = torch.autograd.grad(w.sum(), loss)
    assert grad.abs().sum() > 0


# ----------------------------------------------------------------------------- trainer steps


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[n], p.detach()) for n, p in module.named_parameters())


def _trainer(ds, **overrides) -> tuple[CMLTrainer, object, object]:
    values = dict(device="cpu", dim=8, layers=2, batch=256, meta_batch=32, samp_num=4)
    values.update(overrides)
    cfg = RunConfig(**values)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tr = CMLTrainer(ds, cfg, CPU)
    batch = tr.sampler.batch(tr.batches(rng)[0], rng)
    meta_batch, _ = tr.sampler.meta_batch(0, rng)
    return tr, batch, meta_batch


def _spy_meta_steps(tr: CMLTrainer) -> list[list[torch.Tensor | None]]:
    seen: list[list[torch.Tensor | None]] = []
    step = tr._step_meta

    def spy(grads):
        seen.append([None if g is None else g.detach().clone() for g in grads])
        step(grads)

    tr._step_meta = spy
    return seen


def _norm(grads) -> float:
    return float(sum(g.double().pow(2).sum() for g in grads if g is not None)) ** 0.5


def test_real_step_leaves_weigher_without_gradient(tiny):
    tr, batch, _ = _trainer(tiny)
    enc, weigher = _params(tr.model.encoder), _params(tr.model.weigher)
    parts = tr._real_step(batch)
    assert np.isfinite(parts["loss"])
    for p in tr.model.weigher.parameters():
        assert p.grad is None or not p.grad.any()
    assert not _changed(weigher, tr.model.weigher)
    assert _changed(enc, tr.model.encoder)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.model.encoder.parameters())


def test_first_order_steps_move_only_the_weigher(tiny):
    tr, batch, meta_batch = _trainer(tiny)
    seen = _spy_meta_steps(tr)
    enc, weigher = _params(tr.model.encoder), _params(tr.model.weigher)
    tr._first_order(batch, meta_batch)
    assert len(seen) == 2  # virtual step and meta step both update Θ_M
    assert _norm(seen[0]) > 0
    assert _norm(seen[1]) > 0  # the meta step's gradient reaches Θ_M
    assert not _changed(enc, tr.model.encoder)  # Θ_G untouched by the virtual and meta steps
    assert _changed(weigher, tr.model.weigher)
    for p in tr.model.encoder.parameters():
        assert p.grad is None or not p.grad.any()


def test_second_order_steps_move_only_the_weigher(tiny):
    tr, batch, meta_batch = _trainer(tiny, meta_grad="second-order", virtual_lr=0.1)
    seen = _spy_meta_steps(tr)
    enc, weigher = _params(tr.model.encoder), _params(tr.model.weigher)
    tr._second_order(batch, meta_batch)
    assert len(seen) == 1 and _norm(seen[0]) > 0
    assert not _changed(enc, tr.model.encoder)
    assert _changed(weigher, tr.model.weigher)


def test_train_batch_runs_all_three_steps(tiny):
    tr, _, _ = _trainer(tiny)
    seen = _spy_meta_steps(tr)
    enc, weigher = _params(tr.model.encoder), _params(tr.model.weigher)
    rng = np.random.default_rng(1)
    parts = tr.train_batch(tr.batches(rng)[0], rng)
    assert set(parts) >= {"loss", "bpr", "reg", "cl"} and np.isfinite(parts["loss"])
    assert len(seen) == 2
    assert _changed(enc, tr.model.encoder) and _changed(weigher, tr.model.weigher)
    assert tr.meta_pointer == 32


@pytest.mark.parametrize("param", ["bpr1.weight", "cl3.weight", "bn.bias", "all"])
def test_second_order_meta_gradient_matches_finite_differences(tiny, param):
    """The meta-gradient of CMLTrainer._second_order (captured before clipping) equals central
    differences of 0.5 * L_meta(Θ_G - α ∇L_train(Θ_G, Θ_M), Θ_M), along a random direction of one
    weigher parameter (or of all of them), in float64 with fixed batches and no dropout."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        alpha = 0.5
        tr, batch, meta_batch = _trainer(tiny, dim=4, meta_dropout=0.0, meta_grad="second-order",
                                         virtual_lr=alpha, batch=128, meta_batch=16, samp_num=3)
        assert tr.model.encoder.user_emb.dtype == torch.float64
        model, graph = tr.model, tr.graph
        weigher = dict(model.weigher.named_parameters())
        chosen = list(weigher) if param == "all" else [param]
        gen = torch.Generator().manual_seed(1)
        direction = {n: torch.randn(weigher[n].shape, generator=gen) for n in chosen}

        seen: list = []
        tr._step_meta = lambda grads: seen.append(grads)  # capture, do not step
        tr._second_order(batch, meta_batch)
        grads = dict(zip(weigher, seen[0]))
        analytic = sum(float((grads[n] * direction[n]).sum()) for n in chosen if grads[n] is not None)

        enc_names, live = zip(*model.encoder.named_parameters())

        def meta_objective(direct_only: bool = False) -> torch.Tensor:
            loss, _ = model.objective(graph, batch, dict(zip(enc_names, live)), weighting="meta")
            g = torch.autograd.grad(loss, live, allow_unused=True, create_graph=not direct_only)
            virtual = {n: p - alpha * (torch.zeros_like(p) if d is None else d) for n, p, d in zip(enc_names, live, g)}
            if direct_only:
                virtual = {n: v.detach() for n, v in virtual.items()}
            meta_loss, _ = model.objective(graph, meta_batch, virtual, weighting="meta")
            return 0.5 * meta_loss

        def shifted(step: float) -> float:
            with torch.no_grad():
                for n in chosen:
                    weigher[n].add_(step * direction[n])
            try:
                return meta_objective().item()
            finally:
                with torch.no_grad():
                    for n in chosen:
                        weigher[n].sub_(step * direction[n])

        eps = 1e-5
        numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
        assert abs(numeric) > 1e-7  # a meaningful (non-vanishing) derivative
        assert analytic == pytest.approx(numeric, rel=1e-5)

        # The check is sensitive to the second-order path: dropping it changes the gradient.
        direct = torch.autograd.grad(meta_objective(direct_only=True), [weigher[n] for n in chosen],
                                     allow_unused=True)
        first_order = sum(float((d * direction[n]).sum()) for n, d in zip(chosen, direct) if d is not None)
        assert abs(first_order - numeric) > 1e-3 * abs(numeric)
    finally:
        torch.set_default_dtype(old)


def test_hold_out_lists_every_positive_edge_of_the_batch(tiny):
    tr, batch, meta_batch = _trainer(tiny, hold_out=True)
    n_u, n_i = tiny.n_users, tiny.n_items
    for b in (batch, meta_batch):
        rows, cols = (t.numpy() for t in b.held_out)
        held = set(zip(rows.tolist(), cols.tolist()))
        assert len(held) == len(rows)  # no edge twice
        for k, index in enumerate(tr.sampler.index):
            assert index.contains(rows[rows // n_u == k] % n_u, cols[rows // n_u == k] % n_i).all()
            for t in b.triples:
                u, i = t.user.numpy(), t.pos.numpy()
                has = index.contains(u, i)
                assert {(x, y) for x, y in zip(u[has] + k * n_u, i[has] + k * n_i)} <= held
    parts = tr.train_batch(tr.batches(np.random.default_rng(1))[0], np.random.default_rng(1))
    assert np.isfinite(parts["loss"])
    assert _trainer(tiny)[1].held_out is None


def test_hold_out_mirrors_the_test_split(tmp_path):
    """Batch positives leave every behavior when test items never occur in auxiliary data
    (synthetic, CML files); only their own behavior when they do (MB-CGCN files)."""
    import numpy as np

    from cml_cli.config import RunConfig
    from cml_cli.train.cml_trainer import CMLSampler

    _, ds = preprocess("synthetic", None, ReadOptions(size="tiny"), data_dir=tmp_path)
    cfg = RunConfig(hold_out=True, batch=64)
    sampler = CMLSampler(ds, cfg, torch.device("cpu"))
    assert sampler.hold_out_everywhere
    rng = np.random.default_rng(0)
    rows = sampler.epoch(rng)[0]
    everywhere = sampler.batch(rows, np.random.default_rng(1)).held_out
    sampler.hold_out_everywhere = False
    own = sampler.batch(rows, np.random.default_rng(1)).held_out
    assert own[0].numel() < everywhere[0].numel()
    blocks_own = set((own[0] // ds.n_users).tolist())
    assert blocks_own <= set(range(len(ds.behaviors)))
