"""Loading an ablation grid's run directories, the comparison table (pandas, paired t-tests
against the reference) and its renderings: markdown, CSV, JSON, the rich terminal table and
the findings sentences.

Metrics: ``hr@K`` / ``ndcg@K`` are the sampled 1+99 protocol's; ``full:<name>@K`` the
full-ranking pass over all items at the end of each run (recall, NDCG, HR, coverage,
personalization, ARP; see :func:`cml_cli.evaluate.full_metrics`). This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cml_cli import registry
from cml_cli.collapse import table_note
from cml_cli.errors import InputError
from cml_cli.layout import GRID_FILE, REFERENCE, TABLE_FILES, parse_run_dir_name, read_grid, run_log_name, variant_entry
from cml_cli.listing import Listing
from cml_cli.train.rundir import RunDir

FULL = "full:"
METRIC = re.compile(r"^((?:full:)?[a-z_]+)@(\d+)$")
# Beyond-accuracy metrics of the headline table: their mean only (no change or p-value).
BEYOND = ("full:coverage@10", "full:personalization@10", "full:arp@10")
_LABELS = {"coverage": "Coverage", "personalization": "Personalization", "arp": "ARP"}


def read_run_manifest(run: RunDir) -> dict[str, Any]:
    """A run's manifest, or ``{}`` when it is missing or damaged (a table can still be built)."""
    try:
        return run.read_manifest()
    except InputError:
        return {}


def label(metric: str) -> str:
    """``hr@10`` -> ``HR@10``; ``full:hr@10`` -> ``full HR@10``; ``full:coverage@10`` -> ``Coverage@10``."""
    m = METRIC.match(metric)
    if not m:
        return metric.upper()
    name, k = m.group(1), m.group(2)
    if name.startswith(FULL):
        base = name[len(FULL):]
        return f"{_LABELS[base]}@{k}" if base in _LABELS else f"full {base.upper()}@{k}"
    return f"{name.upper()}@{k}"


# --------------------------------------------------------------------------- reading runs


def load_grid(grid_dir: Path) -> dict[str, Any]:
    """``grid.json`` of an ablation directory, or one inferred from its run directories
    (``<variant>-s<seed>`` with a ``config.toml``; the kind from the model it trained)."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise InputError(f"{grid_dir}: no such directory")
    grid = read_grid(grid_dir / GRID_FILE)
    if grid is not None and isinstance(grid.get("variants"), dict):
        return grid
    variants: dict[str, Any] = {}
    dataset = None
    for d in sorted(grid_dir.iterdir()):
        run = RunDir(d)
        if not (d.is_dir() and run.config.is_file()):
            continue
        name, seed = parse_run_dir_name(d.name) or (d.name, "0")
        manifest = read_run_manifest(run)
        dataset = dataset or manifest.get("dataset")
        model = manifest.get("model", "")
        kind = "cml" if name == REFERENCE else ("ablation" if model == REFERENCE else registry.kind_of(model))
        entry = variants.setdefault(name, variant_entry(kind, "", {}, {}))
        entry["runs"][seed] = d.name
    if not variants:
        raise InputError(f"{grid_dir}: no run directories here (expected an ablation directory written by "
                         "`cml ablate`)")
    return {"dataset": dataset, "variants": variants, "failed": {}, "reference": REFERENCE}


def _metric_order(keys) -> list[str]:
    def key(name: str):
        m = METRIC.match(name)
        base, k = (m.group(1), int(m.group(2))) if m else (name, 0)
        full = base.startswith(FULL)
        kind = base[len(FULL):] if full else base
        order = {"hr": 0, "ndcg": 1, "recall": 2, "coverage": 3, "personalization": 4, "arp": 5}
        return (full, 0 if k == 10 else 1, order.get(kind, 9), kind, k)

    return sorted(keys, key=key)


def _flat_test(final: dict[str, Any]) -> dict[str, float]:
    """A run's test metrics as ``{"hr@10": ..., "full:hr@10": ...}``."""
    test = final.get("test") or {}
    out = {k: float(v) for k, v in test.items() if isinstance(v, (int, float))}
    full = test.get("full")
    if isinstance(full, dict):
        out.update({FULL + k: float(v) for k, v in full.items() if isinstance(v, (int, float))})
    return out


