#!/usr/bin/env python
"""Accuracy at equal wall time: a base revision against this working tree (issue 18, point 3).

    python experiments/speed_study.py                        # base 90be1d7, retailrocket and tmall-mbcgcn, seeds 0,1
    python experiments/speed_study.py --base REV --seeds 0 --datasets retailrocket

For every dataset and seed it trains, one run after the other on this machine (each run
alone, with the threads a plain `cml train` uses):

* ``base``: the base revision's `cml train` at the dataset's preset (a temporary `git worktree`,
  with its own copy of the dataset preprocessed by the base code);
* ``exact``: this tree at the base's schedule (``meta_every=1``, ``edges_per_pair=0``): the same
  computation, faster;
* ``preset``: this tree at the dataset's preset (the virtual and meta steps on every 4th batch,
  larger batches on the larger datasets).

Each run trains with early stopping off for a fixed number of epochs; the runner records every
epoch's wall time (training and validation) and validation NDCG@10 in ``metrics.jsonl``. The page
compares the best validation NDCG@10 reached within the same wall-clock budgets (fractions of the
base run's total time) and the median epoch time, and draws the curves. Writes
``experiments/results/speed.md``, ``speed.json`` and ``speed/<dataset>-s<seed>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
SOURCES = {"retailrocket": ("retailrocket", "retailrocket/cml-format", "cml"),
           "tmall-mbcgcn": ("tmall", "tmall/mbcgcn-format", "mbcgcn")}
EPOCHS = {"retailrocket": {"base": 40, "exact": 80, "preset": 200},
          "tmall-mbcgcn": {"base": 20, "exact": 40, "preset": 100}}
EXACT = ["meta_every=1", "edges_per_pair=0"]
BUDGETS = (0.25, 0.5, 1.0)


@contextmanager
def base_checkout(rev: str):
    """A detached worktree of ``rev`` in a temporary directory, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="cml-speed-base-"))
    path = tmp / "repo"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def cml(code: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "cml_cli", *args], cwd=code, env=env, capture_output=True,
                          text=True, check=True)


def ensure_dataset(code: Path, data_dir: Path, name: str) -> None:
    if (data_dir / name / "manifest.json").is_file():
        return
    preset, source, fmt = SOURCES[name]
    cml(code, "preprocess", "--dataset", preset, "--source", str(SHARED / source), "--format", fmt, "--name", name,
        "--data-dir", str(data_dir), "--json")


