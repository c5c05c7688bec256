"""Loading an ablation grid's run directories, the comparison table (pandas, paired t-tests
against the reference) and its renderings: markdown, CSV, JSON, the rich terminal table and
the findings sentences.

This module never imports torch.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cml_cli.errors import InputError

REFERENCE = "cml"
_METRIC = re.compile(r"^([a-z_]+)@(\d+)$")


# --------------------------------------------------------------------------- reading runs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _kind_of(name: str) -> str:
    from cml_cli.ablate import BASELINES

    return "cml" if name == REFERENCE else "baseline" if name in BASELINES else "ablation"


def load_grid(grid_dir: Path) -> dict[str, Any]:
    """``grid.json`` of an ablation directory, or one inferred from its run directories
    (``<variant>-s<seed>`` with a ``config.toml``)."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise InputError(f"{grid_dir}: no such directory")
    grid = _read_json(grid_dir / "grid.json")
    if isinstance(grid, dict) and isinstance(grid.get("variants"), dict):
        return grid
    variants: dict[str, Any] = {}
    dataset = None
    for d in sorted(grid_dir.iterdir()):
        if not (d.is_dir() and (d / "config.toml").is_file()):
            continue
        m = re.match(r"^(.*)-s(\d+)$", d.name)
        name, seed = (m.group(1), m.group(2)) if m else (d.name, "0")
        manifest = _read_json(d / "manifest.json") or {}
        dataset = dataset or manifest.get("dataset")
        entry = variants.setdefault(name, {"kind": _kind_of(name), "description": "", "overrides": {}, "runs": {}})
        entry["runs"][seed] = d.name
    if not variants:
        raise InputError(f"{grid_dir}: no run directories here (expected an ablation directory written by "
                         "`cml ablate`)")
    return {"dataset": dataset, "variants": variants, "failed": {}, "reference": REFERENCE}


def _metric_order(keys) -> list[str]:
    def key(name: str):
        m = _METRIC.match(name)
        base, k = (m.group(1), int(m.group(2))) if m else (name, 0)
        return (0 if k == 10 else 1, {"hr": 0, "ndcg": 1}.get(base, 2), base, k)

    return sorted(keys, key=key)


def collect(grid_dir: Path, grid: dict[str, Any] | None = None, variants: list[str] | None = None,
            seeds: list[int] | None = None) -> pd.DataFrame:
    """One row per (variant, seed): run directory, status (ok | failed | missing), error, log,
    epochs, seconds per epoch, protocol and every test metric."""
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
            path = grid_dir / run
            final = _read_json(path / "metrics.json")
            row: dict[str, Any] = {"variant": name, "kind": entry.get("kind", "custom"), "seed": seed, "run": run,
                                   "log": str(grid_dir / f"{run}.log"), "error": None}
            if isinstance(final, dict) and isinstance(final.get("test"), dict):
                row.update(status="ok", protocol=final.get("protocol"), epochs_run=final.get("epochs_run"),
                           best_epoch=final.get("best_epoch"), seconds_per_epoch=final.get("seconds_per_epoch"),
                           model=final.get("model"))
                row.update({f"test:{k}": float(v) for k, v in final["test"].items()})
            elif run in failed:
                row.update(status="failed", error=failed[run])
            else:
                row.update(status="missing")
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the table


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return _nan_to_none(x.item())
    return x


def _paired_p(a: list[float], b: list[float]) -> float:
    if len(a) < 2:
        return math.nan
    from scipy.stats import ttest_rel

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        p = float(ttest_rel(a, b).pvalue)
    return p


