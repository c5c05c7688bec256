"""The fast training path: sparse products, the merged LightGCN encoder, the shared forward pass,
``meta_every`` and ``edges_per_pair`` (each against the exact path it replaces)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cml_cli.config import RunConfig
from cml_cli.model import propagation
from cml_cli.model.propagation import BehaviorGraph, SparseMatrix
from cml_cli.train.cml_trainer import CMLTrainer

CPU = torch.device("cpu")


def _random_matrix(seed: int = 0, shape: tuple[int, int] = (7, 5), nnz: int = 15):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, shape[0], nnz), rng.integers(0, shape[1], nnz)  # duplicates sum
    values = rng.random(nnz).astype(np.float32)
    dense = torch.zeros(shape, dtype=torch.float64)
    dense.index_put_((torch.from_numpy(rows), torch.from_numpy(cols)), torch.from_numpy(values).double(),
                     accumulate=True)
    return SparseMatrix(rows, cols, values, shape), dense


def test_sparse_matrix_products_and_gradients_equal_dense():
    matrix, dense = _random_matrix()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = matrix @ x
    torch.testing.assert_close(out, dense @ x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(matrix.T @ out.detach(), dense.T @ out.detach(), rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
    torch.testing.assert_close(grad, 2 * dense.T @ (dense @ x), rtol=1e-6, atol=1e-6)
    (second,) = torch.autograd.grad(grad.sum(), x)  # the double backward a second-order meta step takes
    torch.testing.assert_close(second, 2 * (dense.T @ dense).sum(1, keepdim=True).expand(5, 3), rtol=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda t: matrix @ t, (x.detach().requires_grad_(),))


def test_torch_csr_path_equals_dense():
    """The path CUDA takes (torch CSR tensors), run here on the CPU."""
    matrix, dense = _random_matrix(2)
    x = torch.randn(5, 4)
    torch.testing.assert_close(matrix.torch_mm(x).double(), dense @ x.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(matrix.T.torch_mm(torch.ones(7, 2)).double(), dense.T @ torch.ones(7, 2).double())


def test_parallel_products_equal_one_thread(monkeypatch):
    matrix, _ = _random_matrix(1, shape=(300, 200), nnz=4000)
    x = torch.randn(200, 8)
    monkeypatch.setattr(propagation, "PARALLEL_NNZ", 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = matrix.mm(x)
        torch.set_num_threads(3)
        three = matrix.mm(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


def test_merged_and_stacked_are_the_mean_and_the_stack_of_the_blocks():
    users = [np.array([0, 0, 1, 2]), np.array([0, 2, 2])]
    items = [np.array([0, 1, 1, 3]), np.array([1, 2, 3])]
    graph = BehaviorGraph(users, items, 3, 4, norm="symmetric")
    x = torch.randn(4, 2)
    per_block = graph.to_users(x)  # [K, |U|, d]
    torch.testing.assert_close(graph.merged_to_users(x), per_block.mean(0))
    torch.testing.assert_close(graph.stacked_to_users(x), per_block)
    y = torch.randn(3, 2)
    torch.testing.assert_close(graph.merged_to_items(y), graph.to_items(y).mean(0))
    rows, cols = torch.tensor([0, 3 + 2]), torch.tensor([0, 4 + 3])  # (0, 0) of block 0, (2, 3) of block 1
    held = graph.without(rows, cols)
    torch.testing.assert_close(held.merged_to_users(x), held.to_users(x).mean(0))
    torch.testing.assert_close(held.merged_to_items(y), held.to_items(y).mean(0))
    torch.testing.assert_close(held.stacked_to_users(x), held.to_users(x))


def _trainer(ds, **overrides) -> CMLTrainer:
    values = dict(device="cpu", dim=8, layers=2, batch=64, meta_batch=16, samp_num=3, encoder="lightgcn")
    values.update(overrides)
    torch.manual_seed(0)
    return CMLTrainer(ds, RunConfig(**values).validate(), CPU)


def _state(tr: CMLTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in tr.model.parameters()]


@pytest.mark.parametrize("meta_grad", ["first-order", "second-order"])
def test_shared_forward_equals_one_forward_per_step(tiny, meta_grad):
    """train_batch encodes once for the virtual and the real step; encoding in each step anew
    (the steps' own default) gives the same parameters."""
    shared, separate = _trainer(tiny, meta_grad=meta_grad), _trainer(tiny, meta_grad=meta_grad)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    rows_a, rows_b = shared.batches(rng_a)[0], separate.batches(rng_b)[0]
    torch.manual_seed(1)
    shared.train_batch(rows_a, rng_a)
    torch.manual_seed(1)
    batch = separate.sampler.batch(rows_b, rng_b)
    meta_batch, _ = separate.sampler.meta_batch(0, rng_b)
    (separate._second_order if meta_grad == "second-order" else separate._first_order)(batch, meta_batch)
    separate._real_step(batch)
    for a, b in zip(_state(shared), _state(separate)):
        torch.testing.assert_close(a, b)


def test_meta_every_runs_the_meta_steps_on_every_kth_batch(tiny):
    tr = _trainer(tiny, meta_every=3)
    calls: list[int] = []
    first_order = tr._first_order
    tr._first_order = lambda *args: (calls.append(tr.step - 1), first_order(*args))[1]
    rng = np.random.default_rng(0)
    batches = tr.batches(rng) + tr.batches(rng)  # across an epoch boundary: the count runs on
    for rows in batches[:7]:
        tr.train_batch(rows, rng)
    assert calls == [0, 3, 6]
    resumed = _trainer(tiny, meta_every=3)
    resumed.load_state_dict(tr.state_dict())
    assert resumed.step == 7
    assert _trainer(tiny, meta=False).cfg.meta_every == 1


def test_meta_every_must_be_positive():
    from cml_cli.errors import InputError

    with pytest.raises(InputError, match="meta_every"):
        RunConfig(meta_every=0).validate()


def test_batching_bounds_the_graph_work_per_pair():
    assert RunConfig(batch=100).batching(10_000) == (100, 1.0)
    assert RunConfig(batch=100, edges_per_pair=200).batching(10_000) == (100, 1.0)  # 100 edges per pair: within
    size, factor = RunConfig(batch=100, edges_per_pair=40).batching(10_000)
    assert size == 250 and factor == pytest.approx(math.sqrt(2.5))


def test_edges_per_pair_grows_the_batch_and_the_learning_rate(tiny):
    edges = sum(len(tiny.train[b]) for b in tiny.behaviors)
    n_target = len(tiny.train[tiny.target])
    tr = _trainer(tiny, batch=64, edges_per_pair=8, lr=1e-3, max_lr=4e-3)
    grown = -(-edges // 8)
    assert grown > 64 and tr.sampler.batch_size == grown
    assert len(tr.batches(np.random.default_rng(0))) == -(-n_target // grown)
    factor = math.sqrt(grown / 64)
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * factor)
    assert tr.sched.max_lrs[0] == pytest.approx(4e-3 * factor)


def test_lightgcn_encoder_layers_add_up_to_its_output():
    from cml_cli.model.encoder import LightGCNBehaviorEncoder

    users = [np.array([0, 0, 1, 2]), np.array([0, 2, 2])]
    items = [np.array([0, 1, 1, 3]), np.array([1, 2, 3])]
    graph = BehaviorGraph(users, items, 3, 4, norm="symmetric")
    torch.manual_seed(0)
    enc = LightGCNBehaviorEncoder(3, 4, dim=5, layers=3)
    agg_u, agg_i, spec_u = enc.layer_outputs(graph)
    e_u, e_i, e_uk = enc(graph)
    torch.testing.assert_close(e_u, torch.stack(agg_u).mean(0))
    torch.testing.assert_close(e_i, torch.stack(agg_i).mean(0))
    torch.testing.assert_close(e_uk, torch.stack(spec_u).mean(0))


def test_stacked_rows_of_some_users_equal_the_full_product():
    users = [np.array([0, 0, 1, 2, 3]), np.array([0, 2, 2, 3])]
    items = [np.array([0, 1, 1, 3, 2]), np.array([1, 2, 3, 0])]
    graph = BehaviorGraph(users, items, 4, 4, norm="symmetric")
    x = torch.randn(4, 3, requires_grad=True)
    some = torch.tensor([0, 2, 3])
    torch.testing.assert_close(graph.stacked_to_users(x, some), graph.stacked_to_users(x)[:, some])
    held = graph.without(torch.tensor([0, 4 + 2]), torch.tensor([0, 4 + 3]))  # (0, 0) of block 0, (2, 3) of block 1
    torch.testing.assert_close(held.stacked_to_users(x, some), held.stacked_to_users(x)[:, some])
    (grad,) = torch.autograd.grad(held.stacked_to_users(x, some).sum(), x)
    (want,) = torch.autograd.grad(held.stacked_to_users(x)[:, some].sum(), x)
    torch.testing.assert_close(grad, want)


def test_contrastive_groups_split_the_users_and_keep_small_sets_whole():
    """InfoNCE within groups of at most ssl_group users: one group when the batch has fewer
    contrastive users (the paper's objective), the same losses per group otherwise."""
    from cml_cli.model.cml import CML, Batch, CMLOptions, Triples
    from cml_cli.model.losses import info_nce

    users = [np.array([0, 0, 1, 2, 3, 4, 5]), np.array([0, 1, 2, 3, 4, 5])]
    items = [np.array([0, 1, 1, 3, 2, 0, 1]), np.array([1, 2, 3, 0, 1, 2])]
    graph = BehaviorGraph(users, items, 6, 4, norm="symmetric")
    triples = [Triples(torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy((i + 1) % 4))
               for u, i in zip(users, items)]
    batch = Batch(triples, torch.tensor([5, 0, 3, 1, 4, 2]), 6)
    torch.manual_seed(0)
    whole = CML(6, 4, 2, CMLOptions(dim=4, layers=1, beta=1.0, ssl_group=6, encoder="lightgcn"))
    split = CML(6, 4, 2, CMLOptions(dim=4, layers=1, beta=1.0, ssl_group=3, encoder="lightgcn"))
    split.load_state_dict(whole.state_dict())
    emb = whole.encode(graph, batch=batch)
    _, parts_whole = whole.loss(emb, batch, weighting="none")
    _, parts_split = split.loss(emb, batch, weighting="none")
    spec = emb[2][:, torch.searchsorted(batch.users(), batch.ssl_users)]
    spec = spec.detach()
    want_whole = info_nce(spec[-1].expand_as(spec), spec, tau=4.0).sum() / 2
    want_split = sum(info_nce(g[-1].expand_as(g), g, tau=4.0).sum() for g in (spec[:, :3], spec[:, 3:])) / 2
    assert parts_whole["cl"] == pytest.approx(float(want_whole), rel=1e-5)
    assert parts_split["cl"] == pytest.approx(float(want_split), rel=1e-5)
    assert parts_split["cl"] != pytest.approx(parts_whole["cl"])