def collect(grid_dir: Path, grid: dict[str, Any] | None = None, variants: list[str] | None = None,
            seeds: list[int] | None = None) -> pd.DataFrame:
    """One row per (variant, seed): run directory, status (ok | failed | missing), error, log,
    epochs, seconds per epoch, protocol and every test metric (columns ``test:<metric>``)."""
    grid_dir = Path(grid_dir)
    grid = grid or load_grid(grid_dir)
    failed = grid.get("failed", {})
    names = variants if variants is not None else list(grid["variants"])
    rows = []
    for name in names:
        entry = grid["variants"].get(name)
        if entry is None:
            continue
        for seed_text, run in entry.get("runs", {}).items():
            seed = int(seed_text)
            if seeds is not None and seed not in seeds:
                continue
            final = RunDir(grid_dir / run).read_final()
            row: dict[str, Any] = {"variant": name, "kind": entry.get("kind", "custom"), "seed": seed, "run": run,
                                   "log": str(grid_dir / run_log_name(run)), "error": None}
            if isinstance(final, dict) and isinstance(final.get("test"), dict):
                row.update(status="ok", protocol=final.get("protocol"), epochs_run=final.get("epochs_run"),
                           best_epoch=final.get("best_epoch"), seconds_per_epoch=final.get("seconds_per_epoch"),
                           model=final.get("model"))
                row.update({f"test:{k}": v for k, v in _flat_test(final).items()})
                row["collapse"] = "; ".join((final.get("collapse") or {}).get("reasons", []))
            elif run in failed:
                row.update(status="failed", error=failed[run])
            else:
                row.update(status="missing")
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the table


def _none(x: Any) -> Any:
    """NaN and numpy scalars as JSON-ready values."""
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x


@dataclass
class Cell:
    """One metric of one variant: mean and sample std over seeds, change in % of the reference
    and paired t-test p-value (over the seeds both have), and the value per seed."""

    mean: float | None = None
    std: float | None = None
    change_pct: float | None = None
    p_value: float | None = None
    values: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        if self.mean is None:
            return ""
        return _num(self.mean) + (f" ± {_num(self.std)}" if self.std is not None else "")


@dataclass
class Row:
    """One variant of the table."""

    variant: str
    kind: str
    description: str
    seeds: list[int]
    n_ok: int
    status: str
    failed: list[dict[str, Any]]
    note: str = ""
    metrics: dict[str, Cell] = field(default_factory=dict)

    def cell(self, metric: str) -> Cell:
        return self.metrics.get(metric) or Cell()

    def status_text(self) -> str:
        if self.status == "ok":
            return ""
        return f"{self.status} ({len(self.seeds) - self.n_ok}/{len(self.seeds)} runs)"


