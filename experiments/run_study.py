#!/usr/bin/env python
"""Run one or more studies (experiments/<study>.toml) and write their results pages.

    python experiments/run_study.py baselines            # study 1 -> experiments/results/baselines.md
    python experiments/run_study.py ablation cutoffs     # studies 2 and 3
    python experiments/run_study.py --smoke baselines    # the same pipeline on tiny synthetic data, 1 epoch
    python experiments/run_study.py --dry-run ablation   # print the commands only

For every grid of a study: preprocess the dataset from ../shared/datasets if it is not in
--data-dir yet, run `cml ablate` (finished runs are reused and interrupted ones resumed, so
a study can be completed in parts: run the same command again), draw the figures with
`cml report`, and write experiments/results/<slug>.md with the commands, git revision,
machine, epochs, seeds and the measured tables, plus the figures in
experiments/results/<slug>/. Where full CML does not beat a variant or baseline, the page
says so (in "Findings"). Exit status: 0, or 1 if any run failed (the page lists it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "experiments"
# --smoke: every grid on the tiny synthetic dataset, one epoch of a small model.
SMOKE_SETTINGS = {"epochs": 1, "dim": 8, "layers": 1, "samp_num": 2, "meta_batch": 16, "batch": 1024}


def _set_value(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _arg(path: Path) -> str:
    """A path as it goes into a recorded command: relative to the repository, never an
    absolute path of the machine that ran it."""
    return os.path.relpath(Path(path).resolve(), REPO)


def study_command(argv: list[str], script: str = "experiments/run_study.py",
                  path_options: tuple[str, ...] = ("--data-dir", "--runs-dir", "--results-dir", "--shared")) -> str:
    """``script``'s command line as a page records it: the values of its ``path_options``
    relative to the repository, whatever the working directory was."""
    out, rest = [], iter(argv)
    for arg in rest:
        option, eq, value = arg.partition("=")
        if option in path_options:
            out += [option, _arg(Path(value if eq else next(rest, "")))]
        else:
            out.append(arg)
    return _show(["python", script, *out])


def _cml() -> list[str]:
    return [sys.executable, "-m", "cml_cli"]


def _show(cmd: list[str]) -> str:
    """The command as a person would type it (``cml ...``)."""
    if cmd[:3] == _cml():
        cmd = ["cml", *cmd[3:]]
    return " ".join(shlex.quote(c) for c in cmd)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    return (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
            f"{platform.platform()}, Python {platform.python_version()}")


def load_study(name: str) -> tuple[Path, dict]:
    path = Path(name)
    if not path.suffix:
        path = HERE / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in HERE.glob("*.toml") if p.stem != "datasets")
        raise SystemExit(f"error: {name}: no such study (known: {', '.join(known)})")
    study = tomllib.loads(path.read_text())
    if "study" not in study or not study.get("grid"):
        raise SystemExit(f"error: {path}: expected a [study] table and [[grid]] tables")
    return path, study


def plan_grids(study: dict, datasets: dict, args) -> list[dict]:
    """Each grid's dataset, source, name, variants, seeds and settings (after --smoke / --set)."""
    grids = []
    common = dict(datasets.get("settings", {}))
    for g in study["grid"]:
        ds = datasets["datasets"].get(g["dataset"])
        if ds is None:
            raise SystemExit(f"error: dataset '{g['dataset']}' is not in experiments/datasets.toml")
        settings = {**common, **ds.get("settings", {}), **g.get("settings", {})}
        tune = _grid_tune(study.get("tune"), g.get("tune"))
        if tune is not None:
            settings = {**settings, **tune["settings"]}
        variants = g.get("variants") or [*tune["models"], *tune.get("untuned", [])]
        trained = [v for v in g.get("trained", []) if v not in variants]
        pending = trained if args.fitted_only else []
        grid = {"dataset": g["dataset"], "label": ds.get("label", g["dataset"]), "source": ds["source"],
                "format": ds["format"], "no_valid": ds.get("no_valid", False),
                "name": g.get("name", f"{study['study']['slug']}-{g['dataset']}" if tune else g["dataset"]),
                "variants": [*variants, *(v for v in trained if v not in pending)], "pending": pending,
                "seeds": g.get("seeds") or tune["seeds"], "settings": settings, "tune": tune, "custom": g.get("custom", {}),
                "published": g.get("published"), "published_dataset": g.get("published_dataset")}
        if args.smoke:
            grid.update(dataset="synthetic", source=None, format="synthetic", name=f"smoke-{grid['name']}",
                        label=f"{grid['label']} -> SMOKE TEST on the tiny synthetic dataset",
                        settings={**settings, **SMOKE_SETTINGS})
        for pair in args.set:
            key, _, value = pair.partition("=")
            grid["settings"][key.strip()] = value.strip()
        grids.append(grid)
    return grids


