"""``cml report``: tables rebuilt from run directories, figures (PNG, SVG) and report.md."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from cml_cli.ablate import GridOptions, run_grid
from cml_cli.errors import InputError
from cml_cli.report import build_report, findings, grid_tables, load_grid, summarize_grid

FAST = {"epochs": "2", "dim": "8", "layers": "1", "samp_num": "2", "meta_batch": "16"}
FIGURES = ("bars", "cutoffs", "valid_hr10")


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory) -> Path:
    """cml and w/o-clf over seeds 0 and 1, two epochs each (so that curves have two points)."""
    from cml_cli.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("report")
    preprocess("synthetic", data_dir=root / "data")
    result = run_grid("synthetic", GridOptions(["cml", "w/o-clf", "adj-none"], [0, 1], FAST), name="rep",
                      runs_dir=root / "runs", data_dir=root / "data")
    assert result["failed"] == []
    grid_tables(Path(result["grid_dir"]))
    return Path(result["grid_dir"])


def test_tables_are_rebuilt_from_the_run_directories(grid_dir):
    table = summarize_grid(grid_dir).to_dict()
    assert table == json.loads((grid_dir / "table.json").read_text())
    assert [r["variant"] for r in table["rows"]] == ["cml", "w/o-clf", "adj-none"]
    assert table["evaluation"].startswith("sampled ranking: 1 held-out item + 99")
    assert table["protocol"] == "strict"
    assert len(table["runs"]) == 6 and {r["status"] for r in table["runs"]} == {"ok"}
    lines = findings(summarize_grid(grid_dir))
    assert lines[0].startswith("HR@10: full CML") and lines[1].startswith("NDCG@10: full CML")
    assert lines[2].startswith("full HR@10: full CML")
    for metric in ("full:hr@10", "full:coverage@10", "full:personalization@10", "full:arp@10"):
        assert table["rows"][0]["metrics"][metric]["mean"] is not None, metric


def test_report_writes_figures_tables_and_markdown(grid_dir, tmp_path):
    out = tmp_path / "out"
    result = build_report(grid_dir, out)
    for stem in FIGURES:
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert "<svg" in svg.read_text()[:1000]
    for name in ("table.csv", "table.md", "table.json"):
        assert (out / name).is_file()
    md = (out / "report.md").read_text()
    for stem in FIGURES:
        assert f"]({stem}.png)" in md and f"({stem}.svg)" in md
    assert "| cml |" in md and "## Runs" in md and "Git revision" in md and "synthetic" in md
    assert "same config as cml" in md  # adj-none is cml's default
    assert str(out / "report.md") in result["files"]


def test_report_cli(grid_dir, run_cli, tmp_path):
    proc = run_cli("report", grid_dir, "--out", tmp_path / "r", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert Path(out["out"]) == tmp_path / "r" and out["table"]["rows"][0]["variant"] == "cml"
    assert (tmp_path / "r" / "bars.png").is_file() and (tmp_path / "r" / "report.md").is_file()
    proc = run_cli("report", tmp_path / "nowhere")
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_report_without_matplotlib_says_what_to_install(grid_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(InputError, match=r"pip install 'cml-cli\[plot\]'"):
        build_report(grid_dir, tmp_path / "x")
    result = build_report(grid_dir, tmp_path / "y", plots=False)  # tables still work
    assert (tmp_path / "y" / "table.md").is_file() and (tmp_path / "y" / "report.md").is_file()
    assert not list((tmp_path / "y").glob("*.png")) and result["table"].rows


def test_report_of_run_directories_without_grid_json(grid_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(grid_dir, copy, ignore=shutil.ignore_patterns("*.ckpt", "report"))
    (copy / "grid.json").unlink()
    grid = load_grid(copy)
    assert set(grid["variants"]) == {"cml", "w-o-clf"} and grid["dataset"] == "synthetic"
    assert grid["variants"]["cml"]["kind"] == "cml" and grid["variants"]["w-o-clf"]["kind"] == "ablation"
    table = summarize_grid(copy)
    assert table.rows[0].variant == "cml" and table.rows[1].cell("hr@10").change_pct is not None
    with pytest.raises(InputError, match="no run directories"):
        load_grid(tmp_path)


def test_titles_are_clean_and_blank_p_values_are_explained(grid_dir, tmp_path):
    result = build_report(grid_dir, tmp_path / "one", plots=False, seeds=[0])
    table = result["table"]
    assert "full:/" not in table.evaluation and table.evaluation.endswith(
        "full ranking over all items for the full HR, Coverage, Personalization and ARP columns")
    assert table.sampled("validation").endswith("99 sampled negatives per validation user")
    assert table.blank_p() and table.blank_p()[0].startswith("p is blank: one seed per variant")
    md = (tmp_path / "one" / "report.md").read_text()
    assert "*Note:* p is blank: one seed per variant" in md
    assert not summarize_grid(grid_dir).blank_p()  # two seeds: every p-value is there