def summarize(runs: pd.DataFrame, grid: dict[str, Any], variants: list[str] | None = None,
              reference: str = REFERENCE) -> dict[str, Any]:
    """The comparison table as a JSON-ready dict (see the module docstring)."""
    names = variants if variants is not None else list(grid["variants"])
    metric_cols = [c for c in runs.columns if c.startswith("test:")] if len(runs) else []
    metrics = _metric_order([c[len("test:"):] for c in metric_cols])
    ok = runs[runs["status"] == "ok"] if len(runs) else runs
    ref = ok[ok["variant"] == reference].set_index("seed") if len(ok) else None
    run_sets = {v: set(g["run"]) for v, g in runs.groupby("variant")} if len(runs) else {}
    rows = []
    for name in names:
        entry = grid["variants"].get(name, {})
        mine = runs[runs["variant"] == name] if len(runs) else runs
        good = ok[ok["variant"] == name].set_index("seed") if len(ok) else None
        n_ok = 0 if good is None else len(good)
        row: dict[str, Any] = {
            "variant": name, "kind": entry.get("kind", "custom"), "description": entry.get("description", ""),
            "seeds": sorted(int(s) for s in mine["seed"]) if len(mine) else [], "n_ok": n_ok,
            "status": "ok" if n_ok == len(mine) and n_ok else ("failed" if (mine["status"] == "failed").any()
                                                             else "missing") if len(mine) else "missing",
            "failed": [{"seed": int(r.seed), "run": r.run, "log": r.log, "error": r.error}
                       for r in mine.itertuples() if r.status == "failed"] if len(mine) else [],
            "note": "", "metrics": {},
        }
        mine_runs = set(mine["run"]) if len(mine) else set()
        for other in [reference, *names]:
            if other == name:
                break
            if mine_runs and mine_runs <= run_sets.get(other, set()):
                row["note"] = f"same config as {other}: runs shared"
                break
        for m in metrics:
            col = f"test:{m}"
            values = good[col].dropna() if good is not None and col in good else pd.Series(dtype=float)
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            change = p = math.nan
            if ref is not None and col in ref and name != reference:
                ref_vals = ref[col].dropna()
                common = sorted(set(values.index) & set(ref_vals.index))
                # over the seeds both have, so that a variant with fewer seeds is compared like for like
                if common:
                    mine_mean = float(np.mean([values[s] for s in common]))
                    ref_mean = float(np.mean([ref_vals[s] for s in common]))
                else:
                    mine_mean, ref_mean = mean, float(ref_vals.mean()) if len(ref_vals) else math.nan
                if ref_mean and math.isfinite(ref_mean) and math.isfinite(mine_mean):
                    change = (mine_mean - ref_mean) / ref_mean * 100.0
                p = _paired_p([values[s] for s in common], [ref_vals[s] for s in common])
            row["metrics"][m] = {"mean": mean, "std": std, "change_pct": change, "p_value": p,
                                 "values": {str(int(s)): float(v) for s, v in values.items()}}
        rows.append(row)
    protocols = sorted({p for p in runs.get("protocol", pd.Series(dtype=object)).dropna()}) if len(runs) else []
    n_cand = grid.get("n_candidates")
    evaluation = (f"sampled ranking: 1 held-out item + {n_cand - 1} sampled negatives per test user"
                  if n_cand else "sampled ranking (1 held-out item + sampled negatives)")
    run_rows = []
    if len(runs):
        for r in runs.to_dict("records"):
            run_rows.append({k: _nan_to_none(v) for k, v in r.items() if not k.startswith("test:")} |
                            {"test": {m: _nan_to_none(r.get(f"test:{m}")) for m in metrics}})
    table = {
        "dataset": grid.get("dataset"),
        "reference": reference,
        "protocol": protocols[0] if len(protocols) == 1 else ", ".join(protocols) or None,
        "evaluation": evaluation,
        "seeds": sorted({int(s) for s in runs["seed"]}) if len(runs) else [],
        "metrics": metrics,
        "statistics": "mean and sample standard deviation (ddof=1) over seeds; change in % of the reference's "
                      "mean and paired t-test (scipy.stats.ttest_rel) against the reference, over the seeds that "
                      "both finished (no p-value with fewer than two)",
        "rows": rows,
        "runs": run_rows,
    }
    return _clean(table)


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _nan_to_none(obj)


def summarize_grid(grid_dir: Path, variants: list[str] | None = None, seeds: list[int] | None = None) -> dict:
    """Read a grid directory and return its table (``variants``/``seeds`` restrict it)."""
    grid = load_grid(grid_dir)
    names = variants if variants is not None else list(grid["variants"])
    reference = grid.get("reference", REFERENCE)
    runs = collect(grid_dir, grid, list(dict.fromkeys([*names, reference])), seeds)
    table = summarize(runs, grid, names, reference)
    table["name"] = Path(grid_dir).name
    return table