def _grid_tune(study_tune: dict | None, own: dict | None) -> dict | None:
    """A grid's tuning: the study's ``[tune]`` table updated by the grid's own ``tune`` (either
    may be missing; a grid of a study without ``[tune]`` may still tune its own models)."""
    if study_tune is None and own is None:
        return None
    base, own = study_tune or {}, own or {}
    return {**base, **own, "settings": {**base.get("settings", {}), **own.get("settings", {})}}


def run(cmd: list[str], *, capture: bool, dry_run: bool) -> subprocess.CompletedProcess | None:
    print(f"$ {_show(cmd)}", file=sys.stderr, flush=True)
    if dry_run:
        return None
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE if capture else None)


def ensure_dataset(grid: dict, args) -> str | None:
    """Preprocess the grid's dataset into --data-dir unless it is there; returns the command."""
    if (Path(args.data_dir) / grid["dataset"] / "manifest.json").is_file():
        return None
    cmd = [*_cml(), "preprocess", "--dataset", grid["dataset"], "--data-dir", _arg(args.data_dir)]
    if grid["source"] is not None:
        source = Path(args.shared) / grid["source"]
        if not source.exists() and not args.dry_run:
            raise SystemExit(f"error: {source}: missing (pass --shared DIR, the folder of the published datasets)")
        cmd += ["--source", _arg(source), "--format", grid["format"]]
    if grid.get("no_valid"):
        cmd.append("--no-valid")
    if not args.dry_run:
        Path(args.data_dir).parent.mkdir(parents=True, exist_ok=True)
    proc = run(cmd + ["--json"], capture=True, dry_run=args.dry_run)
    if proc is not None and proc.returncode != 0:
        raise SystemExit(f"error: preprocessing {grid['dataset']} failed (exit {proc.returncode})")
    return _show(cmd)


def ablate_command(grid: dict, args, configs: dict[str, Path] | None = None) -> list[str]:
    cmd = [*_cml(), "ablate", "--dataset", grid["dataset"], "--variants", ",".join(grid["variants"]),
           "--seeds", ",".join(map(str, grid["seeds"])), "--name", grid["name"], "--runs-dir", _arg(args.runs_dir),
           "--data-dir", _arg(args.data_dir), "--jobs", str(args.jobs)]
    if grid.get("custom"):
        cmd += ["--variants-file", _arg(custom_variants(grid, Path(args.runs_dir) / "variants" / f"{grid['name']}.toml",
                                                        args.dry_run))]
    for variant, path in (configs or {}).items():
        cmd += ["--config", f"{variant}={_arg(path)}"]
    for key, value in grid["settings"].items():
        cmd += ["--set", f"{key}={_set_value(value)}"]
    return cmd


def custom_variants(grid: dict, out: Path, dry_run: bool) -> Path:
    """The variants a grid defines itself (``custom = { NAME = { key = value, ... } }``) as a
    ``cml ablate --variants-file``."""
    lines = []
    for name, spec in grid["custom"].items():
        lines += [f"[variants.{json.dumps(name)}]", *(f"{k} = {json.dumps(v)}" for k, v in spec.items()), ""]
    if not dry_run:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines))
    return out


