"""Figures of a comparison table (PNG and SVG): bars per variant, validation curves per epoch and
metrics against the cut-off N. matplotlib is imported only to draw (extra ``[plot]``)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from cml_cli.errors import InputError, write_error
from cml_cli.report.tables import METRIC, Table, label

KIND_COLORS = {"cml": "#c0392b", "ablation": "#2e86c1", "baseline": "#7f8c8d", "peer": "#8e44ad",
               "custom": "#27ae60"}
KIND_LABELS = {"cml": "full CML", "ablation": "CML ablation", "baseline": "baseline", "peer": "multi-behavior peer",
               "custom": "custom variant"}


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or one line naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("drawing needs matplotlib: pip install 'cml-cli[plot]' (or use --tables-only)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _palette(plt, n: int) -> list:
    """``n`` colours distinct from the reference's red: tab10 without red, then tab20's light shades."""
    base = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]
    light = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i % 2 == 1 and i != 7]
    colors = base + light
    return [colors[i % len(colors)] for i in range(n)]


def _seeds_text(table: Table) -> str:
    seeds = table.seeds
    counts = {r.n_ok for r in table.rows if r.n_ok}
    text = f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}"
    if len(counts) > 1:
        text += " (not every variant ran every seed)"
    return text


def _subtitle(table: Table) -> str:
    protocol = table.protocol
    text = {"strict": "strict protocol (epoch chosen on validation, test evaluated once)",
            "paper": "paper protocol (best epoch on test: optimistic)"}.get(protocol, f"protocol {protocol}")
    return f"{table.sampled('test')}\n{text}; {_seeds_text(table)}"


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.png`` and ``<stem>.svg``, each written to a temporary file and renamed."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for path in paths:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise write_error(path, e) from None
    return paths


def plot_bars(table: Table, out_dir: Path) -> list[Path]:
    """Horizontal bars of HR@10 and NDCG@10 per variant, error bars ± one std over seeds."""
    plt = pyplot()
    head = table.headline()
    rows = table.rows
    n = len(rows)
    fig, axes = plt.subplots(1, len(head), figsize=(5.2 * len(head) + 1.5, 1.2 + 0.42 * n), sharey=True,
                             squeeze=False)
    y = np.arange(n)
    for ax, m in zip(axes[0], head, strict=True):
        means = np.array([r.cell(m).mean or 0.0 for r in rows])
        stds = np.array([r.cell(m).std or 0.0 for r in rows])
        colors = [KIND_COLORS.get(r.kind, KIND_COLORS["custom"]) for r in rows]
        ax.barh(y, means, xerr=stds, color=colors, alpha=0.9, capsize=3, error_kw={"elinewidth": 1})
        top = max((means + stds).max(), 1e-6) if n else 1.0
        varying = len({r.n_ok for r in rows if r.n_ok}) > 1
        for i, r in enumerate(rows):
            cell = r.cell(m)
            text = r.status if cell.mean is None else f"{cell.mean:.3f}"
            if varying and cell.mean is not None:
                text += f" (n={r.n_ok})"
            ax.text(means[i] + stds[i] + top * 0.01, i, text, va="center", fontsize=8)
        ax.set_xlim(0, top * 1.18)
        ax.set_xlabel(f"test {label(m)} (fraction, 0–1; higher is better)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(label(m))
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([r.variant for r in rows])
    axes[0][0].invert_yaxis()
    axes[0][0].set_ylabel("variant")
    kinds = list(dict.fromkeys(r.kind for r in rows))
    handles = [plt.Rectangle((0, 0), 1, 1, color=KIND_COLORS.get(k, KIND_COLORS["custom"])) for k in kinds]
    fig.legend(handles, [KIND_LABELS.get(k, k) for k in kinds], loc="lower center", ncol=len(kinds),
               bbox_to_anchor=(0.5, -0.02 - 0.3 / max(n, 1)), frameon=False)
    fig.suptitle(f"{table.dataset}: test {' and '.join(map(label, head))} by variant (mean ± std)\n"
                 f"{_subtitle(table)}", fontsize=10)
    fig.tight_layout()
    paths = _save(fig, out_dir, "bars")
    plt.close(fig)
    return paths


def metric_history(run_dir: Path, split: str, metric: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` of ``split``'s ``metric`` per epoch of a run (its ``metrics.jsonl``)."""
    out = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return out
    for ln in lines:
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            continue
        value = (row.get(split) or {}).get(metric)
        if value is not None:
            out.append((int(row["epoch"]), float(value)))
    return out