@dataclass
class Table:
    """The comparison table of a grid; :meth:`to_dict` is ``table.json``."""

    dataset: str | None
    reference: str
    protocol: str | None
    evaluation: str
    seeds: list[int]
    metrics: list[str]
    statistics: str
    rows: list[Row]
    runs: list[dict[str, Any]]
    name: str = ""
    n_candidates: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Table:
        rows = [Row(**{**r, "metrics": {m: Cell(**c) for m, c in r["metrics"].items()}}) for r in data["rows"]]
        return cls(**{**data, "rows": rows})

    def headline(self) -> list[str]:
        """The metrics with change and p-value in the headline table: sampled HR@10 and NDCG@10."""
        return [m for m in ("hr@10", "ndcg@10") if m in self.metrics] or self.metrics[:2]

    def beyond(self) -> list[str]:
        """Full-ranking columns of the headline table (mean only): HR@10, coverage, personalization, ARP."""
        return [m for m in ("full:hr@10", *BEYOND) if m in self.metrics]

    def sampled(self, split: str = "test") -> str:
        """What the sampled columns rank, for the users of ``split`` (test | validation)."""
        if self.n_candidates:
            return f"sampled ranking: 1 held-out item + {self.n_candidates - 1} sampled negatives per {split} user"
        return f"sampled ranking: 1 held-out item + sampled negatives per {split} user"

    def notes(self) -> list[str]:
        """What a reader needs to read the headline table: what each kind of column ranks, and
        why p-values are blank where they are (:meth:`blank_p`)."""
        out = [f"{', '.join(map(label, self.headline()))}: {self.sampled('test')}"]
        if self.beyond():
            out.append(f"{', '.join(map(label, self.beyond()))}: full ranking over all items (each user's "
                       "purchases masked)")
        return out + self.blank_p() + table_note(self.runs)

    def blank_p(self) -> list[str]:
        """Why a p-value column is blank, when one is: one seed, or rows without two seeds in
        common with the reference (rows that share the reference's runs say so in their note)."""
        if len(self.seeds) < 2:
            return [f"p is blank: one seed per variant, and a paired t-test against {self.reference} needs at least "
                    "two (e.g. --seeds 0,1,2)"]
        if any(r.variant != self.reference and not r.note and r.cell(m).mean is not None and r.cell(m).p_value is None
               for r in self.rows for m in self.headline()):
            return [f"a blank p: fewer than two seeds in common with {self.reference}, or the same value on every "
                    "seed"]
        return []

    def best(self, metric: str) -> float | None:
        """The best mean of a metric over the rows (lowest for ARP, highest otherwise)."""
        means = [r.cell(metric).mean for r in self.rows if r.cell(metric).mean is not None]
        if not means:
            return None
        return min(means) if metric.startswith("full:arp@") else max(means)


def _paired_p(a: list[float], b: list[float]) -> float:
    if len(a) < 2:
        return math.nan
    from scipy.stats import ttest_rel

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(ttest_rel(a, b).pvalue)


def _cell(values: pd.Series, ref: pd.Series | None) -> Cell:
    """Mean ± std of ``values`` (by seed) and, against ``ref`` over the common seeds, change and p."""
    mean = float(values.mean()) if len(values) else math.nan
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    change = p = math.nan
    if ref is not None:
        common = sorted(set(values.index) & set(ref.index))
        # over the seeds both have, so that a variant with fewer seeds is compared like for like
        mine = float(np.mean([values[s] for s in common])) if common else mean
        theirs = float(np.mean([ref[s] for s in common])) if common else (float(ref.mean()) if len(ref) else math.nan)
        if theirs and math.isfinite(theirs) and math.isfinite(mine):
            change = (mine - theirs) / theirs * 100.0
        p = _paired_p([values[s] for s in common], [ref[s] for s in common])
    return Cell(_none(mean), _none(std), _none(change), _none(p),
                {str(int(s)): float(v) for s, v in values.items()})


def _row(name: str, entry: dict[str, Any], mine: pd.DataFrame, good: pd.DataFrame, ref: pd.DataFrame | None,
         metrics: list[str], reference: str) -> Row:
    n_ok = len(good)
    if not len(mine):
        status = "missing"
    elif n_ok == len(mine):
        status = "ok"
    else:
        status = "failed" if (mine["status"] == "failed").any() else "missing"
    row = Row(name, entry.get("kind", "custom"), entry.get("description", ""),
              sorted(int(s) for s in mine["seed"]) if len(mine) else [], n_ok, status,
              [{"seed": int(r.seed), "run": r.run, "log": r.log, "error": r.error}
               for r in mine.itertuples() if r.status == "failed"] if len(mine) else [])
    for m in metrics:
        col = f"test:{m}"
        values = good[col].dropna() if col in good else pd.Series(dtype=float)
        against = ref[col].dropna() if ref is not None and col in ref and name != reference else None
        row.metrics[m] = _cell(values, against)
    return row


