"""The collapse check (cml_cli.collapse): the rule on hand-made metrics, and at the end of real
runs on the tiny synthetic dataset: the paper's encoder after three epochs collapses (its top-10
lists overlap, and it ranks below popularity), item-kNN does not."""

from __future__ import annotations

import json

import pytest

from cml_cli.collapse import (
    COVERAGE_FLOOR,
    collapse_reasons,
    collapse_record,
    coverage_floor,
    table_note,
    warning_line,
)
from cml_cli.config import compose

GOOD = {"hr@10": 0.06, "personalization@10": 0.9, "coverage@10": 0.4}


def test_a_good_run_breaks_no_rule():
    assert collapse_reasons(GOOD, popularity_hr=0.03) == []
    record = collapse_record(GOOD, 0.03)
    assert record["collapsed"] is False and record["popularity_full_hr@10"] == 0.03
    assert warning_line({"collapse": record}) is None


def test_the_warning_says_what_kind_of_collapse():
    below = warning_line({"dataset": "d", "collapse": collapse_record({**GOOD, "hr@10": 0.02}, 0.03)})
    alike = warning_line({"dataset": "d", "model": "bpr-mf",
                          "collapse": collapse_record({**GOOD, "personalization@10": 0.1}, 0.03)})
    assert "ranks below popularity" in below and below.endswith("try `cml tune --dataset d`")
    assert "nearly the same items for every user" in alike and alike.endswith("`cml tune --dataset d --model bpr-mf`")


@pytest.mark.parametrize("change, rule", [
    ({"hr@10": 0.02}, "full HR@10 0.0200 < popularity's 0.0300"),
    ({"personalization@10": 0.2}, "personalization@10 0.200 < 0.5"),
    ({"coverage@10": 0.005}, "coverage@10 0.0050 < 0.01"),
])
def test_each_rule_alone_flags_the_run(change, rule):
    assert collapse_reasons({**GOOD, **change}, popularity_hr=0.03) == [rule]


def test_the_issue_example_breaks_two_rules():
    """issue 21: CML at the default preset on an unseen log (full HR@10 0.027 vs popularity's
    0.033, coverage@10 0.013, personalization@10 0.20)."""
    reasons = collapse_reasons({"hr@10": 0.027, "personalization@10": 0.20, "coverage@10": 0.013}, 0.033)
    assert len(reasons) == 2 and reasons[0].startswith("full HR@10") and reasons[1].startswith("personalization")


def test_equal_to_popularity_is_not_below_it():
    assert collapse_reasons({**GOOD, "hr@10": 0.03}, popularity_hr=0.03) == []


def test_coverage_floor_scales_with_the_slots_the_test_users_fill():
    assert coverage_floor(10_000, 5_000) == COVERAGE_FLOOR
    assert coverage_floor(50, 10_000) == pytest.approx(COVERAGE_FLOOR * 500 / 10_000)
    assert collapse_reasons({**GOOD, "coverage@10": 0.0006}, 0.03, coverage_floor(50, 10_000)) == []


def test_table_note_lists_the_collapsed_runs_only():
    runs = [{"variant": "cml", "seed": 0, "collapse": "personalization@10 0.200 < 0.5"},
            {"variant": "itemknn-merged", "seed": 0, "collapse": ""}, {"variant": "popularity", "seed": 0}]
    [note] = table_note(runs)
    assert "cml seed 0 (personalization@10 0.200 < 0.5)" in note and "itemknn" not in note
    assert table_note(runs[1:]) == []


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A grid directory of two runs on tiny synthetic data: ``cml-s0`` (the paper's encoder,
    three epochs: collapsed) and ``itemknn-merged-s0``; the stderr of each."""
    from cml_cli.data.preprocess import ReadOptions, preprocess

    data = tmp_path_factory.mktemp("data")
    preprocess("synthetic", None, ReadOptions(size="tiny"), data_dir=data)
    grid = tmp_path_factory.mktemp("grid")
    overrides = {"cml": {"encoder": "cml", "dim": 8, "epochs": 3, "device": "cpu"},
                 "itemknn-merged": {"model": "itemknn-merged", "device": "cpu"}}
    return grid, data, {name: compose("default", [o]).validate() for name, o in overrides.items()}


def _train(grid, name, capfd, **kwargs):
    from cml_cli.train.loop import train

    path, data, configs = grid
    result = train("synthetic", configs[name], data_dir=data, runs_dir=path, name=f"{name}-s0", force=True, **kwargs)
    return result, capfd.readouterr().err


def test_collapsed_run_warns_once_and_records_it(grid, capfd):
    result, err = _train(grid, "cml", capfd)
    record = json.loads((grid[0] / "cml-s0" / "metrics.json").read_text())["collapse"]
    assert record == result["collapse"] and record["collapsed"] is True
    assert record["popularity_full_hr@10"] > result["test"]["full"]["hr@10"]
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "cml tune --dataset synthetic`" in lines[0]
    assert f"{result['test']['full']['hr@10']:.4f}" in lines[0]


def test_good_run_is_not_flagged(grid, capfd):
    result, err = _train(grid, "itemknn-merged", capfd)
    assert result["collapse"]["collapsed"] is False and result["collapse"]["reasons"] == []
    assert "warning:" not in err


def test_no_check_for_popularity_or_a_tuning_trial(grid, capfd):
    from cml_cli.train.loop import Watch, train

    path, data, configs = grid
    pop = train("synthetic", compose("default", [{"model": "popularity"}]).validate(), data_dir=data,
                runs_dir=path.parent, name="popularity-check", force=True)
    trial = train("synthetic", configs["cml"], data_dir=data, runs_dir=path.parent, name="trial-check", force=True,
                  watch=Watch(evaluate_test=False))
    assert "collapse" not in pop and "collapse" not in trial
    assert "warning:" not in capfd.readouterr().err


def test_table_notes_the_collapsed_run(grid, capfd):
    from cml_cli.report import table_listing
    from cml_cli.report.tables import summarize_grid, table_markdown

    for name in ("cml", "itemknn-merged"):
        if not (grid[0] / f"{name}-s0" / "metrics.json").is_file():
            _train(grid, name, capfd)
    table = summarize_grid(grid[0])
    text = table_markdown(table)
    assert "*Note:* collapsed" in text and "cml seed 0 (full HR@10" in text and "itemknn-merged seed" not in text
    assert any(n.startswith("collapsed") for n in table_listing(table).notes)