# A tuned "model" is a registry model, or a CML variant with the options it fixes: "cml" is the
# paper's encoder (with the batch's positives held out, as it needs), "cml-lightgcn" the backbone.
TUNED = {"cml": ("cml", {"encoder": "cml", "hold_out": True}), "cml-lightgcn": ("cml", {"encoder": "lightgcn"})}


def space_without(model: str, fixed: dict, out: Path, own: Path | None = None) -> Path | None:
    """The model's search space (``own``, a file of the study, else the model's default) without
    the keys a grid fixes (None: the default space, nothing to drop)."""
    from cml_cli.tune import default_space_file

    default = own or default_space_file(model)
    space = tomllib.loads(default.read_text())
    dropped = [k for k in fixed if k in space]
    if not dropped:
        return own
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {default.name} without {', '.join(dropped)} (fixed by the study)"]
    for key, spec in space.items():
        if key not in dropped:
            lines += [f"[{key}]", *(f"{k} = {json.dumps(v)}" for k, v in spec.items()), ""]
    out.write_text("\n".join(lines))
    return out


def tune_grid(grid: dict, args) -> tuple[dict[str, Path], list[dict]]:
    """``cml tune --until N`` of every tuned model of a grid (a study that already holds N
    finished trials runs nothing); returns the best.toml of each variant and what was run."""
    configs, runs = {}, []
    for variant in grid["tune"]["models"]:
        model, fixed = TUNED.get(variant, (variant, {}))
        name = f"{grid['name']}-tune-{variant}"
        cmd = [*_cml(), "tune", "--dataset", grid["dataset"], "--model", model, "--until", str(grid["tune"]["trials"]),
               "--name", name, "--runs-dir", _arg(args.runs_dir), "--data-dir", _arg(args.data_dir),
               "--jobs", str(args.jobs)]
        own = grid["tune"].get("spaces", {}).get(variant)
        space = space_without(model, {**grid["settings"], **fixed}, Path(args.runs_dir) / "spaces" / f"{name}.toml",
                              None if own is None else HERE / own)
        if space is not None:
            cmd += ["--space", _arg(space)]
        for key, value in {**grid["settings"], **fixed}.items():
            cmd += ["--set", f"{key}={_set_value(value)}"]
        started = time.time()
        proc = run(cmd + ["--json"], capture=True, dry_run=args.dry_run)
        entry = {"variant": variant, "command": _show(cmd)}
        if proc is not None:
            if proc.returncode != 0:
                raise SystemExit(f"error: `{_show(cmd)}` exited with {proc.returncode}")
            entry.update(json.loads(proc.stdout), seconds=time.time() - started)
            configs[variant] = Path(entry["best_config"])
        runs.append(entry)
    return configs, runs


def published_runs(grid: dict, args, tuned: list[dict]) -> list[dict]:
    """Each tuned configuration trained on the grid's ``published_dataset`` (no validation split)
    for the epochs its tuned best run selected, evaluated by full ranking."""
    target = dict(grid, dataset=grid["published_dataset"], no_valid=True)
    preprocess = ensure_dataset(target, args)
    out = []
    for entry in tuned:
        best = json.loads((Path(entry["best_run"]) / "metrics.json").read_text())
        name = f"{grid['name']}-published-{entry['variant']}"
        cmd = [*_cml(), "train", "--dataset", target["dataset"], "--config", _arg(Path(entry["best_config"])),
               "--set", f"epochs={best['best_epoch']}", "--name", name, "--runs-dir", _arg(args.runs_dir),
               "--data-dir", _arg(args.data_dir), "--quiet"]
        final = Path(args.runs_dir) / name / "metrics.json"
        if not final.is_file():
            proc = run(cmd + ["--force"], capture=True, dry_run=args.dry_run)
            if proc is not None and proc.returncode != 0:
                raise SystemExit(f"error: `{_show(cmd)}` exited with {proc.returncode}")
        result = json.loads(final.read_text()) if final.is_file() else {}
        out.append({"variant": entry["variant"], "command": _show(cmd), "preprocess": preprocess,
                    "epochs": best["best_epoch"], "full": (result.get("test") or {}).get("full", {})})
    return out


