"""``cml ablate``: variant registry, the resumable grid, executors, failing runs, tables."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from cml_cli.ablate import (
    Execution,
    GridOptions,
    build_config,
    builtin_variants,
    load_variants_file,
    parse_seeds,
    registry,
    run_grid,
    select_variants,
    usable_cores,
)
from cml_cli.errors import InputError
from cml_cli.layout import run_dir_name as dir_name
from cml_cli.report import grid_tables

# Small and fast: one epoch of a one-layer, 8-dimensional CML on the tiny synthetic dataset.
FAST = {"epochs": "1", "dim": "8", "layers": "1", "samp_num": "2", "meta_batch": "16"}
FAST_SET = [x for k, v in FAST.items() for x in ("--set", f"{k}={v}")]

DIVERGE = """
[variants.diverge]
description = "learning rate far too large: the loss becomes NaN in the first batch"
lr = 1e30
max_lr = 1e31
"""


def grid_run(dataset, variants, seeds, overrides, *, variants_file=None, **kwargs) -> dict:
    """``run_grid`` then the grid's tables (as ``cml ablate`` does): the result with ``"table"``."""
    result = run_grid(dataset, GridOptions(variants, seeds, overrides, variants_file), **kwargs)
    result["table"] = grid_tables(Path(result["grid_dir"]), result["variants"], result["seeds"]).to_dict()
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from cml_cli.data.preprocess import preprocess

    path = tmp_path_factory.mktemp("ablate") / "data"
    preprocess("synthetic", data_dir=path)
    return path


@pytest.fixture(scope="module")
def grid(data_dir) -> dict:
    """cml, w/o-clf and first-order (the same config as cml here) over seeds 0 and 1."""
    runs = data_dir.parent / "runs"
    result = grid_run("synthetic", ["cml", "w/o-clf", "first-order"], [0, 1], FAST, name="g", runs_dir=runs,
                      data_dir=data_dir)
    return {"result": result, "dir": runs / "g", "runs": runs}


# --------------------------------------------------------------------------- registry


def test_registry_has_every_variant_for_the_dataset_behaviors():
    reg = builtin_variants(["view", "cart", "buy"])
    assert list(reg)[:8] == ["cml", "w/o-clf", "w/o-mce", "first-order", "second-order", "adj-none",
                             "adj-symmetric", "no-hold-out"]
    for name in ("w/o-view", "w/o-cart", "target-only", "popularity", "itemknn-merged", "bpr-mf",
                 "lightgcn-target", "lightgcn-merged", "mbcgcn", "crgcn"):
        assert name in reg
    assert reg["cml-lightgcn"].overrides == {"encoder": "lightgcn"} and reg["cml-lightgcn"].kind == "ablation"
    assert reg["mbcgcn"].kind == "peer" and [v.name for v in select_variants(reg, ["peers"])] == \
        ["mbcgcn", "crgcn", "cascadingrank"]
    assert "w/o-buy" not in reg  # the target is never ablated
    assert reg["w/o-clf"].overrides == {"contrastive": False}
    assert reg["w/o-mce"].overrides == {"meta": False}
    assert reg["second-order"].overrides == {"meta_grad": "second-order"}
    assert reg["adj-none"].overrides == {"adj": "none"}
    assert reg["w/o-view"].overrides == {"behaviors": ["cart"]}
    assert reg["target-only"].overrides == {"behaviors": []}
    assert reg["lightgcn-merged"].overrides == {"model": "lightgcn-merged"}
    assert build_config("default", {}, reg["lightgcn-merged"], 0).lr == 5e-3  # the model's own settings
    assert reg["popularity"].overrides == {"model": "popularity"} and reg["bpr-mf"].kind == "baseline"
    # a dataset with the target behavior only has no behavior ablations
    assert not any(n.startswith("w/o-") and n not in ("w/o-clf", "w/o-mce") for n in builtin_variants(["buy"]))
    assert "target-only" not in builtin_variants(["buy"])
    default = select_variants(reg, None)  # no --variants: everything that applies
    assert [v.name for v in default] == list(reg)
    groups = select_variants(reg, ["cml", "baselines"])
    assert [v.name for v in groups] == ["cml", "popularity", "itemknn-merged", "bpr-mf", "lightgcn-target",
                                        "lightgcn-merged", "history", "blend", "mbcgcn", "crgcn", "cascadingrank"]
    assert [v.name for v in select_variants(reg, ["peers"])] == ["mbcgcn", "crgcn", "cascadingrank"]
    assert [v.name for v in select_variants(reg, ["sota"])] == ["cascadingrank", "history", "blend"]