# --------------------------------------------------------------------------- rendering


def _num(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _pm(cell: dict) -> str:
    if cell["mean"] is None:
        return ""
    return _num(cell["mean"]) + (f" ± {_num(cell['std'])}" if cell["std"] is not None else "")


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1f}%"


def _p(x: float | None) -> str:
    if x is None:
        return ""
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def label(metric: str) -> str:
    """``hr@10`` -> ``HR@10``."""
    return metric.upper()


def table_frame(table: dict) -> pd.DataFrame:
    """The flat table behind ``table.csv``: per metric mean, std, change % and p-value."""
    records = []
    for r in table["rows"]:
        rec: dict[str, Any] = {"variant": r["variant"], "kind": r["kind"], "status": r["status"],
                               "seeds_ok": r["n_ok"], "seeds": " ".join(map(str, r["seeds"]))}
        for m in table["metrics"]:
            c = r["metrics"][m]
            rec[f"{m} mean"] = c["mean"]
            rec[f"{m} std"] = c["std"]
            rec[f"{m} change %"] = c["change_pct"]
            rec[f"{m} p"] = c["p_value"]
        rec["note"] = r["note"]
        rec["failed runs"] = " ".join(f["run"] for f in r["failed"])
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _headline(table: dict) -> list[str]:
    return [m for m in ("hr@10", "ndcg@10") if m in table["metrics"]] or table["metrics"][:2]