def run_study_grid(grid: dict, args, figures_dir: Path, slug: str, figures: list[str]) -> dict:
    out: dict = {"grid": grid, "preprocess": ensure_dataset(grid, args)}
    configs = None
    if grid.get("tune"):
        configs, out["tuned"] = tune_grid(grid, args)
    cmd = ablate_command(grid, args, configs)
    out["ablate"] = _show(cmd)
    started = time.time()
    proc = run(cmd + ["--json"], capture=True, dry_run=args.dry_run)
    if proc is None:
        return out
    out["seconds"] = time.time() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"error: `{_show(cmd)}` exited with {proc.returncode}")
    out["exit"] = proc.returncode
    table = json.loads(proc.stdout)
    variants = [r["variant"] for r in table["rows"]]  # table.json as printed by `cml ablate --json`
    grid_dir = Path(args.runs_dir) / grid["name"]
    report_dir = grid_dir / "report" / slug
    rcmd = [*_cml(), "report", _arg(grid_dir), "--out", _arg(report_dir), "--variants", ",".join(variants),
            "--seeds", ",".join(map(str, grid["seeds"]))]
    out["report"] = _show(rcmd)
    rproc = run(rcmd + ["--json"], capture=True, dry_run=False)
    if rproc.returncode != 0:
        raise SystemExit(f"error: `{_show(rcmd)}` exited with {rproc.returncode}")
    from cml_cli.report import Table

    out["table"] = Table.from_dict(json.loads(rproc.stdout)["table"])
    out["figures"] = []
    figures_dir.mkdir(parents=True, exist_ok=True)
    for stem in figures:
        src = report_dir / f"{stem}.png"
        if src.is_file():
            dst = figures_dir / f"{grid['name']}-{stem}.png"
            shutil.copyfile(src, dst)
            out["figures"].append(dst)
    if grid.get("published_dataset") and out.get("tuned"):
        out["published"] = published_runs(grid, args, out["tuned"])
    return out


def tuned_markdown(tuned: list[dict], grid: dict) -> list[str]:
    """The tuning of each model: trials, best validation NDCG@10, best parameters, time."""
    rows = ["| model | trials (pruned, failed) | best validation NDCG@10 | best parameters | tuning wall time |",
            "| :--- | ---: | ---: | :--- | ---: |"]
    for t in tuned:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in t.get("best_params", {}).items())
        seconds = t.get("seconds")
        rows.append(f"| {t['variant']} | {t.get('trials')} ({t.get('pruned')}, {t.get('failed')}) | "
                    f"{t.get('best_value', 0):.4f} | {params} | "
                    f"{'' if seconds is None else f'{seconds / 60:.1f} min'} |")
    commands = [f"- `{t['command']}`" for t in tuned]
    return ["Tuning (each model: the same trials and epoch budget; wall time of this invocation, 0 when the "
            "study was already complete):", "", *rows, "", "<details><summary>Tuning commands</summary>", "",
            *commands, "", "</details>", ""]


def full_ranking_markdown(table) -> list[str]:
    """Full-ranking Recall/NDCG@10 and @20 and the beyond-accuracy measures, mean ± std over seeds."""
    keys = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "coverage@10", "personalization@10", "arp@10"]
    present = [k for k in keys if any(f"full:{k}" in r.metrics for r in table.rows)]
    if not present:
        return []
    rows = ["| variant | " + " | ".join(present) + " |", "| :--- |" + " ---: |" * len(present)]
    for r in table.rows:
        cells = []
        for k in present:
            c = r.metrics.get(f"full:{k}")
            if c is None or c.mean is None:
                cells.append("")
            elif k == "arp@10":
                cells.append(f"{c.mean:.1f}")
            else:
                cells.append(f"{c.mean:.4f}" + ("" if c.std is None else f" ± {c.std:.4f}"))
        rows.append(f"| {r.variant} | " + " | ".join(cells) + " |")
    return ["Full ranking (all items ranked for every test user, the user's known items of the target behavior "
            "masked; personalization over a fixed seeded sample of 1,000 users; PyG's LinkPred metrics), mean ± std "
            "over seeds:", "", *rows, ""]