def plot_validation(table: Table, grid_dir: Path, out_dir: Path, metric: str = "hr@10") -> list[Path]:
    """Validation ``metric`` per epoch per variant (mean over seeds, band min–max); models fitted
    in one step (a single epoch) as dashed horizontal lines. Returns [] without validation
    metrics, or when every run trained for one epoch only."""
    plt = pyplot()
    rows = [r for r in table.rows if not r.note]
    curves, max_epoch = _validation_curves(table, rows, Path(grid_dir), metric)
    if max_epoch < 2:  # every run trained one epoch: there is no curve to draw
        return []
    colors = _palette(plt, len(rows))
    fig, ax = plt.subplots(figsize=(9.5, 5.2))
    drawn = 0
    for i, r in enumerate(rows):
        series = curves.get(r.variant)
        if not series:
            continue
        is_ref = r.variant == table.reference
        _draw_curve(ax, r.variant, series, KIND_COLORS["cml"] if is_ref else colors[i], is_ref, max_epoch)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {label(metric)} (fraction, 0–1)")
    pad = 0.02 * (max_epoch - 1)
    ax.set_xlim(1 - pad, max_epoch + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    band = f"; band: min–max of {table.reference} over seeds" if len(table.seeds) > 1 else ""
    ax.set_title(f"{table.dataset}: validation {label(metric)} per epoch (mean over seeds{band})\n"
                 f"{table.sampled('validation')}\n{_seeds_text(table)}", fontsize=10)
    fig.tight_layout()
    paths = _save(fig, out_dir, f"valid_{metric.replace('@', '')}")
    plt.close(fig)
    return paths


def _validation_curves(table: Table, rows: list, grid_dir: Path,
                       metric: str) -> tuple[dict[str, list[dict[int, float]]], int]:
    """Per variant of ``rows``, the validation ``metric`` of each of its runs by epoch (runs
    without one left out), and the last epoch of any run (at least 1)."""
    runs_by_variant: dict[str, list[str]] = {}
    for r in table.runs:
        if r["status"] == "ok" or r["status"] == "missing":
            runs_by_variant.setdefault(r["variant"], []).append(r["run"])
    max_epoch = 1
    curves = {}
    for r in rows:
        series = [dict(metric_history(grid_dir / run, "valid", metric)) for run in runs_by_variant.get(r.variant, [])]
        series = [s for s in series if s]
        if series:
            curves[r.variant] = series
            max_epoch = max(max_epoch, *(max(s) for s in series))
    return curves, max_epoch


def _draw_curve(ax, variant: str, series: list[dict[int, float]], color, is_ref: bool, max_epoch: int) -> None:
    """One variant's mean curve over its runs (the reference: thicker, with a min–max band); a
    variant fitted in one epoch as a dashed horizontal line."""
    epochs = sorted(set().union(*series))
    values = np.array([[s.get(e, np.nan) for e in epochs] for s in series])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
    width = 2.6 if is_ref else 1.4
    if len(epochs) == 1:
        ax.hlines(mean[0], 1, max_epoch, colors=[color], linestyles="--", linewidth=width,
                  label=f"{variant} (single epoch)")
        return
    ax.plot(epochs, mean, color=color, linewidth=width, label=variant, zorder=3 if is_ref else 2,
            marker="o" if len(epochs) <= 30 else None, markersize=3)
    if len(series) > 1 and is_ref:
        ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=color,
                        alpha=0.15, linewidth=0)


def plot_cutoffs(table: Table, out_dir: Path) -> list[Path]:
    """HR@N and NDCG@N against N (test, mean over seeds), one line per variant."""
    plt = pyplot()
    fams: dict[str, list[tuple[int, str]]] = {}
    for m in table.metrics:
        mm = METRIC.match(m)
        if mm and mm.group(1) in ("hr", "ndcg"):
            fams.setdefault(mm.group(1), []).append((int(mm.group(2)), m))
    fams = {f: sorted(v) for f, v in fams.items() if len(v) >= 2}
    if not fams:
        return []
    rows = [r for r in table.rows if not r.note]
    colors = _palette(plt, len(rows))
    fig, axes = plt.subplots(1, len(fams), figsize=(6.2 * len(fams) + 1.8, 4.8), squeeze=False)
    for ax, (fam, ms) in zip(axes[0], fams.items(), strict=True):
        ks = [k for k, _ in ms]
        for i, r in enumerate(rows):
            ys = [r.cell(m).mean for _, m in ms]
            if all(v is None for v in ys):
                continue
            is_ref = r.variant == table.reference
            ax.plot(ks, [np.nan if v is None else v for v in ys], marker="o", markersize=3.5,
                    linewidth=2.6 if is_ref else 1.3, color=KIND_COLORS["cml"] if is_ref else colors[i],
                    linestyle="--" if r.kind in ("baseline", "peer") else "-", label=r.variant, zorder=3 if is_ref else 2)
        ax.set_xticks(ks)
        ax.set_xlabel("N (length of the ranked list, items)")
        ax.set_ylabel(f"test {fam.upper()}@N (fraction, 0–1)")
        ax.set_title(f"{fam.upper()}@N")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{table.dataset}: test {' and '.join(f.upper() + '@N' for f in fams)} against N "
                 f"(mean over seeds; baselines dashed)\n{_subtitle(table)}", fontsize=10)
    fig.tight_layout()
    paths = _save(fig, out_dir, "cutoffs")
    plt.close(fig)
    return paths