def test_target_only_keeps_the_target(data_dir):
    from cml_cli.data.store import load_dataset

    ds = load_dataset("synthetic", data_dir)
    only = ds.with_behaviors([])
    assert only.behaviors == [ds.target] and list(only.train) == [ds.target]
    assert ds.with_behaviors(["view"]).behaviors == ["view", ds.target]


def test_dir_names_are_safe():
    assert dir_name("w/o-clf", 0) == "w-o-clf-s0"
    assert dir_name("cml", 2) == "cml-s2"
    assert dir_name("lr 1e-3/x", 1) == "lr-1e-3-x-s1"


def test_variants_file(tmp_path):
    f = tmp_path / "v.toml"
    f.write_text('[variants."w/o-dropout"]\nmeta_dropout = 0.0\ndescription = "no dropout"\n'
                 '[variants.big]\ndim = 64\nlayers = 2\n[variants.mf]\nmodel = "bpr-mf"\n')
    variants = load_variants_file(f)
    assert variants["w/o-dropout"].overrides == {"meta_dropout": 0.0}
    assert variants["w/o-dropout"].description == "no dropout"
    assert variants["big"].kind == "custom" and variants["mf"].kind == "baseline"
    reg = registry(["view", "buy"], f)
    assert "big" in reg and "cml" in reg
    chosen = select_variants(reg, ["cml", "big"])
    assert [v.name for v in chosen] == ["cml", "big"]

    f.write_text("[variants.bad]\nnot_an_option = 1\n")
    with pytest.raises(InputError, match="not_an_option"):
        load_variants_file(f)
    f.write_text("[variants.bad]\nseed = 1\n")
    with pytest.raises(InputError, match="--seeds"):
        load_variants_file(f)
    f.write_text("x = 1\n")
    with pytest.raises(InputError, match=r"\[variants.NAME\]"):
        load_variants_file(f)
    with pytest.raises(InputError, match="no such file"):
        load_variants_file(tmp_path / "missing.toml")


def test_bad_options_are_input_errors(data_dir, tmp_path):
    kw = {"runs_dir": tmp_path, "data_dir": data_dir}
    with pytest.raises(InputError, match="unknown variant 'nope'"):
        grid_run("synthetic", ["nope"], [0], FAST, **kw)
    with pytest.raises(InputError, match="--seeds"):
        parse_seeds("0,x")
    with pytest.raises(InputError, match="--executor"):
        grid_run("synthetic", ["cml"], [0], FAST, execution=Execution(executor="slurm"), **kw)
    with pytest.raises(InputError, match="--jobs"):
        grid_run("synthetic", ["cml"], [0], FAST, execution=Execution(jobs=0), **kw)
    with pytest.raises(InputError, match="unknown option 'bogus'"):
        grid_run("synthetic", ["cml"], [0], {"bogus": "1"}, **kw)
    with pytest.raises(InputError, match="adj"):
        grid_run("synthetic", ["cml"], [0], {"adj": "diagonal"}, **kw)
    with pytest.raises(InputError, match="not found"):
        grid_run("no-such-dataset", ["cml"], [0], FAST, **kw)
    assert not (tmp_path / "ablate-synthetic").exists() or not any((tmp_path / "ablate-synthetic").iterdir())


# --------------------------------------------------------------------------- the grid