def published_markdown(published: list[dict], grid: dict) -> list[str]:
    """Full-ranking HR@10 of the tuned configurations beside the published figures."""
    rows = ["| model | HR@10 | NDCG@10 | Recall@20 | epochs | source |", "| :--- | ---: | ---: | ---: | ---: | :--- |"]
    for p in published:
        f = p["full"]
        rows.append(f"| {p['variant']} (ours, tuned) | {f.get('hr@10', float('nan')):.4f} | "
                    f"{f.get('ndcg@10', float('nan')):.4f} | {f.get('recall@20', float('nan')):.4f} | {p['epochs']} | "
                    f"`{p['command']}` |")
    for name, value in grid["published"].items():
        rows.append(f"| {name} (published) | {value:.4f} | | | | README of the MuLe repository (geonwooko/MULE)"
                    + (", CascadingRank's README" if name == "CascadingRank" else "") + " |")
    return [f"Full ranking on `{grid['published_dataset']}` (the same files preprocessed with `--no-valid`: every "
            "training purchase kept; all 11,953 items ranked; training purchases masked; one test item per user), "
            "beside figures published on the same data:", "", *rows, ""]


def reproduction_markdown(table, published: dict) -> list[str]:
    """Full-ranking HR@10 / NDCG@10 of each variant beside its published figures."""
    rows = ["| model | HR@10 ours | HR@10 published | ours / published | NDCG@10 ours | NDCG@10 published |",
            "| :--- | ---: | ---: | ---: | ---: | ---: |"]
    by = {r.variant: r for r in table.rows}
    for variant, (hr, ndcg) in published.items():
        ours = by[variant].cell("full:hr@10").mean if variant in by else None
        ours_ndcg = by[variant].cell("full:ndcg@10").mean if variant in by else None
        ratio = "" if ours is None else f"{ours / hr:.2f}"
        rows.append(f"| {variant} | {'' if ours is None else f'{ours:.4f}'} | {hr:.4f} | {ratio} | "
                    f"{'' if ours_ndcg is None else f'{ours_ndcg:.4f}'} | {ndcg:.4f} |")
    return ["Full ranking beside the published figures (README of the MuLe repository, geonwooko/MULE; same "
            "data, all items ranked, training purchases masked):", "", *rows, ""]


def grid_findings(table) -> list[str]:
    """Where full CML does not beat a variant (``cml_cli.report.findings``); for a grid without
    a CML run, which variant leads each headline metric."""
    from cml_cli.report import findings
    from cml_cli.report.tables import label

    if any(r.variant == table.reference for r in table.rows):
        return findings(table)
    out = []
    for metric in [*table.headline(), *(["full:hr@10"] if "full:hr@10" in table.metrics else [])]:
        scored = [(r.cell(metric).mean, r.variant) for r in table.rows if r.cell(metric).mean is not None]
        if scored:
            value, variant = max(scored)
            out.append(f"{label(metric)}: `{variant}` leads ({value:.4f}; no `{table.reference}` run in this grid yet).")
    return out


