"""The strongest known methods in the runner: CascadingRank against a hand-written power
iteration, the history baseline on a hand-made example, blends, trained members, bad options,
and the three through ``cml ablate`` and ``cml tune``. Tiny data only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cml_cli.config import RunConfig
from cml_cli.data.preprocess import ReadOptions, preprocess
from cml_cli.errors import InputError
from cml_cli.evaluate import evaluate_full
from cml_cli.model.blend import normalise
from cml_cli.model.history import History
from cml_cli.model.peers.cascadingrank import CascadingRank
from cml_cli.model.scoring import RowScorer, behavior_matrix
from cml_cli.train.factory import make_trainer
from cml_cli.train.loop import train

CPU = torch.device("cpu")


def _cfg(model: str, **overrides) -> RunConfig:
    return RunConfig(model=model, device="cpu", **overrides).validate()


def _cml(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CML_DATA_DIR"}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([str(Path(sys.executable).with_name("cml")), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


# ----------------------------------------------------------------------------- CascadingRank


def _power_iteration(mats: list[np.ndarray], user: int, alpha: float, beta: float, tol: float, iters: int) -> np.ndarray:
    """The paper's iteration for one user, written out densely in float64."""
    n_users, n_items = mats[0].shape
    gamma = 1.0 - alpha - beta
    casc = None
    for a in mats:
        du, di = a.sum(1), a.sum(0)
        norm = a / np.sqrt(np.outer(np.where(du > 0, du, 1), np.where(di > 0, di, 1)))
        q_u = np.eye(n_users)[user]
        q_i = a[user] / max(du[user], 1)
        if casc is None:
            casc = (q_u, q_i)
        r_u, r_i = q_u, q_i
        for _ in range(iters):
            n_u = gamma * norm @ r_i + alpha * q_u + beta * casc[0]
            n_i = gamma * norm.T @ r_u + alpha * q_i + beta * casc[1]
            residual = np.abs(n_u - r_u).sum() + np.abs(n_i - r_i).sum()
            r_u, r_i = n_u, n_i
            if residual <= tol:
                break
        casc = (r_u, r_i)
    return casc[1]


