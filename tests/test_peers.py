"""Shared propagation (against PyG's LightGCN), the LightGCN backbone of CML, and the
multi-behavior peers MB-CGCN and CRGCN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.nn.models import LightGCN

from cml_cli.config import RunConfig, resolve_config
from cml_cli.model.cml import CML, Batch, CMLOptions, Triples
from cml_cli.model.encoder import LightGCNBehaviorEncoder
from cml_cli.model.propagation import BehaviorGraph, lightgcn
from cml_cli.train.factory import make_trainer
from cml_cli.train.loop import train

CPU = torch.device("cpu")
PEERS = ["mbcgcn", "crgcn"]


def _graph(seed: int = 0, n_users: int = 7, n_items: int = 9, edges: int = 25) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, n_users * n_items, size=edges))
    return keys // n_items, keys % n_items


def test_lightgcn_propagation_equals_pyg_lightgcn():
    """:func:`lightgcn` over a one-block BehaviorGraph is PyG's LightGCN on the bipartite graph."""
    n_users, n_items, layers = 7, 9, 3
    users, items = _graph()
    graph = BehaviorGraph([users], [items], n_users, n_items, norm="symmetric")
    torch.manual_seed(0)
    pyg = LightGCN(num_nodes=n_users + n_items, embedding_dim=4, num_layers=layers)
    edge_index = torch.from_numpy(np.stack([np.r_[users, items + n_users], np.r_[items + n_users, users]]))
    want = pyg.get_embedding(edge_index).detach()  # LGConv normalises symmetrically itself
    x = pyg.embedding.weight.detach()
    got_u, got_i = lightgcn(graph, x[:n_users], x[n_users:], layers)
    torch.testing.assert_close(got_u[0], want[:n_users], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_i[0], want[n_users:], rtol=1e-5, atol=1e-6)


def test_lightgcn_blocks_are_independent():
    """Two blocks propagate as two separate graphs (one spmm for both)."""
    (u1, i1), (u2, i2) = _graph(1), _graph(2)
    both = BehaviorGraph([u1, u2], [i1, i2], 7, 9, norm="symmetric")
    x_u, x_i = torch.randn(7, 4), torch.randn(9, 4)
    out_u, out_i = lightgcn(both, x_u, x_i, 2)
    for k, (u, i) in enumerate(((u1, i1), (u2, i2))):
        alone_u, alone_i = lightgcn(BehaviorGraph([u], [i], 7, 9, norm="symmetric"), x_u, x_i, 2)
        torch.testing.assert_close(out_u[k], alone_u[0])
        torch.testing.assert_close(out_i[k], alone_i[0])


# ----------------------------------------------------------------------------- CML's LightGCN backbone


def _tiny_cml_batch(n_users: int = 7, n_items: int = 9):
    (u1, i1), (u2, i2) = _graph(3), _graph(4)
    graph = BehaviorGraph([u1, u2], [i1, i2], n_users, n_items, norm="symmetric")
    rng = np.random.default_rng(0)
    triples = [Triples(torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy(rng.integers(0, n_items, len(u))))
               for u, i in ((u1, i1), (u2, i2))]
    return graph, Batch(triples, torch.arange(4), len(u2))


def test_lightgcn_encoder_shapes_and_layer_mean():
    graph, _ = _tiny_cml_batch()
    enc = LightGCNBehaviorEncoder(7, 9, dim=5, layers=2)
    e_u, e_i, e_uk = enc(graph)
    assert e_u.shape == (7, 5) and e_i.shape == (9, 5) and e_uk.shape == (2, 7, 5)
    # layer mean, by hand: H^1 = mean_k(A_k E_I), H^2 = mean_k(A_k H_I^1)
    m_u1, m_i1 = graph.to_users(enc.item_emb), graph.to_items(enc.user_emb)
    h_u1, h_i1 = m_u1.mean(0), m_i1.mean(0)
    m_u2 = graph.to_users(h_i1)
    torch.testing.assert_close(e_u, (enc.user_emb + h_u1 + m_u2.mean(0)) / 3)
    torch.testing.assert_close(e_uk, (enc.user_emb + m_u1 + m_u2) / 3)


def test_lightgcn_encoder_one_step_lowers_the_loss():
    torch.manual_seed(0)
    graph, batch = _tiny_cml_batch()
    model = CML(7, 9, 2, CMLOptions(dim=8, layers=2, beta=0.01, encoder="lightgcn"))
    opt = torch.optim.SGD(model.encoder.parameters(), lr=0.5)
    before, _ = model.objective(graph, batch, weighting="none")
    before.backward()
    opt.step()
    after, _ = model.objective(graph, batch, weighting="none")
    assert float(after.detach()) < float(before.detach())


def test_cml_trainer_with_lightgcn_encoder_learns(tiny_dir, tmp_path):
    data_dir, _ = tiny_dir
    cfg = resolve_config("default", None, {"encoder": "lightgcn", "epochs": "10", "lr": "0.01", "max_lr": "0.01",
                                           "batch": "512", "device": "cpu"})
    result = train("synthetic", cfg, data_dir=data_dir, runs_dir=tmp_path, name="cml-lightgcn")
    assert result["test"]["hr@10"] > 0.3, result["test"]  # chance is 0.1


# ----------------------------------------------------------------------------- the peers