def page(study: dict, study_path: Path, results: list[dict], args, command: str, seconds: float) -> str:
    from cml_cli.report import runs_markdown, table_markdown

    s = study["study"]
    lines = [f"# {s['title']}", ""]
    if args.smoke:
        lines += ["> **SMOKE TEST**: every grid ran on the tiny synthetic dataset for one epoch of a small model.",
                  "> These numbers only show that the pipeline works; they say nothing about CML.", ""]
    lines += [s.get("about", "").strip(), "",
              "| | |", "| :--- | :--- |",
              f"| command | `{command}` |",
              f"| study file | `{_rel(study_path)}` (datasets and settings: `experiments/datasets.toml`) |",
              f"| git revision | `{git_revision()}` |",
              f"| machine | {machine()} |",
              f"| date | {time.strftime('%Y-%m-%d %H:%M %z')} |",
              f"| wall time | {seconds / 60:.1f} min (runs reused from earlier invocations take no time) |", ""]
    summary = []
    for res in results:
        if "table" in res:
            summary += [f"- **{res['grid']['label']}**: {x}" for x in grid_findings(res["table"])]
    if summary:
        lines += ["## Findings", "", *summary, ""]
    for res in results:
        grid = res["grid"]
        lines += [f"## {grid['label']}", ""]
        settings = ", ".join(f"{k}={_set_value(v)}" for k, v in grid["settings"].items())
        lines += [f"- seeds: {', '.join(map(str, grid['seeds']))}; settings on top of the dataset's preset: "
                  f"`{settings}`"]
        if res.get("preprocess"):
            lines.append(f"- preprocessed with `{res['preprocess']}`")
        lines += [f"- runs: `{res['ablate']}`"]
        if grid.get("pending"):
            lines.append(f"- **pending** (trained models left out by `--fitted-only`; run the study without it to add "
                         f"them): {', '.join(f'`{v}`' for v in grid['pending'])}")
        if "table" not in res:
            lines += ["", "(dry run: nothing ran)", ""]
            continue
        table = res["table"]
        epochs = sorted({r["epochs_run"] for r in table.runs if r.get("epochs_run") is not None})
        spe = [r["seconds_per_epoch"] for r in table.runs if r.get("seconds_per_epoch")]
        lines += [f"- figures and tables: `{res['report']}`",
                  f"- epochs run: {', '.join(map(str, epochs)) or 'none'} (max {grid['settings'].get('epochs')}, "
                  f"early stopping patience {grid['settings'].get('patience', 'preset')}); "
                  f"seconds per epoch: {min(spe):.1f}–{max(spe):.1f}" if spe else "- epochs run: none",
                  f"- wall time of this grid in this invocation: {res['seconds'] / 60:.1f} min", ""]
        if res.get("tuned"):
            lines += tuned_markdown(res["tuned"], grid)
        lines += [table_markdown(table), *[f"- {x}" for x in grid_findings(table)], ""]
        if res.get("tuned"):
            lines += full_ranking_markdown(table)
        if res.get("published"):
            lines += published_markdown(res["published"], grid)
        elif isinstance(grid.get("published"), dict) and not grid.get("published_dataset"):
            lines += reproduction_markdown(table, grid["published"])
        failed = [f for r in table.rows for f in r.failed]
        if failed:
            lines += ["**Failed runs** (the table leaves them out):", ""]
            lines += [f"- `{f['run']}`: {f['error']} (log `{_rel(Path(f['log']))}`)" for f in failed] + [""]
        for fig in res["figures"]:
            lines += [f"![{grid['label']}: {fig.stem}]({fig.parent.name}/{fig.name})", ""]
        lines += ["<details><summary>Runs</summary>", "", runs_markdown(table), "</details>", ""]
    for path in s.get("blend_grids", []):
        lines += blend_grid_markdown(args.results_dir / path)
    if s.get("benchmark"):
        lines += benchmark_markdown(args.results_dir / s["benchmark"])
    if s.get("notes"):
        lines += [s["notes"].strip(), ""]
    return "\n".join(lines)