def train(code: Path, data_dir: Path, runs_dir: Path, name: str, dataset: str, epochs: int, seed: int,
          overrides: list[str]) -> list[dict]:
    """One run; its per-epoch rows (cumulative wall seconds, validation NDCG@10)."""
    sets = [x for o in overrides for x in ("--set", o)]
    cml(code, "train", "--dataset", dataset, "--data-dir", str(data_dir), "--runs-dir", str(runs_dir), "--name",
        name, "--seed", str(seed), "--set", f"epochs={epochs}", "--set", "patience=0", *sets, "--json", "-q")
    rows, total = [], 0.0
    for line in (runs_dir / name / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        total += row["seconds"]
        rows.append({"epoch": row["epoch"], "wall": round(total, 3), "seconds": round(row["seconds"], 3),
                     "ndcg@10": row["valid"]["ndcg@10"]})
    return rows


def best_within(rows: list[dict], budget: float) -> float | None:
    reached = [r["ndcg@10"] for r in rows if r["wall"] <= budget]
    return max(reached) if reached else None


def median_epoch(rows: list[dict]) -> float:
    values = sorted(r["seconds"] for r in rows[1:] or rows)
    return values[len(values) // 2]


def plot(curves: dict[str, list[dict]], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, rows in curves.items():
        ax.plot([r["wall"] for r in rows], [r["ndcg@10"] for r in rows], label=label, marker="o", markersize=2)
    ax.set_xlabel("wall-clock seconds (training and validation)")
    ax.set_ylabel("validation NDCG@10 (sampled 1+99)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def revision(path: Path) -> str:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path, capture_output=True,
                           text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def study(args, base: Path, work: Path) -> list[dict]:
    results = []
    for dataset in args.datasets:
        ensure_dataset(base, work / "data-base", dataset)
        ensure_dataset(REPO, work / "data", dataset)
        for seed in args.seeds:
            epochs = {k: max(2, round(v * args.epochs_scale)) for k, v in EPOCHS[dataset].items()}
            curves = {
                "base": train(base, work / "data-base", work / "runs-base", f"{dataset}-s{seed}", dataset,
                              epochs["base"], seed, []),
                "exact": train(REPO, work / "data", work / "runs", f"{dataset}-exact-s{seed}", dataset,
                               epochs["exact"], seed, EXACT),
                "preset": train(REPO, work / "data", work / "runs", f"{dataset}-preset-s{seed}", dataset,
                                epochs["preset"], seed, []),
            }
            total = curves["base"][-1]["wall"]
            row = {"dataset": dataset, "seed": seed, "base_seconds": total, "curves": curves,
                   "median_epoch_seconds": {k: median_epoch(v) for k, v in curves.items()},
                   "ndcg_within": {f"{b:g}": {k: best_within(v, b * total) for k, v in curves.items()}
                                   for b in BUDGETS}}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curves"}), flush=True)
            plot(curves, f"{dataset}, seed {seed}: validation NDCG@10 against wall time",
                 args.out / "speed" / f"{dataset}-s{seed}.png")
    return results


def page(args, results: list[dict], base_rev: str, seconds: float) -> str:
    lines = ["# Speed and accuracy at equal wall time (issue 18)", "",
             f"- Command: `python experiments/speed_study.py --base {args.base} --seeds "
             f"{','.join(map(str, args.seeds))} --datasets {','.join(args.datasets)}"
             + (f" --epochs-scale {args.epochs_scale:g}" if args.epochs_scale != 1 else "") + "`",
             f"- Base revision: `{base_rev}`; this tree: `{revision(REPO)}`",
             f"- Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, Python "
             f"{platform.python_version()}; each run alone, one after the other; wall time {seconds / 60:.1f} min",
             "- Runs: `cml train --set epochs=E --set patience=0` at the dataset's preset; `base` is the base "
             "revision, `exact` this tree with the base's schedule (`meta_every=1 edges_per_pair=0`: the same "
             "computation), `preset` this tree at its preset (virtual and meta steps on every 4th batch; "
             "fewer, larger batches where the graph is large against its target pairs).",
             "- Epoch time: training plus validation, as the runner records it (median over the epochs after "
             "the first). NDCG@10: the best validation NDCG@10 (sampled 1+99) reached within the budget, "
             "a fraction of the base run's total time: what early stopping on validation would have kept.", ""]
    for row in results:
        med = row["median_epoch_seconds"]
        lines += [f"## {row['dataset']}, seed {row['seed']}", "",
                  "| run | s/epoch | speed-up | " + " | ".join(f"NDCG@10 within {b:g}x base time ({b * row['base_seconds']:.0f} s)"
                                                            for b in BUDGETS) + " |",
                  "|---|---|---|" + "---|" * len(BUDGETS)]
        for label in ("base", "exact", "preset"):
            cells = [row["ndcg_within"][f"{b:g}"][label] for b in BUDGETS]
            lines.append(f"| {label} | {med[label]:.2f} | {med['base'] / med[label]:.1f}x | "
                         + " | ".join("–" if c is None else f"{c:.4f}" for c in cells) + " |")
        lines += ["", f"![curves](speed/{row['dataset']}-s{row['seed']}.png)", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="90be1d7")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--datasets", default="retailrocket,tmall-mbcgcn")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's epochs (a smoke run: 0.1)")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.datasets = args.datasets.split(",")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="cml-speed-"))
    try:
        with base_checkout(args.base) as base:
            base_rev = revision(base)
            results = study(args, base, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    (args.out / "speed.json").write_text(json.dumps({"base": base_rev, "tree": revision(REPO), "results": results},
                                                    indent=1) + "\n")
    (args.out / "speed.md").write_text(page(args, results, base_rev, seconds))
    print(f"wrote {args.out / 'speed.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