def _random_behaviors(seed: int, n_users: int = 7, n_items: int = 9, k: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    mats = [(rng.random((n_users, n_items)) < p).astype(float) for p in np.linspace(0.5, 0.25, k)]
    mats[-1][0] = 0.0  # a user without target interactions
    mats[0][:, 3] = 0.0  # an item nobody viewed
    return mats


@pytest.mark.parametrize("alpha, beta, tol", [(0.0, 0.9, 1e-4), (0.3, 0.6, 1e-6), (0.7, 0.2, 1e-3), (0.5, 0.5, 1e-4),
                                              (0.0, 0.0, 1e-5)])
def test_cascadingrank_equals_the_power_iteration_written_out(alpha, beta, tol):
    mats = _random_behaviors(seed=int(alpha * 10 + beta * 100))
    model = CascadingRank([sp.csr_matrix(a) for a in mats], alpha, beta, tol, 100)
    users = np.arange(mats[0].shape[0])
    got = model.scores(users)
    want = np.stack([_power_iteration(mats, u, alpha, beta, tol, 100) for u in users])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a user's scores do not depend on which users share its block
    np.testing.assert_array_equal(model.scores(users[[5, 2]]), got[[5, 2]])


def test_cascadingrank_one_step_by_hand():
    """Two users, two items, one behavior: A = [[1, 1], [0, 1]]; one step from the queries."""
    a = np.array([[1.0, 1.0], [0.0, 1.0]])
    alpha, beta = 0.2, 0.5  # gamma = 0.3; the first behavior aligns to its own query
    got = CascadingRank([sp.csr_matrix(a)], alpha, beta, 1e-9, 1).scores(np.array([0]))
    # user 0: q_I = (1/2, 1/2), q_U = (1, 0); A~^T q_U = (1/sqrt(2*1), 1/sqrt(2*2)) = (0.7071, 0.5)
    expect = 0.3 * np.array([1 / np.sqrt(2), 0.5]) + (alpha + beta) * np.array([0.5, 0.5])
    np.testing.assert_allclose(got[0], expect, rtol=1e-6)


def test_cascadingrank_trainer_scores_both_protocols_alike(tiny):
    tr = make_trainer(tiny, _cfg("cascadingrank"), CPU)
    assert not tr.trainable and tr.batches(np.random.default_rng(0)) == []
    scorer = tr.scorer()
    users = torch.from_numpy(tiny.test.user[:30])
    items = torch.from_numpy(tiny.test.candidates()[:30])
    full = scorer.score_all(users)
    torch.testing.assert_close(scorer.score(users, items), full.gather(1, items))
    assert scorer is tr.scorer() and scorer.used == 30  # kept: the next pass reuses the rows
    rows = CascadingRank([behavior_matrix(tiny, b) for b in tiny.behaviors], 0.0, 0.9, 1e-4, 100).scores(users.numpy())
    np.testing.assert_array_equal(full.numpy(), rows)


@pytest.mark.parametrize("sets, message", [
    (["cr_alpha=0.5", "cr_beta=0.6"], "cr_alpha, cr_beta: need alpha + beta <= 1, got 0.5 + 0.6"),
    (["cr_alpha=-0.1"], "cr_alpha: must be in [0, 1], got -0.1"),
    (["cr_beta=1.5"], "cr_beta: must be in [0, 1], got 1.5"),
    (["cr_tol=0"], "cr_tol: must be in (0, inf)"),
    (["cr_iters=0"], "cr_iters: must be in [1, "),
    (["cr_alpha=nan"], "finite"),
])
def test_bad_cascadingrank_options_are_input_errors(sets, message):
    from cml_cli.config import parse_set, resolve_config

    with pytest.raises(InputError, match=re.escape(message)):
        resolve_config("default", None, parse_set(["model=cascadingrank", *sets]))


def test_bad_alpha_beta_exit_2_with_one_line(tiny_dir, tmp_path):
    proc = _cml("train", "--dataset", "synthetic", "--data-dir", tiny_dir[0], "--runs-dir", tmp_path / "runs",
                "--set", "model=cascadingrank", "--set", "cr_alpha=0.5", "--set", "cr_beta=0.6", cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "alpha + beta <= 1" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ----------------------------------------------------------------------------- history


def test_history_orders_nearest_behavior_first_then_popularity():
    # items 0..5; user 0 viewed 1, 2, 4 and carted 2, 5; popularity 5 > 3 > 0 > 2 = 4 > 1
    view = sp.csr_matrix(np.array([[0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=float))
    cart = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=float))
    popularity = np.array([3.0, 0.0, 1.0, 4.0, 1.0, 9.0])
    scores = History([view, cart], popularity, 2).scores(np.array([0, 1]))
    order = np.argsort(-scores, axis=1, kind="stable")
    # carted and viewed (2), carted only (5), viewed only by popularity (4, then 1), then the rest by popularity
    assert order[0].tolist() == [2, 5, 4, 1, 3, 0]
    assert order[1].tolist() == [0, 5, 3, 2, 4, 1]  # 2 and 4 are equally popular: a tie, kept in id order


def test_history_popularity_option(tiny):
    target = make_trainer(tiny, _cfg("history"), CPU).model
    merged = make_trainer(tiny, _cfg("history", history_popularity="all"), CPU).model
    counts = np.bincount(tiny.train[tiny.target].item, minlength=tiny.n_items)
    assert np.array_equal(np.argsort(target.base, kind="stable"), np.argsort(counts, kind="stable"))
    assert not np.array_equal(target.base, merged.base)
    with pytest.raises(InputError, match="history_popularity"):
        _cfg("history", history_popularity="views")


# ----------------------------------------------------------------------------- blend


def test_normalisations():
    rows = np.array([[3.0, 1.0, 1.0, 7.0], [2.0, 2.0, 2.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(normalise(rows, "rank"), [[2 / 3, 1 / 6, 1 / 6, 1.0], [0.5, 0.5, 0.5, 0.5]])
    z = normalise(rows, "zscore")
    np.testing.assert_allclose(z[0].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(z[0].std(), 1, atol=1e-6)
    assert np.array_equal(z[1], np.zeros(4))


@pytest.mark.parametrize("norm", ["rank", "zscore"])
def test_blend_weights_one_zero_rank_like_the_first_model(tiny, norm):
    cfg = _cfg("blend", blend_models=["cascadingrank", "history"], blend_weights=[1.0, 0.0], blend_norm=norm)
    blend = make_trainer(tiny, cfg, CPU).scorer()
    alone = make_trainer(tiny, _cfg("cascadingrank"), CPU).scorer()
    users = torch.from_numpy(tiny.test.user)
    ours, theirs = blend.score_all(users), alone.score_all(users)
    if norm == "rank":  # ranks keep every order and every tie exactly
        assert torch.equal(ours.argsort(dim=1, descending=True, stable=True),
                           theirs.argsort(dim=1, descending=True, stable=True))
        assert evaluate_full(blend, tiny, "test", [5, 10]) == evaluate_full(alone, tiny, "test", [5, 10])
    else:  # z-scores in float32 may merge scores a few ulps apart into ties
        assert evaluate_full(blend, tiny, "test", [5, 10]) == pytest.approx(evaluate_full(alone, tiny, "test", [5, 10]),
                                                                            abs=0.01)


def test_blend_is_one_function_under_both_protocols(tiny):
    scorer = make_trainer(tiny, _cfg("blend", blend_models=["history", "itemknn-merged", "popularity"],
                                     blend_weights=[1.0, 0.5, 0.25]), CPU).scorer()
    users = torch.from_numpy(tiny.valid.user[:40])
    items = torch.from_numpy(tiny.valid.candidates()[:40])
    torch.testing.assert_close(scorer.score(users, items), scorer.score_all(users).gather(1, items))


@pytest.mark.parametrize("overrides, message", [
    ({"blend_weights": [1.0]}, "one weight per member"),
    ({"blend_weights": [1.0, -1.0]}, "weights >= 0"),
    ({"blend_weights": [0.0, 0.0]}, "at least one positive"),
    ({"blend_models": ["history", "nope"]}, "'nope' is not a model to blend"),
    ({"blend_models": ["history", "blend"]}, "'blend' is not a model to blend"),
    ({"blend_norm": "minmax"}, "blend_norm"),
])
def test_bad_blend_options_are_input_errors(overrides, message):
    with pytest.raises(InputError, match=re.escape(message)):
        _cfg("blend", **overrides)


def test_blend_of_a_trained_member_refuses_trained_names_and_other_data(tiny_dir, tmp_path):
    data_dir, ds = tiny_dir
    with pytest.raises(InputError, match="is trained, not fitted"):
        make_trainer(ds, _cfg("blend", blend_models=["history", "bpr-mf"]), CPU)
    member = dict(model="bpr-mf", epochs=1, dim=8, batch=256, device="cpu")
    train("synthetic", RunConfig(**member).validate(), data_dir=data_dir, runs_dir=tmp_path, name="mf")
    cfg = _cfg("blend", blend_models=["history"], blend_runs=[str(tmp_path / "mf")], blend_weights=[1.0, 1.0])
    result = train("synthetic", cfg, data_dir=data_dir, runs_dir=tmp_path, name="blend")
    assert result["test"]["full"]["hr@10"] >= 0 and result["valid"]["hr@10"] > 0
    with pytest.raises(InputError, match="no such run directory"):
        make_trainer(ds, _cfg("blend", blend_runs=[str(tmp_path / "none")], blend_weights=[1.0, 1.0, 1.0]), CPU)
    other_dir = tmp_path / "other"
    preprocess("synthetic", None, ReadOptions(size="tiny"), seed=1, data_dir=other_dir)
    train("synthetic", RunConfig(**member).validate(), data_dir=other_dir, runs_dir=tmp_path, name="mf-other")
    with pytest.raises(InputError, match="whose data differ"):
        make_trainer(ds, _cfg("blend", blend_runs=[str(tmp_path / "mf-other")], blend_weights=[1.0, 1.0, 1.0]), CPU)


# ----------------------------------------------------------------------------- the runner


def test_row_scorer_keeps_rows_up_to_its_budget():
    calls = []

    def compute(users: np.ndarray) -> np.ndarray:
        calls.append(users.copy())
        return np.repeat(users[:, None].astype(np.float32), 5, axis=1) + np.arange(5, dtype=np.float32)

    scorer = RowScorer(compute, n_users=10, n_items=5, block=3, cache_bytes=4 * 5 * 4)  # room for 4 rows
    users = np.array([7, 1, 7, 4, 9, 2])
    np.testing.assert_array_equal(scorer.rows(users), compute(users))
    assert [c.tolist() for c in calls[:2]] == [[1, 2, 4], [7, 9]] and scorer.used == 4
    calls.clear()
    np.testing.assert_array_equal(scorer.rows(np.array([2, 9, 1, 3])), compute(np.array([2, 9, 1, 3])))
    assert [c.tolist() for c in calls[:1]] == [[3, 9]]  # 1, 2 came from the cache; 9 did not fit in it


def test_the_three_through_cml_ablate(tiny_dir, tmp_path):
    from cml_cli.ablate import GridOptions, registry, run_grid, select_variants

    assert [v.name for v in select_variants(registry(["view", "cart", "buy"]), ["sota"])] == \
        ["cascadingrank", "history", "blend"]
    data_dir, ds = tiny_dir
    result = run_grid("synthetic", GridOptions(["sota"], [0], {}), name="g", runs_dir=tmp_path, data_dir=data_dir)
    from cml_cli.report import grid_tables

    table = grid_tables(Path(result["grid_dir"]), result["variants"], result["seeds"])
    rows = {r.variant: r for r in table.rows}
    assert set(rows) == {"cascadingrank", "history", "blend"} and not result["failed"]
    for row in rows.values():  # the beyond-accuracy columns come with the full-ranking pass
        assert row.cell("full:coverage@10").mean > 10 / ds.n_items  # more than one list for everyone
        assert 0 < row.cell("full:personalization@10").mean <= 1 and row.cell("full:arp@10").mean > 0
        assert 0 < row.cell("hr@10").mean <= 1


def test_tune_prunes_alpha_beta_draws_over_one(tiny_dir, tmp_path):
    pytest.importorskip("optuna")
    from cml_cli.tune import TuneOptions, run_tune

    result = run_tune("synthetic", "cascadingrank", TuneOptions(trials=6), name="t", runs_dir=tmp_path, data_dir=tiny_dir[0])
    assert result["trials"] == 6 and result["best_params"]["cr_alpha"] + result["best_params"]["cr_beta"] <= 1 + 1e-9
    ran = [d for d in (tmp_path / "t").iterdir() if d.name.startswith("trial-")]
    assert len(ran) == 6 - result["pruned"]