def blend_grid_markdown(path: Path, top: int = 8) -> list[str]:
    """A blend grid (``experiments/blend_grid.py --out``): the first member alone, the best
    weightings by full-ranking HR@10 and the best by sampled NDCG@10, all on validation."""
    if not path.is_file():
        return ["## Blend weights on validation", "", f"(no `{_rel(path)}` yet: run `experiments/blend_grid.py`)", ""]
    grid = json.loads(path.read_text())
    alone = next(r for r in grid["table"] if not any(r["weights"][1:]))
    ranked = sorted(grid["table"], key=lambda r: -r["full_hr@10"])[:top]
    chosen = [alone, *ranked, *([] if grid["best_sampled_ndcg@10"] in ranked else [grid["best_sampled_ndcg@10"]])]
    rows = ["| weights (" + ", ".join(grid["members"]) + ") | full HR@10 | full NDCG@10 | sampled NDCG@10 | |",
            "| :--- | ---: | ---: | ---: | :--- |"]
    for r in chosen:
        notes = [n for n, hit in (("the first member alone", r is alone),
                                  ("best full HR@10", r == grid["best_full_hr@10"]),
                                  ("best sampled NDCG@10 (cml tune's objective)", r == grid["best_sampled_ndcg@10"]))
                 if hit]
        rows.append(f"| {', '.join(f'{w:g}' for w in r['weights'])} | {r['full_hr@10']:.4f} | {r['full_ndcg@10']:.4f} | "
                    f"{r['sampled_ndcg@10']:.4f} | {'; '.join(notes)} |")
    return ["## Blend weights on validation", "",
            f"`{grid['command']}` ({grid['users']:,} validation users of `{grid['dataset']}`, {grid['norm']} "
            f"normalisation, {grid['seconds'] / 60:.0f} min; every weighting in `{_rel(path)}`): the first member "
            f"alone, the {top} best weightings by full-ranking HR@10 and the best by sampled NDCG@10.", "", *rows, ""]


def benchmark_markdown(path: Path) -> list[str]:
    """The rows of a benchmark file (``benchmarks/bench_*.py --record``), as a table."""
    if not path.is_file():
        return ["## Timing", "", f"(no `{_rel(path)}` yet: run its benchmark with `--record`)", ""]
    bench = json.loads(path.read_text())
    keys = [k for k in bench["results"][0] if not isinstance(bench["results"][0][k], (dict, list))]
    rows = ["| " + " | ".join(keys) + " |", "|" + " ---: |" * len(keys)]
    rows += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in bench["results"]]
    host = bench["machine"]
    host = ", ".join(f"{k} {v}" for k, v in host.items()) if isinstance(host, dict) else host
    return ["## Timing", "", f"`{bench['command']}` at `{bench['git_revision']}` on {host}, "
            f"recorded {bench['recorded']} (`{_rel(path)}`):", "", *rows, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", help="study names (baselines, ablation, cutoffs) or TOML files")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data, one epoch: checks the pipeline")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--data-dir", type=Path, help="processed datasets [default: data, smoke: runs/smoke/data]")
    parser.add_argument("--runs-dir", type=Path, help="run directories [default: runs/studies, smoke: runs/smoke]")
    parser.add_argument("--results-dir", type=Path,
                        help="results pages [default: experiments/results, smoke: runs/smoke/results]")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "datasets",
                        help="the published datasets [default: ../shared/datasets]")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (cml ablate --jobs)")
    parser.add_argument("--fitted-only", action="store_true",
                        help="leave out the trained models a grid lists under `trained` (the page marks them pending)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra setting for every run (e.g. epochs=5); changes which runs are reused")
    args = parser.parse_args(argv)
    base = REPO / "runs" / "smoke" if args.smoke else None
    args.data_dir = (args.data_dir or (base / "data" if base else REPO / "data")).resolve()
    args.runs_dir = (args.runs_dir or (base if base else REPO / "runs" / "studies")).resolve()
    args.results_dir = (args.results_dir or (base / "results" if base else HERE / "results")).resolve()
    sys.path.insert(0, str(REPO))
    datasets = tomllib.loads((HERE / "datasets.toml").read_text())
    command = study_command(argv or sys.argv[1:])
    status = 0
    for name in args.studies:
        study_path, study = load_study(name)
        slug = study["study"]["slug"]
        started = time.time()
        results = [run_study_grid(g, args, args.results_dir / slug, slug, study["study"].get("figures", ["bars"]))
                   for g in plan_grids(study, datasets, args)]
        if args.dry_run:
            continue
        status = max(status, *(r.get("exit", 0) for r in results))
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"{slug}.md"
        out.write_text(page(study, study_path, results, args, command, time.time() - started))
        print(f"wrote {_rel(out)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
