"""The checks of experiments/results/collapse.md: CML at a dataset's default preset (seed 0)
against popularity and item-kNN, by full-ranking HR@10, coverage@10 and sampled test HR@10.

    python experiments/collapse_checks.py retailrocket tmall:100 ijcai:100 tmall-mbcgcn:100
    python experiments/collapse_checks.py retailrocket tmall=runs/studies/tuned-tmall:cml-lightgcn

``DATASET[:EPOCHS]`` caps the epochs (default: the preset's). Each run is an ordinary
``cml train`` run under --runs-dir (reused when it finished before). ``DATASET=GRID:VARIANT``
trains nothing: it reads the seed-0 runs of an ablation grid (CML = VARIANT, and the grid's
``popularity`` and ``itemknn-merged``). The table printed gives the command of every run, and
the git revision and machine of the CML runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(dataset: str, model: str, epochs: int | None, args) -> tuple[str, dict]:
    name = f"check-{dataset}-{model}" + (f"-e{epochs}" if epochs else "")
    cmd = ["cml", "train", "--dataset", dataset, "--data-dir", os.path.relpath(args.data_dir, REPO),
           "--runs-dir", os.path.relpath(args.runs_dir, REPO), "--name", name, "--quiet"]
    if model != "cml":
        cmd += ["--set", f"model={model}"]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    final = args.runs_dir / name / "metrics.json"
    if not final.is_file():
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        started = (args.runs_dir / name / "checkpoints" / "last.ckpt").is_file()  # interrupted: continue it
        again = ["train", "--resume", str(args.runs_dir / name), "--quiet"] if started else [*cmd[1:], "--force"]
        proc = subprocess.run([sys.executable, "-m", "cml_cli", *again], cwd=REPO, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"error: `{' '.join(cmd)}` exited with {proc.returncode}")
    return " ".join(cmd), json.loads(final.read_text())


def from_grid(grid: Path, variant: str) -> dict[str, tuple[str, dict]]:
    """The seed-0 runs of an ablation grid: ``{model: (command, final metrics)}``."""
    out = {}
    for model, name in (("popularity", "popularity"), ("itemknn-merged", "itemknn-merged"), ("cml", variant)):
        run_dir = grid / f"{name}-s0"
        final = run_dir / "metrics.json"
        if not final.is_file():
            raise SystemExit(f"error: {run_dir}: no finished run (metrics.json missing)")
        out[model] = (f"{grid.name}/{run_dir.name} (the grid's command is in its grid.json)",
                      json.loads(final.read_text()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", help="DATASET or DATASET:EPOCHS")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/checks"))
    args = parser.parse_args()
    args.data_dir, args.runs_dir = args.data_dir.resolve(), args.runs_dir.resolve()
    lines = ["| dataset | model | full HR@10 | coverage@10 | personalization@10 | ARP@10 | sampled test HR@10 | "
             "epochs (best) | command |", "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | :--- |"]
    checks = []
    for spec in args.datasets:
        if "=" in spec:
            dataset, _, source = spec.partition("=")
            grid, _, variant = source.rpartition(":")
            results = from_grid(Path(grid).resolve(), variant or "cml")
        else:
            dataset, _, cap = spec.partition(":")
            results = {m: run(dataset, m, int(cap) if cap and m == "cml" else None, args)
                       for m in ("popularity", "itemknn-merged", "cml")}
        for model, (cmd, r) in results.items():
            f = r["test"]["full"]
            lines.append(f"| {dataset} | {model} | {f['hr@10']:.4f} | {f['coverage@10']:.4f} | "
                         f"{f['personalization@10']:.3f} | {f['arp@10']:.1f} | {r['test']['hr@10']:.4f} | "
                         f"{r['epochs_run']} ({r['best_epoch']}) | `{cmd}` |")
        cml, pop, knn = (results[m][1]["test"] for m in ("cml", "popularity", "itemknn-merged"))
        full, cover, sampled = cml["full"]["hr@10"], cml["full"]["coverage@10"], cml["hr@10"]
        short = "met" if sampled >= knn["hr@10"] else f"NOT met, short by {knn['hr@10'] - sampled:.4f}"
        checks.append(f"- **{dataset}**: full HR@10 {full:.4f} vs popularity {pop['full']['hr@10']:.4f} "
                      f"({'met' if full >= pop['full']['hr@10'] else 'NOT met'}); coverage@10 {cover:.4f} vs 0.03 "
                      f"({'met' if cover >= 0.03 else 'NOT met'}); sampled HR@10 {sampled:.4f} vs item-kNN "
                      f"{knn['hr@10']:.4f} ({short})")
        manifest = json.loads((REPO / results["cml"][1]["run_dir"] / "manifest.json").read_text())
        checks.append(f"  (CML run: git revision {manifest['git_revision']}, machine {manifest['machine']['host']}, "
                      f"{manifest['machine']['cpus']} CPUs, torch {manifest['machine']['torch']})")
    print("\n".join(lines))
    print()
    print("\n".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