def _md(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _best(table: dict, metric: str) -> float | None:
    means = [r["metrics"][metric]["mean"] for r in table["rows"] if r["metrics"].get(metric, {}).get("mean")
             is not None]
    return max(means) if means else None


def _status_text(r: dict) -> str:
    if r["status"] == "ok":
        return ""
    n = len(r["seeds"])
    return f"{r['status']} ({n - r['n_ok']}/{n} runs)"


def table_markdown(table: dict) -> str:
    """``table.md``: the headline table (mean ± std, Δ vs CML, p) and one table per metric
    family over all cut-offs; the best mean of each column in bold."""
    ref = table["reference"]
    head = _headline(table)
    header = ["variant", "seeds"]
    for m in head:
        header += [label(m), f"Δ vs {ref}", "p"]
    header += ["note"]
    rows = []
    for r in table["rows"]:
        cells = [r["variant"], str(r["n_ok"]) if r["status"] == "ok" else f"{r['n_ok']}/{len(r['seeds'])}"]
        for m in head:
            c = r["metrics"].get(m) or {"mean": None, "std": None, "change_pct": None, "p_value": None}
            text = _pm(c)
            if c["mean"] is not None and c["mean"] == _best(table, m):
                text = f"**{text}**"
            cells += [text, "—" if r["variant"] == ref else _pct(c["change_pct"]),
                      "—" if r["variant"] == ref else _p(c["p_value"])]
        cells.append("; ".join(x for x in (_status_text(r), r["note"]) if x))
        rows.append(cells)
    parts = [f"**{table.get('dataset')}**: test metrics, {table['evaluation']}, protocol "
             f"`{table.get('protocol')}`; seeds {', '.join(map(str, table['seeds']))}. Mean ± sample std over "
             f"seeds; Δ relative to `{ref}` on the same seeds; p: paired t-test against `{ref}` (blank with fewer "
             "than two seeds).",
             "", _md(header, rows, ["l", "r"] + ["r"] * (len(header) - 3) + ["l"])]
    families: dict[str, list[str]] = {}
    for m in table["metrics"]:
        mm = _METRIC.match(m)
        families.setdefault(mm.group(1) if mm else m, []).append(m)
    for fam, ms in families.items():
        ms = sorted(ms, key=lambda x: int(_METRIC.match(x).group(2)) if _METRIC.match(x) else 0)
        if len(ms) < 2:
            continue
        rows = []
        for r in table["rows"]:
            cells = [r["variant"]]
            for m in ms:
                c = r["metrics"][m]
                text = _pm(c)
                if c["mean"] is not None and c["mean"] == _best(table, m):
                    text = f"**{text}**"
                cells.append(text)
            rows.append(cells)
        parts += ["", f"All cut-offs, {fam.upper()}@N (mean ± std):", "", _md(["variant", *map(label, ms)], rows)]
    return "\n".join(parts) + "\n"


def runs_markdown(table: dict) -> str:
    """One line per run: status, epochs, seconds per epoch, HR@10 / NDCG@10."""
    head = _headline(table)
    rows = []
    for r in table["runs"]:
        spe = r.get("seconds_per_epoch")
        rows.append([r["variant"], str(r["seed"]), f"`{r['run']}`", r["status"] + (f": {r['error']}" if r.get("error")
                                                                                  else ""),
                     "" if r.get("epochs_run") is None else f"{r['epochs_run']} (best {r.get('best_epoch')})",
                     "" if spe is None else f"{spe:.1f}", *[_num(r["test"].get(m)) for m in head]])
    return _md(["variant", "seed", "run", "status", "epochs", "s/epoch", *map(label, head)], rows,
               ["l", "r", "l", "l", "r", "r"] + ["r"] * len(head)) + "\n"


def findings(table: dict) -> list[str]:
    """Plain sentences: where full CML is beaten or matched, and by which variants."""
    ref = table["reference"]
    rows = {r["variant"]: r for r in table["rows"]}
    out = []
    for m in _headline(table):
        refcell = rows.get(ref, {}).get("metrics", {}).get(m)
        if not refcell or refcell["mean"] is None:
            out.append(f"{label(m)}: no finished `{ref}` run to compare with.")
            continue
        better = [(r["variant"], r["metrics"][m]["mean"], r["metrics"][m]["p_value"]) for r in table["rows"]
                  if r["variant"] != ref and not r["note"] and r["metrics"][m]["mean"] is not None
                  and r["metrics"][m]["mean"] >= refcell["mean"]]
        if not better:
            out.append(f"{label(m)}: full CML ({refcell['mean']:.4f}) is above every other variant and baseline.")
        else:
            items = ", ".join(f"`{v}` {x:.4f}" + (f" (p {_p(p)})" if p is not None else "")
                              for v, x, p in sorted(better, key=lambda t: -t[1]))
            out.append(f"{label(m)}: full CML ({refcell['mean']:.4f}) does **not** beat (is matched or beaten "
                       f"by) {items}.")
    return out


def rich_table(table: dict):
    """The headline table for the terminal."""
    from rich.table import Table

    ref = table["reference"]
    head = _headline(table)
    t = Table(title=f"{table.get('dataset')}: {table['evaluation']}, protocol {table.get('protocol')}, "
                    f"seeds {','.join(map(str, table['seeds']))}")
    t.add_column("variant")
    t.add_column("seeds", justify="right")
    for m in head:
        t.add_column(label(m), justify="right")
        t.add_column(f"Δ vs {ref}", justify="right")
        t.add_column("p", justify="right")
    for col in t.columns[1:]:
        col.no_wrap = True
    t.add_column("note", overflow="fold")
    for r in table["rows"]:
        style = "bold" if r["variant"] == ref else ("red" if r["status"] != "ok" else None)
        cells = [r["variant"], f"{r['n_ok']}/{len(r['seeds'])}"]
        for m in head:
            c = r["metrics"].get(m) or {"mean": None, "std": None, "change_pct": None, "p_value": None}
            cells += [_pm(c), "" if r["variant"] == ref else _pct(c["change_pct"]),
                      "" if r["variant"] == ref else _p(c["p_value"])]
        cells.append("; ".join(x for x in (_status_text(r), r["note"]) if x))
        t.add_row(*cells, style=style)
    return t


def write_tables(table: dict, out_dir: Path) -> dict[str, Path]:
    """``table.csv`` (pandas), ``table.md`` and ``table.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "table.csv", "md": out_dir / "table.md", "json": out_dir / "table.json"}
    table_frame(table).to_csv(paths["csv"], index=False, float_format="%.6g")
    paths["md"].write_text(table_markdown(table))
    paths["json"].write_text(json.dumps(table, indent=2, allow_nan=False) + "\n")
    return paths
