"""``build_report``: tables, figures and ``report.md`` of an ablation directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cml_cli.data.store import check_writable_dir, write_text_atomic
from cml_cli.errors import InputError, did_you_mean
from cml_cli.report.figures import metric_history, plot_bars, plot_cutoffs, plot_validation, pyplot
from cml_cli.report.tables import (
    Table,
    findings,
    load_grid,
    read_run_manifest,
    runs_markdown,
    summarize_grid,
    table_markdown,
    write_tables,
)
from cml_cli.train.rundir import RunDir


def _revisions(grid_dir: Path, table: Table) -> tuple[list[str], list[str]]:
    revs, machines = set(), set()
    for r in table.runs:
        m = read_run_manifest(RunDir(Path(grid_dir) / r["run"]))
        if m:
            revs.add(m.get("git_revision", "unknown"))
            mach = m.get("machine") or {}
            machines.add(f"{mach.get('host')} ({mach.get('cpus')} CPUs, {mach.get('platform')}, "
                         f"torch {mach.get('torch')}, device {m.get('device')})")
    return sorted(revs), sorted(machines)


def _header(grid_dir: Path, table: Table) -> list[str]:
    """The opening lines of ``report.md``: what was run, where, how, and the test table."""
    revs, machines = _revisions(grid_dir, table)
    return [f"# Ablation report: `{table.name}` on {table.dataset}", "",
            f"- Runs: `{grid_dir}` ({len(table.runs)} runs, seeds {', '.join(map(str, table.seeds))})",
            f"- Evaluation: {table.evaluation}; protocol `{table.protocol}`",
            f"- Statistics: {table.statistics}",
            f"- Git revision(s) of the runs: {', '.join(f'`{r}`' for r in revs) or 'unknown'}",
            f"- Machine(s): {'; '.join(machines) or 'unknown'}",
            f"- Generated: {time.strftime('%Y-%m-%d %H:%M:%S %z')}", "",
            "## Test metrics", "", table_markdown(table), *[f"- {s}" for s in findings(table)], ""]


def build_report(runs: Path, out: Path | None = None, *, plots: bool = True, variants: list[str] | None = None,
                 seeds: list[int] | None = None) -> dict[str, Any]:
    """Rebuild the tables of an ablation directory (restricted to ``variants`` / ``seeds`` if
    given), draw the figures and write ``report.md`` (default ``out``: ``RUNS/report``).
    Returns ``{"out", "files", "table"}`` (the table as :class:`Table`)."""
    grid_dir = Path(runs)
    if plots:
        pyplot()  # without matplotlib: one line naming the extra, before anything is written
    if variants is not None:
        known = load_grid(grid_dir)["variants"]
        unknown = [v for v in variants if v not in known]
        if unknown:
            hint = did_you_mean(unknown[0], known) if len(unknown) == 1 else ""
            raise InputError(f"--variants: {', '.join(unknown)} not in {grid_dir}{hint} (has {', '.join(known)})")
    table = summarize_grid(grid_dir, variants, seeds)
    out_dir = Path(out) if out is not None else grid_dir / "report"
    check_writable_dir(out_dir, "--out")  # a read-only grid or place: one line, before anything is written
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out_dir}: cannot create ({e.strerror})") from None
    files = list(write_tables(table, out_dir).values())
    figures: dict[str, list[Path]] = {}
    if plots:
        figures["bars"] = plot_bars(table, out_dir)
        figures["cutoffs"] = plot_cutoffs(table, out_dir)
        figures["valid"] = plot_validation(table, grid_dir, out_dir)
        files += [p for ps in figures.values() for p in ps]
    lines = _header(grid_dir, table)

    def fig(key: str, caption: str) -> None:
        pngs = [p for p in figures.get(key, []) if p.suffix == ".png"]
        if pngs:
            svg = pngs[0].with_suffix(".svg").name
            lines.extend([f"![{caption}]({pngs[0].name})", "", f"*{caption}* ([SVG]({svg}))", ""])

    fig("bars", "Test HR@10 and NDCG@10 per variant, error bars: ± one standard deviation over seeds")
    if figures.get("cutoffs"):
        lines += ["## HR@N and NDCG@N against N", ""]
        fig("cutoffs", "Test HR@N and NDCG@N against the cut-off N")
    if plots:
        lines += ["## Validation HR@10 per epoch", ""]
        if figures.get("valid"):
            fig("valid", "Validation HR@10 after each epoch")
        elif any(metric_history(grid_dir / r["run"], "valid", "hr@10") for r in table.runs):
            lines += ["Every run trained for one epoch only: there is no curve to draw.", ""]
        else:
            lines += ["No validation metrics in these runs (dataset without a validation split).", ""]
    failed = [f for r in table.rows for f in r.failed]
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{f['run']}`: {f['error']} (log `{f['log']}`)" for f in failed] + [""]
    lines += ["## Runs", "", runs_markdown(table)]
    report = out_dir / "report.md"
    write_text_atomic(report, "\n".join(lines))
    files.append(report)
    return {"out": str(out_dir), "files": [str(p) for p in files], "table": table}
