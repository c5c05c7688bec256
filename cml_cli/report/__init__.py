"""Comparison tables (pandas) and figures (matplotlib) of an ablation grid's run directories.

``summarize_grid(dir)`` reads every run of a grid (``grid.json`` written by ``cml ablate``, or
any directory of run directories named ``<variant>-s<seed>``) and returns the table
(:class:`Table`; ``to_dict()`` is ``table.json``): one row per variant with, for every test metric, the mean and sample
standard deviation (ddof=1) over seeds, the change relative to full CML in % and a paired
t-test against CML over the seeds both finished (``scipy.stats.ttest_rel``; no p-value with
fewer than two common seeds), and the full-ranking metrics of each run (``full:...``, with
coverage, personalization and ARP). ``write_tables`` writes it as ``table.csv``, ``table.md`` and
``table.json``; ``build_report`` adds the figures (PNG and SVG) and ``report.md``.

This module never imports torch; matplotlib is imported only to draw (extra ``[plot]``).
"""

from cml_cli.report.build import build_report
from cml_cli.report.tables import (
    Table,
    findings,
    grid_tables,
    load_grid,
    runs_markdown,
    summarize_grid,
    table_listing,
    table_markdown,
    write_tables,
)

__all__ = [
    "Table",
    "build_report",
    "findings",
    "grid_tables",
    "load_grid",
    "runs_markdown",
    "summarize_grid",
    "table_listing",
    "table_markdown",
    "write_tables",
]