def summarize(runs: pd.DataFrame, grid: dict[str, Any], variants: list[str] | None = None,
              reference: str = REFERENCE) -> Table:
    """The comparison table (see the module docstring)."""
    names = variants if variants is not None else list(grid["variants"])
    metrics = _metric_order([c[len("test:"):] for c in runs.columns if c.startswith("test:")]) if len(runs) else []
    empty = pd.DataFrame(columns=["variant", "seed", "run", "status"])
    runs = runs if len(runs) else empty
    ok = runs[runs["status"] == "ok"]
    ref = ok[ok["variant"] == reference].set_index("seed")
    run_sets = {v: set(g["run"]) for v, g in runs.groupby("variant")}
    rows = []
    for name in names:
        mine = runs[runs["variant"] == name]
        row = _row(name, grid["variants"].get(name, {}), mine, ok[ok["variant"] == name].set_index("seed"), ref,
                   metrics, reference)
        mine_runs = set(mine["run"])
        for other in [reference, *names]:
            if other == name:
                break
            if mine_runs and mine_runs <= run_sets.get(other, set()):
                row.note = f"same config as {other}: runs shared"
                break
        rows.append(row)
    protocols = sorted(set(runs["protocol"].dropna())) if "protocol" in runs else []
    n_cand = grid.get("n_candidates")
    evaluation = (f"sampled ranking: 1 held-out item + {n_cand - 1} sampled negatives per test user"
                  if n_cand else "sampled ranking: 1 held-out item + sampled negatives per test user")
    if any(m.startswith(FULL) for m in metrics):
        evaluation += "; full ranking over all items for the full HR, Coverage, Personalization and ARP columns"
    run_rows = [{k: _none(v) for k, v in r.items() if not k.startswith("test:")} |
                {"test": {m: _none(r.get(f"test:{m}")) for m in metrics}} for r in runs.to_dict("records")]
    return Table(
        dataset=grid.get("dataset"), reference=reference,
        protocol=protocols[0] if len(protocols) == 1 else ", ".join(protocols) or None,
        evaluation=evaluation, seeds=sorted({int(s) for s in runs["seed"]}), metrics=metrics,
        statistics="mean and sample standard deviation (ddof=1) over seeds; change in % of the reference's "
                   "mean and paired t-test (scipy.stats.ttest_rel) against the reference, over the seeds that "
                   "both finished (no p-value with fewer than two)",
        rows=rows, runs=run_rows, n_candidates=n_cand)


def summarize_grid(grid_dir: Path, variants: list[str] | None = None, seeds: list[int] | None = None) -> Table:
    """Read a grid directory and return its table (``variants``/``seeds`` restrict it)."""
    grid = load_grid(grid_dir)
    names = variants if variants is not None else list(grid["variants"])
    reference = grid.get("reference", REFERENCE)
    runs = collect(grid_dir, grid, list(dict.fromkeys([*names, reference])), seeds)
    table = summarize(runs, grid, names, reference)
    table.name = Path(grid_dir).name
    return table


def grid_tables(grid_dir: Path, variants: list[str] | None = None, seeds: list[int] | None = None) -> Table:
    """The table of a grid directory, also written into it (``table.csv``, ``.md``, ``.json``)."""
    table = summarize_grid(grid_dir, variants, seeds)
    write_tables(table, grid_dir)
    return table


# --------------------------------------------------------------------------- rendering


def _num(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1f}%"