def test_grid_writes_the_three_tables(grid):
    result, gdir = grid["result"], grid["dir"]
    assert result["failed"] == [] and result["executed"] == 4 and result["reused"] == 0
    for run in ("cml-s0", "cml-s1", "w-o-clf-s0", "w-o-clf-s1"):
        assert (gdir / run / "metrics.json").is_file() and (gdir / run / "config.toml").is_file()
        assert (gdir / f"{run}.log").read_text().count("finished in") == 1
    assert not (gdir / "first-order-s0").exists()  # same configuration as cml: runs shared

    csv = pd.read_csv(gdir / "table.csv")
    assert list(csv["variant"]) == ["cml", "w/o-clf", "first-order"]
    for col in ("hr@10 mean", "hr@10 std", "hr@10 change %", "hr@10 p", "ndcg@10 mean", "ndcg@10 p",
                "hr@1 mean", "ndcg@20 mean"):
        assert col in csv.columns
    table = json.loads((gdir / "table.json").read_text())
    assert table == result["table"]
    assert [r["variant"] for r in table["rows"]] == ["cml", "w/o-clf", "first-order"]
    assert table["metrics"][:2] == ["hr@10", "ndcg@10"] and table["seeds"] == [0, 1]
    cml, clf, first = table["rows"]
    assert cml["metrics"]["hr@10"]["change_pct"] is None and cml["n_ok"] == 2
    values = clf["metrics"]["hr@10"]["values"]
    assert set(values) == {"0", "1"}
    assert clf["metrics"]["hr@10"]["mean"] == pytest.approx(sum(values.values()) / 2)
    ref = cml["metrics"]["hr@10"]["mean"]
    assert clf["metrics"]["hr@10"]["change_pct"] == pytest.approx((clf["metrics"]["hr@10"]["mean"] - ref) / ref * 100)
    assert first["metrics"]["hr@10"]["mean"] == ref and "runs shared" in first["note"]
    md = (gdir / "table.md").read_text()
    assert "| cml |" in md and "| w/o-clf |" in md and "HR@10" in md and "± " in md
    assert json.loads((gdir / "grid.json").read_text())["variants"]["first-order"]["runs"] == {"0": "cml-s0",
                                                                                              "1": "cml-s1"}


def test_one_seed_has_no_p_value(grid, data_dir):
    result = grid_run("synthetic", ["cml", "w/o-clf"], [0], FAST, name="g", runs_dir=grid["runs"],
                      data_dir=data_dir)
    assert result["executed"] == 0
    clf = result["table"]["rows"][1]["metrics"]["hr@10"]
    assert clf["p_value"] is None and clf["std"] is None and clf["mean"] is not None


def test_second_identical_call_reuses_everything(grid, data_dir):
    gdir = grid["dir"]
    stamps = {p: p.stat().st_mtime_ns for p in gdir.glob("*/metrics.json")}
    started = time.perf_counter()
    again = grid_run("synthetic", ["cml", "w/o-clf", "first-order"], [0, 1], FAST, name="g", runs_dir=grid["runs"],
                     data_dir=data_dir)
    assert time.perf_counter() - started < 5
    assert again["executed"] == 0 and again["reused"] == 4
    assert {p: p.stat().st_mtime_ns for p in gdir.glob("*/metrics.json")} == stamps
    assert again["table"]["rows"] == grid["result"]["table"]["rows"]


def test_interrupted_run_is_resumed(grid, data_dir):
    gdir = grid["dir"]
    final = gdir / "w-o-clf-s1" / "metrics.json"
    before = json.loads(final.read_text())
    final.unlink()
    events = []
    result = grid_run("synthetic", ["cml", "w/o-clf"], [0, 1], FAST, name="g", runs_dir=grid["runs"],
                      data_dir=data_dir, on_event=lambda e, u, info: events.append((e, u.dir)))
    assert result["executed"] == 1 and result["reused"] == 3
    assert ("done", "w-o-clf-s1") in events
    assert "resume w-o-clf-s1" in (gdir / "w-o-clf-s1.log").read_text()
    assert json.loads(final.read_text())["test"] == before["test"]


def test_changed_settings_do_not_silently_reuse_runs(grid, data_dir):
    with pytest.raises(InputError, match=r"another configuration \(dim: 8 -> 12\)"):
        grid_run("synthetic", ["cml"], [0], {**FAST, "dim": "12"}, name="g", runs_dir=grid["runs"],
                 data_dir=data_dir)