def _cfg(model: str, **overrides) -> RunConfig:
    values = {"model": model, "dim": "8", "batch": "256", "epochs": "2", "device": "cpu", **overrides}
    return resolve_config("default", None, values)


@pytest.mark.parametrize("model", PEERS)
def test_peer_shapes_and_cascade_order(tiny_dir, model):
    _, ds = tiny_dir
    torch.manual_seed(0)
    tr = make_trainer(ds, _cfg(model), CPU)
    graphs = tr.model.graphs
    assert len(graphs) == len(ds.behaviors)
    for graph, behavior in zip(graphs, ds.behaviors):  # block k is behavior k, in the dataset's order
        pairs = np.unique(ds.train[behavior].user * ds.n_items + ds.train[behavior].item).size
        assert graph.n_edges == pairs
    outputs = tr.model()
    assert len(outputs) == (len(ds.behaviors) if model == "crgcn" else 1)
    for e_u, e_i in outputs:
        assert e_u.shape == (ds.n_users, 8) and e_i.shape == (ds.n_items, 8)
    reordered = ds.with_behaviors(["cart", "view"])  # the dataset's order wins: view, cart, buy
    assert [g.n_edges for g in make_trainer(reordered, _cfg(model), CPU).model.graphs] == [
        np.unique(reordered.train[b].user * ds.n_items + reordered.train[b].item).size for b in reordered.behaviors]


@pytest.mark.parametrize("model", PEERS)
def test_peer_one_gradient_step_lowers_the_loss(tiny_dir, model):
    _, ds = tiny_dir
    torch.manual_seed(0)
    tr = make_trainer(ds, _cfg(model, lr="0.05", pretrain_epochs="0"), CPU)
    rng = np.random.default_rng(0)
    rows = tr.batches(rng)[0]
    triples = [tuple(torch.from_numpy(a) for a in t) for t in tr.sampler.triples(rows, rng)]
    before, _ = tr.model.loss(triples)
    tr.opt.zero_grad()
    before.backward()
    tr.opt.step()
    after, _ = tr.model.loss(triples)
    assert float(after.detach()) < float(before.detach())


def test_mbcgcn_block_layers_must_match_the_behaviors(tiny_dir):
    from cml_cli.errors import InputError

    _, ds = tiny_dir
    with pytest.raises(InputError, match="block_layers"):
        make_trainer(ds, _cfg("mbcgcn", block_layers="1,2"), CPU)
    tr = make_trainer(ds, _cfg("mbcgcn", block_layers=",".join(["1"] * len(ds.behaviors))), CPU)
    assert tr.model.layers == [1] * len(ds.behaviors)


@pytest.fixture(scope="module")
def peer_runs(tiny_dir, tmp_path_factory):
    data_dir, _ = tiny_dir
    runs = tmp_path_factory.mktemp("runs")
    out = {}
    for model in [*PEERS, "popularity"]:
        out[model] = train("synthetic", _cfg(model, epochs="8", lr="0.01"), data_dir=data_dir, runs_dir=runs,
                           name=model)
    return data_dir, out


def test_peers_beat_popularity_on_synthetic_data(peer_runs):
    results = peer_runs[1]
    for model in PEERS:
        assert results[model]["test"]["hr@10"] > results["popularity"]["test"]["hr@10"] + 0.05, (model, results)


@pytest.mark.parametrize("model", PEERS)
def test_peer_same_seed_same_metrics(peer_runs, tmp_path, model):
    data_dir, results = peer_runs
    again = train("synthetic", _cfg(model, epochs="8", lr="0.01"), data_dir=data_dir, runs_dir=tmp_path, name="a")
    assert again["test"] == results[model]["test"] and again["valid"] == results[model]["valid"]


def test_ablate_runs_cml_and_the_peers(tiny_dir, tmp_path, run_cli):
    """Issue 10: `cml ablate --dataset synthetic --variants cml,mbcgcn,crgcn --set epochs=2 --json`."""
    import json

    data_dir, _ = tiny_dir
    proc = run_cli("ablate", "--dataset", "synthetic", "--data-dir", data_dir, "--runs-dir", tmp_path / "runs",
                   "--variants", "cml,mbcgcn,crgcn", "--set", "epochs=2", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    rows = {r["variant"]: r for r in table["rows"]}
    assert set(rows) == {"cml", "mbcgcn", "crgcn"} and rows["mbcgcn"]["kind"] == "peer"
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["crgcn"]["metrics"]["full:hr@10"]["mean"] is not None


def test_mbcgcn_pretraining_trains_the_first_block_on_the_first_behavior(tiny_dir):
    _, ds = tiny_dir
    torch.manual_seed(0)
    tr = make_trainer(ds, _cfg("mbcgcn", pretrain_epochs="1", batch="128"), CPU)
    rng = np.random.default_rng(0)
    first, target = ds.behaviors[0], ds.target
    batches = tr.batches(rng)
    assert sum(len(b) for b in batches) == len(ds.train[first])  # an epoch over the first behavior's pairs
    w_before = tr.model.w_user.detach().clone()
    emb_before = tr.model.user_emb.detach().clone()
    tr.train_batch(batches[0], rng)
    assert torch.equal(tr.model.w_user, w_before) and not torch.equal(tr.model.user_emb, emb_before)
    tr.end_epoch()
    assert sum(len(b) for b in tr.batches(rng)) == len(ds.train[target])  # then the target's pairs
    assert tr.state_dict()["epoch"] == 1