def _p(x: float | None) -> str:
    if x is None:
        return ""
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def table_frame(table: Table) -> pd.DataFrame:
    """The flat table behind ``table.csv``: per metric mean, std, change % and p-value."""
    records = []
    for r in table.rows:
        rec: dict[str, Any] = {"variant": r.variant, "kind": r.kind, "status": r.status, "seeds_ok": r.n_ok,
                               "seeds": " ".join(map(str, r.seeds))}
        for m in table.metrics:
            c = r.cell(m)
            rec.update({f"{m} mean": c.mean, f"{m} std": c.std, f"{m} change %": c.change_pct, f"{m} p": c.p_value})
        rec["note"] = r.note
        rec["failed runs"] = " ".join(f["run"] for f in r.failed)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _md(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _headline_cells(table: Table, r: Row, bold: bool) -> list[str]:
    """Sampled HR/NDCG@10 with change and p, then the full-ranking means."""
    ref = r.variant == table.reference
    cells = []
    for m in table.headline():
        c = r.cell(m)
        text = c.text()
        if bold and c.mean is not None and c.mean == table.best(m):
            text = f"**{text}**"
        cells += [text, "—" if ref else _pct(c.change_pct), "—" if ref else _p(c.p_value)]
    for m in table.beyond():
        c = r.cell(m)
        text = _num(c.mean, 2 if m.startswith("full:arp@") else 4)
        cells.append(f"**{text}**" if bold and c.mean is not None and c.mean == table.best(m) else text)
    return cells


def _headline_header(table: Table) -> list[str]:
    header = []
    for m in table.headline():
        header += [label(m), f"Δ vs {table.reference}", "p"]
    return header + [label(m) for m in table.beyond()]


def table_markdown(table: Table) -> str:
    """``table.md``: the headline table (mean ± std, Δ vs CML, p; full-ranking means) and one
    table per metric family over all cut-offs; the best mean of each column in bold."""
    ref = table.reference
    header = ["variant", "seeds", *_headline_header(table), "note"]
    rows = []
    for r in table.rows:
        seeds = str(r.n_ok) if r.status == "ok" else f"{r.n_ok}/{len(r.seeds)}"
        rows.append([r.variant, seeds, *_headline_cells(table, r, bold=True),
                     "; ".join(x for x in (r.status_text(), r.note) if x)])
    parts = [f"**{table.dataset}**: test metrics, {table.evaluation}, protocol `{table.protocol}`; seeds "
             f"{', '.join(map(str, table.seeds))}. Mean ± sample std over seeds; Δ relative to `{ref}` on the same "
             f"seeds; p: paired t-test against `{ref}` (blank with fewer than two seeds). Coverage@10: share of all "
             "items in some user's top 10; Personalization@10: 1 − mean top-10 overlap of user pairs; ARP@10: mean "
             "training interactions of the top-10 items (lower: less popularity-bound).",
             "", _md(header, rows, ["l", "r"] + ["r"] * (len(header) - 3) + ["l"]),
             *(["", *(f"*Note:* {n}." for n in under)] if (under := table.blank_p() + table_note(table.runs)) else [])]
    families: dict[str, list[str]] = {}
    for m in table.metrics:
        mm = METRIC.match(m)
        families.setdefault(mm.group(1) if mm else m, []).append(m)
    for ms in families.values():
        ms = sorted(ms, key=lambda x: int(METRIC.match(x).group(2)) if METRIC.match(x) else 0)
        if len(ms) < 2:
            continue
        rows = []
        for r in table.rows:
            cells = [r.variant]
            for m in ms:
                text = r.cell(m).text()
                cells.append(f"**{text}**" if r.cell(m).mean is not None and r.cell(m).mean == table.best(m)
                             else text)
            rows.append(cells)
        name = label(ms[0]).rsplit("@", 1)[0] + "@N"
        parts += ["", f"All cut-offs, {name} (mean ± std):", "", _md(["variant", *map(label, ms)], rows)]
    return "\n".join(parts) + "\n"


def runs_markdown(table: Table) -> str:
    """One line per run: status, epochs, seconds per epoch, HR@10 / NDCG@10."""
    head = table.headline()
    rows = []
    for r in table.runs:
        spe = r.get("seconds_per_epoch")
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        epochs = "" if r.get("epochs_run") is None else f"{r['epochs_run']} (best {r.get('best_epoch')})"
        rows.append([r["variant"], str(r["seed"]), f"`{r['run']}`", status, epochs,
                     "" if spe is None else f"{spe:.1f}", *[_num(r["test"].get(m)) for m in head]])
    return _md(["variant", "seed", "run", "status", "epochs", "s/epoch", *map(label, head)], rows,
               ["l", "r", "l", "l", "r", "r"] + ["r"] * len(head)) + "\n"


def findings(table: Table) -> list[str]:
    """Plain sentences: where full CML is beaten or matched, and by which variants; then the
    variants it is above, with their change in % of CML's mean."""
    ref = table.reference
    rows = {r.variant: r for r in table.rows}
    out = []
    for m in [*table.headline(), *(["full:hr@10"] if "full:hr@10" in table.metrics else [])]:
        refcell = rows[ref].cell(m) if ref in rows else Cell()
        if refcell.mean is None:
            out.append(f"{label(m)}: no finished `{ref}` run to compare with.")
            continue
        others = [r for r in table.rows if r.variant != ref and not r.note and r.cell(m).mean is not None]
        better = [(r.variant, r.cell(m).mean, r.cell(m).p_value) for r in others if r.cell(m).mean >= refcell.mean]
        below = sorted(((r.variant, r.cell(m).mean, r.cell(m).change_pct) for r in others
                        if r.cell(m).mean < refcell.mean), key=lambda t: -t[1])
        above = ", ".join(f"`{v}` {x:.4f}" + (f" ({_pct(c)})" if c is not None else "") for v, x, c in below)
        if not better:
            out.append(f"{label(m)}: full CML ({refcell.mean:.4f}) is above every other variant and baseline"
                       + (f": {above}." if above else "."))
        else:
            items = ", ".join(f"`{v}` {x:.4f}" + (f" (p {_p(p)})" if p is not None else "")
                              for v, x, p in sorted(better, key=lambda t: -t[1]))
            out.append(f"{label(m)}: full CML ({refcell.mean:.4f}) does **not** beat (is matched or beaten by) "
                       f"{items}" + (f"; it is above {above}." if above else "."))
    return out


def table_listing(table: Table) -> Listing:
    """The headline table for the terminal or a pipe (:mod:`cml_cli.listing`), with its notes
    and the findings; the note column only when a row has a note."""
    notes = ["; ".join(x for x in (r.status_text(), r.note) if x) for r in table.rows]
    rows = []
    for r, note in zip(table.rows, notes):
        cells = [c.replace("—", "") for c in _headline_cells(table, r, bold=False)]
        rows.append((r.variant, f"{r.n_ok}/{len(r.seeds)}", *cells, *([note] if any(notes) else [])))
    columns = ("variant", "seeds", *_headline_header(table), *(["note"] if any(notes) else []))
    title = (f"{table.dataset}: test metrics, protocol {table.protocol}, seed{'s' if len(table.seeds) != 1 else ''} "
             f"{','.join(map(str, table.seeds))}")
    findings_text = [f.replace("**", "").replace("`", "") for f in findings(table)]
    return Listing(title, columns, tuple(rows), right=frozenset(range(1, 2 + len(_headline_header(table)))),
                   notes=(*table.notes(), *findings_text),
                   strong=frozenset(i for i, r in enumerate(table.rows) if r.variant == table.reference),
                   wrap=frozenset({len(columns) - 1} if any(notes) else ()))


def write_tables(table: Table, out_dir: Path) -> dict[str, Path]:
    """``table.csv`` (pandas), ``table.md`` and ``table.json`` in ``out_dir`` (each atomically)."""
    from cml_cli.data.store import write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in TABLE_FILES.items()}
    write_text_atomic(paths["csv"], table_frame(table).to_csv(index=False, float_format="%.6g"))
    write_text_atomic(paths["md"], table_markdown(table))
    write_text_atomic(paths["json"], json.dumps(table.to_dict(), indent=2, allow_nan=False) + "\n")
    return paths