def test_keys_a_model_never_reads_do_not_block_reuse(grid, data_dir):
    """A CML-only key (beta) changed: the baseline's run is reused, CML's is refused."""
    first = grid_run("synthetic", ["popularity"], [0], FAST, name="g", runs_dir=grid["runs"], data_dir=data_dir)
    again = grid_run("synthetic", ["popularity"], [0], {**FAST, "beta": "0.5"}, name="g", runs_dir=grid["runs"],
                     data_dir=data_dir)
    hr = [r["table"]["rows"][0]["metrics"]["hr@10"]["values"] for r in (first, again)]
    assert again["executed"] == 0 and hr[0] == hr[1]
    with pytest.raises(InputError, match=r"another configuration \(beta: "):
        grid_run("synthetic", ["cml"], [0], {**FAST, "beta": "0.5"}, name="g", runs_dir=grid["runs"],
                 data_dir=data_dir)


def test_failing_run_is_marked_and_others_complete(grid, data_dir, tmp_path):
    vf = tmp_path / "v.toml"
    vf.write_text(DIVERGE)
    result = grid_run("synthetic", ["cml", "diverge"], [0], FAST, name="g", runs_dir=grid["runs"],
                      data_dir=data_dir, variants_file=vf)
    assert [f["run"] for f in result["failed"]] == [str(grid["dir"] / "diverge-s0")]
    assert result["failed"][0]["log"].endswith("diverge-s0.log") and "nan" in result["failed"][0]["error"]
    rows = {r["variant"]: r for r in result["table"]["rows"]}
    assert rows["cml"]["status"] == "ok"
    assert rows["diverge"]["status"] == "failed" and rows["diverge"]["metrics"]["hr@10"]["mean"] is None
    assert "FAILED" in (grid["dir"] / "diverge-s0.log").read_text()
    csv = pd.read_csv(grid["dir"] / "table.csv")
    assert csv.set_index("variant").loc["diverge", "status"] == "failed"


def test_cli_runs_jobs_side_by_side_and_exits_1_naming_the_failed_run(grid, data_dir, tmp_path, run_cli):
    """``--jobs 2``: one subprocess per run (here a failing one beside a good one), each with its log."""
    vf = tmp_path / "v.toml"
    vf.write_text(DIVERGE)
    proc = run_cli("ablate", "--dataset", "synthetic", "--data-dir", data_dir, "--runs-dir", grid["runs"],
                   "--name", "g", "--variants", "cml,w/o-mce,diverge", "--seeds", "1", "--variants-file", vf,
                   "--jobs", "2", *FAST_SET, "--json")
    assert proc.returncode == 1, proc.stderr
    table = json.loads(proc.stdout)  # stdout holds table.json and nothing else
    assert [r["variant"] for r in table["rows"]] == ["cml", "w/o-mce", "diverge"]
    assert [r["status"] for r in table["rows"]] == ["ok", "ok", "failed"]
    assert table["rows"][1]["metrics"]["hr@10"]["change_pct"] is not None
    last = proc.stderr.strip().splitlines()[-1]
    assert "1 run(s) failed" in last and "diverge-s1" in last and "diverge-s1.log" in last
    for run in ("w-o-mce-s1", "diverge-s1"):
        log = (grid["dir"] / f"{run}.log").read_text()
        assert "new " + run in log and f"{max(1, usable_cores() // 2)} torch threads" in log  # cores / jobs
    assert "finished in" in (grid["dir"] / "w-o-mce-s1.log").read_text()
    assert "FAILED: RunError" in (grid["dir"] / "diverge-s1.log").read_text()

    proc = run_cli("ablate", "--dataset", "synthetic", "--data-dir", data_dir, "--variants", "nope")
    assert proc.returncode == 2 and "unknown variant 'nope'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ray_executor(grid, data_dir):
    ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install 'cml-cli[ray]')")
    assert not ray.is_initialized()
    result = grid_run("synthetic", ["cml", "adj-symmetric"], [0], FAST, execution=Execution(executor="ray"), name="g",
                      runs_dir=grid["runs"], data_dir=data_dir)
    assert result["failed"] == [] and result["executed"] == 1 and result["reused"] == 1
    assert (grid["dir"] / "adj-symmetric-s0" / "metrics.json").is_file()
    assert "finished in" in (grid["dir"] / "adj-symmetric-s0.log").read_text()
    assert not ray.is_initialized()  # the local cluster it started is shut down
