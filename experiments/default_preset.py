#!/usr/bin/env python
"""The `default` preset chosen across datasets, leave-one-dataset-out (issue 21, items 1-2).

    python experiments/default_preset.py --datasets retailrocket,tmall-mbcgcn,tmall,ijcai,synthetic \
        --data-dir data --runs-dir runs/default-preset --out experiments/results

Every candidate (a few CML configurations, each a set of overrides on top of the `default`
preset) is trained once (one seed, early stopping on validation NDCG@10) on every dataset,
beside popularity and, for a dataset with a preset of its own, CML at that preset with the same
epoch budget. Each run's best checkpoint is also ranked against all items on the validation
split. Then, for each dataset D held out in turn, the candidate with the best mean rank over
the other datasets (validation NDCG@10 of full ranking by default, `--select sampled` for the
1+99 protocol; ties: the higher mean of the value divided by the dataset's best) is compared on
D's test split with D's own preset, under both protocols, with personalization@10, coverage@10
and popularity's full HR@10, and the two conditions of the issue are checked: full HR@10 at
least popularity's, personalization@10 at least 0.5.

Runs are ordinary run directories, <runs-dir>/<dataset>/<candidate>-s<seed>, trained through the
library (cml_cli.train.loop); a finished run of the same configuration is reused and an
interrupted one resumed, so the study can be stopped and rerun. A dataset missing from
--data-dir is preprocessed: the shared ones from --shared (experiments/datasets.toml says
where and how), `synthetic` as `cml preprocess --dataset synthetic` (tiny), `synthetic-SIZE` with
`--size SIZE`. Writes <out>/default-preset.md and .json and prints the preset the study
recommends: the candidate chosen for the most held-out datasets (ties: the best mean rank over
all datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "experiments"
sys.path[:0] = [str(REPO), str(HERE)]  # cml_cli, and run_study for the page header

from cml_cli.config import PROJECT, PROJECT_CHANGES, RunConfig, compose, dataset_preset_name  # noqa: E402

PERSONALIZATION_FLOOR = 0.5  # the "done when" condition
SELECT = {"full": ("valid_full", "ndcg@10"), "sampled": ("valid", "ndcg@10")}


def _tuned(name: str) -> dict[str, Any]:
    """A dataset's tuned values (config.PROJECT_CHANGES) without what every preset shares."""
    return {k: v for k, v in PROJECT_CHANGES[name].items() if k not in PROJECT}


# Each candidate: RunConfig overrides on top of the `default` preset.
CANDIDATES: dict[str, dict[str, Any]] = {
    # The `default` preset before this study (RunConfig's values), spelled out: the preset
    # itself is now the study's choice.
    "current": dict(lr=1e-3, max_lr=5e-3, reg=1e-3, beta=5e-3, dim=16, layers=3),
    "tmall": _tuned("tmall"),
    "retailrocket": _tuned("retailrocket"),
    "d64-l2": dict(dim=64, layers=2, reg=3e-5, lr=1e-3, max_lr=1e-2, beta=5e-4),
}


def _arg(path: Path) -> str:
    """A path as a recorded command shows it: relative to the repository."""
    return os.path.relpath(Path(path).resolve(), REPO)


def study_command(argv: list[str]) -> str:
    """This script's command line with its path options relative to the repository."""
    from run_study import study_command as command

    return command(argv, "experiments/default_preset.py", ("--data-dir", "--runs-dir", "--out", "--shared"))


# --------------------------------------------------------------------------- data and runs


def ensure_dataset(name: str, args) -> Path:
    """``<data-dir>/<name>``, preprocessed first when it is missing."""
    from cml_cli.data.preprocess import ReadOptions, preprocess

    path = Path(args.data_dir) / name
    if (path / "manifest.json").is_file():
        return path
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    if name == "synthetic" or name.startswith("synthetic-"):
        print(f"preprocessing {name} into {_arg(path)}", file=sys.stderr, flush=True)
        preprocess("synthetic", None, ReadOptions(size=name.partition("-")[2] or "tiny"), name=name,
                   data_dir=Path(args.data_dir))
        return path
    shared = tomllib.loads((HERE / "datasets.toml").read_text())["datasets"]
    if name not in shared:
        raise SystemExit(f"error: {name}: not in {_arg(args.data_dir)} and not a dataset of experiments/datasets.toml "
                         f"({', '.join(shared)}) or synthetic[-SIZE]")
    spec = shared[name]
    source = Path(args.shared) / spec["source"]
    if not source.exists():
        raise SystemExit(f"error: {source}: missing (pass --shared DIR, the folder of the published datasets)")
    print(f"preprocessing {name} into {_arg(path)}", file=sys.stderr, flush=True)
    preprocess(name, source, ReadOptions(fmt=spec["format"]), data_dir=Path(args.data_dir),
               valid=not spec.get("no_valid"))
    return path


def _same_config(run_dir: Path, cfg: RunConfig) -> bool:
    from cml_cli.train.rundir import RunDir

    found = RunDir(run_dir).read_config_dict()
    want = cfg.to_dict()
    return found is not None and {k: v for k, v in found.items() if k != "device"} == \
        {k: v for k, v in want.items() if k != "device"}


def ensure_run(run_dir: Path, dataset: Path, cfg: RunConfig) -> dict[str, Any]:
    """The final metrics of ``cfg`` trained on ``dataset`` in ``run_dir``: reused when that run
    finished with the same configuration, resumed when it was interrupted, trained otherwise."""
    from cml_cli.train.loop import Watch, resume, train
    from cml_cli.train.progress import LineProgress
    from cml_cli.train.rundir import RunDir

    run = RunDir(run_dir)
    same = run_dir.is_dir() and _same_config(run_dir, cfg)
    final = run.read_final() if same else None
    if final is not None:
        print(f"reused {_arg(run_dir)}", file=sys.stderr, flush=True)
        return final
    print(f"training {_arg(run_dir)}", file=sys.stderr, flush=True)
    progress = LineProgress(sys.stderr, every=60.0)
    if same and (run.last.is_file() or run.previous.is_file()):
        return resume(run_dir, progress=progress)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return train(dataset, cfg, runs_dir=run_dir.parent, name=run_dir.name, force=True, watch=Watch(progress))


def valid_full(run_dir: Path) -> dict[str, float]:
    """Full-ranking metrics at 10 of the run's best checkpoint on the validation split (read
    back from ``eval-valid-full-best.json`` when it is newer than the run's final metrics)."""
    from cml_cli.train.evaluate_run import evaluate_run

    saved, final = run_dir / "eval-valid-full-best.json", run_dir / "metrics.json"
    if saved.is_file() and saved.stat().st_mtime >= final.stat().st_mtime:
        return json.loads(saved.read_text())["valid"]["full"]
    return evaluate_run(run_dir, split="valid", protocol="full", ks=[10])["valid"]["full"]


def record(label: str, run_dir: Path, final: dict[str, Any], with_valid: bool) -> dict[str, Any]:
    """What the page reads of one run."""
    test, full = final["test"], final["test"]["full"]
    out = {"config": label, "run": _arg(run_dir), "epochs_run": final["epochs_run"], "best_epoch": final["best_epoch"],
           "seconds_per_epoch": final["seconds_per_epoch"],
           "test": {"hr@10": test["hr@10"], "ndcg@10": test["ndcg@10"]},
           "test_full": {k: full[f"{k}@10"] for k in ("hr", "ndcg", "personalization", "coverage")},
           "valid": {"ndcg@10": final["valid"].get("ndcg@10")}}
    out["test_full"] = {f"{k}@10": v for k, v in out["test_full"].items()}
    if with_valid:
        out["valid_full"] = {"ndcg@10": valid_full(run_dir)["ndcg@10"]}
    return out


def run_dataset(name: str, args, candidates: list[str]) -> dict[str, Any]:
    """Every candidate, popularity and (where there is one) the dataset's preset on ``name``."""
    from cml_cli.data.store import read_manifest

    path = ensure_dataset(name, args)
    budget = {"epochs": args.epochs, "patience": args.patience, "seed": args.seed}
    root = Path(args.runs_dir) / name
    out: dict[str, Any] = {"dataset": name, "candidates": {}}
    for cand in candidates:
        cfg = compose("default", [{"model": "cml"}, CANDIDATES[cand], budget]).validate()
        run_dir = root / f"{cand}-s{args.seed}"
        out["candidates"][cand] = record(cand, run_dir, ensure_run(run_dir, path, cfg), True)
    cfg = compose("default", [{"model": "popularity"}, budget]).validate()
    run_dir = root / f"popularity-s{args.seed}"
    out["popularity"] = record("popularity", run_dir, ensure_run(run_dir, path, cfg), False)
    preset = dataset_preset_name(read_manifest(path))
    out["preset"] = None if preset == "default" else preset
    if out["preset"]:
        cfg = compose(preset, [{"model": "cml"}, budget]).validate()
        run_dir = root / f"preset-{preset}-s{args.seed}"
        out["preset_run"] = record(f"preset {preset}", run_dir, ensure_run(run_dir, path, cfg), True)
    return out


# --------------------------------------------------------------------------- choosing


def _value(rec: dict[str, Any], select: str) -> float:
    part, metric = SELECT[select]
    return float(rec[part][metric])


def mean_ranks(results: list[dict], candidates: list[str], select: str) -> dict[str, tuple[float, float]]:
    """Each candidate's (mean rank, mean normalised value) over ``results``: rank 1 is the best
    validation value on a dataset (ties share the better rank), normalised = value / the best."""
    ranks: dict[str, list[float]] = {c: [] for c in candidates}
    norms: dict[str, list[float]] = {c: [] for c in candidates}
    for res in results:
        values = {c: _value(res["candidates"][c], select) for c in candidates}
        best = max(values.values())
        for c, v in values.items():
            ranks[c].append(1 + sum(1 for w in values.values() if w > v))
            norms[c].append(v / best if best > 0 else 0.0)
    return {c: (sum(ranks[c]) / len(ranks[c]), sum(norms[c]) / len(norms[c])) for c in candidates if ranks[c]}


def choose(results: list[dict], candidates: list[str], select: str) -> str | None:
    """The best candidate over ``results``: lowest mean rank, then highest mean normalised
    value, then the order of :data:`CANDIDATES`; None without results."""
    scores = mean_ranks(results, candidates, select)
    if not scores:
        return None
    return min(candidates, key=lambda c: (scores[c][0], -scores[c][1], candidates.index(c)))


def held_out(results: list[dict], candidates: list[str], select: str) -> list[dict[str, Any]]:
    """For each dataset: the candidate chosen without it, and what it is compared with there."""
    out = []
    for res in results:
        others = [r for r in results if r is not res]
        chosen = choose(others, candidates, select)
        if res.get("preset_run"):
            against, why = res["preset_run"], "its own preset"
        else:
            best = choose([res], candidates, select)
            against, why = res["candidates"][best], "no preset of its own: the best candidate on it"
        row = {"dataset": res["dataset"], "chosen": chosen, "against": against["config"], "against_why": why,
               "popularity_full_hr@10": res["popularity"]["test_full"]["hr@10"], "runs": {}}
        for key, rec in (("chosen", res["candidates"].get(chosen)), ("against", against)):
            if rec is not None:
                row["runs"][key] = {**rec, **conditions(rec, row["popularity_full_hr@10"])}
        out.append(row)
    return out


def conditions(rec: dict[str, Any], popularity_hr: float) -> dict[str, bool]:
    """The issue's two conditions on a run's test split."""
    return {"full_hr_at_least_popularity": rec["test_full"]["hr@10"] >= popularity_hr,
            "personalization_at_least_0.5": rec["test_full"]["personalization@10"] >= PERSONALIZATION_FLOOR}


def recommend(choices: list[dict], results: list[dict], candidates: list[str], select: str) -> str | None:
    """The candidate chosen for the most held-out datasets; ties: best mean rank over all."""
    picked = [c["chosen"] for c in choices if c["chosen"] is not None]
    if not picked:
        return choose(results, candidates, select)
    overall = mean_ranks(results, candidates, select)
    return max(dict.fromkeys(picked), key=lambda c: (picked.count(c), -overall[c][0], overall[c][1]))


# --------------------------------------------------------------------------- the page


def _f(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _yes(x: bool) -> str:
    return "yes" if x else "**no**"


def held_out_markdown(choices: list[dict]) -> list[str]:
    lines = ["| held-out dataset | configuration | sampled HR@10 | sampled NDCG@10 | full HR@10 | full NDCG@10 | "
             "personalization@10 | coverage@10 | popularity full HR@10 | full HR@10 >= popularity | "
             "personalization@10 >= 0.5 |", "| :--- | :--- |" + " ---: |" * 7 + " :---: | :---: |"]
    for c in choices:
        for key in ("chosen", "against"):
            rec = c["runs"].get(key)
            if rec is None:
                lines.append(f"| {c['dataset']} | (no other dataset to choose from) |" + " |" * 9)
                continue
            why = f"chosen without {c['dataset']}" if key == "chosen" else c["against_why"]
            name = f"`{rec['config']}` ({why})"
            t, f = rec["test"], rec["test_full"]
            lines.append(f"| {c['dataset']} | {name} | {_f(t['hr@10'])} | {_f(t['ndcg@10'])} | {_f(f['hr@10'])} | "
                         f"{_f(f['ndcg@10'])} | {_f(f['personalization@10'], 3)} | {_f(f['coverage@10'])} | "
                         f"{_f(c['popularity_full_hr@10'])} | {_yes(rec['full_hr_at_least_popularity'])} | "
                         f"{_yes(rec['personalization_at_least_0.5'])} |")
    return lines


def runs_markdown(results: list[dict]) -> list[str]:
    lines = ["| dataset | configuration | valid NDCG@10 (sampled) | valid NDCG@10 (full) | test HR@10 (sampled) | "
             "test HR@10 (full) | personalization@10 | coverage@10 | epochs (best) | s/epoch | run |",
             "| :--- | :--- |" + " ---: |" * 8 + " :--- |"]
    for res in results:
        recs = [*res["candidates"].values(), *([res["preset_run"]] if res.get("preset_run") else []), res["popularity"]]
        for rec in recs:
            f = rec["test_full"]
            lines.append(f"| {res['dataset']} | `{rec['config']}` | {_f(rec['valid']['ndcg@10'])} | "
                         f"{_f(rec.get('valid_full', {}).get('ndcg@10'))} | {_f(rec['test']['hr@10'])} | "
                         f"{_f(f['hr@10'])} | {_f(f['personalization@10'], 3)} | {_f(f['coverage@10'])} | "
                         f"{rec['epochs_run']} ({rec['best_epoch']}) | {rec['seconds_per_epoch']:.1f} | "
                         f"`{rec['run']}` |")
    return lines


def page(study: dict[str, Any]) -> str:
    from run_study import git_revision, machine

    args, meta = study["args"], study["meta"]
    cands = "\n".join(f"- `{c}`: " + (", ".join(f"{k}={v}" for k, v in CANDIDATES[c].items()) or "no overrides")
                      for c in args["candidates"])
    lines = ["# The `default` preset, chosen leave-one-dataset-out", "",
             "CML configurations (candidates: overrides on top of the `default` preset) trained on every dataset "
             "with one seed; for each dataset held out in turn, the candidate with the best mean rank of "
             f"validation NDCG@10 ({args['select']} ranking) over the other datasets is compared on the held-out "
             "dataset's test split with that dataset's own preset (same epoch budget).", "",
             "| | |", "| :--- | :--- |", f"| command | `{meta['command']}` |", f"| git revision | `{git_revision()}` |",
             f"| machine | {machine()} |", f"| date | {time.strftime('%Y-%m-%d %H:%M %z')} |",
             f"| seed | {args['seed']} |",
             f"| budget | at most {args['epochs']} epochs per run, early stopping after {args['patience']} epochs "
             "without a better validation NDCG@10 (sampled) |",
             f"| wall time | {meta['seconds'] / 60:.1f} min (runs reused from earlier invocations take no time) |", "",
             "Candidates:", "", cands, "",
             f"**Recommended `default` preset: `{study['recommended']}`** (chosen for the most held-out datasets; "
             "ties: the best mean rank over all datasets).", "",
             "## Each dataset held out", "", *held_out_markdown(study["held_out"]), "",
             "Test split; sampled = 1 held-out item + 99 sampled negatives, full = all items ranked (the user's "
             "known target items masked); personalization@10 and coverage@10 of full ranking.", "",
             "## Every run", "", *runs_markdown(study["results"]), "", *early_stops(study)]
    return "\n".join(lines)


def early_stops(study: dict[str, Any]) -> list[str]:
    """A note naming the CML runs that early stopping ended with their best epoch within the
    first ``patience`` epochs: a dip of validation NDCG@10 while a cyclic learning rate rises
    ends them before they learn, so their figures understate the configuration."""
    patience, cap = study["args"]["patience"], study["args"]["epochs"]
    runs = [(res["dataset"], r) for res in study["results"]
            for r in [*res["candidates"].values(), res.get("preset_run")] if r]
    early = [f"{name} `{r['config']}` (stopped at epoch {r['epochs_run']}, best {r['best_epoch']})"
             for name, r in runs if r["epochs_run"] < cap and r["best_epoch"] <= patience]
    if not early:
        return []
    return ["**Stopped in their first epochs:** " + "; ".join(early) + f". Their best epoch lies within the "
            f"patience ({patience}) of the start, so early stopping ended them a few epochs in: either the "
            "configuration overfits at once, or validation NDCG@10 dips while the cyclic learning rate rises "
            "(on the MB-CGCN files the tmall preset's runs of study 6, `ablation-backbone.md`, kept improving up "
            "to their 30-epoch cap with a patience of 15). These rows may understate their configurations.", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", required=True, help="comma-separated processed dataset names")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"subset of {', '.join(CANDIDATES)}")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "default-preset")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where default-preset.md/.json go")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--select", choices=tuple(SELECT), default="full",
                        help="validation NDCG@10 of full (default) or sampled ranking chooses the candidate")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        parser.error(f"--candidates: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(CANDIDATES)}")
    started = time.time()
    results = [run_dataset(d.strip(), args, candidates) for d in args.datasets.split(",") if d.strip()]
    choices = held_out(results, candidates, args.select)
    study = {"args": {**{k: v for k, v in vars(args).items() if not isinstance(v, Path)}, "candidates": candidates},
             "meta": {"command": study_command(argv), "seconds": time.time() - started},
             "candidates": {c: CANDIDATES[c] for c in candidates}, "results": results, "held_out": choices,
             "recommended": recommend(choices, results, candidates, args.select)}
    from cml_cli.data.store import write_json_atomic, write_text_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "default-preset.md", page(study))
    write_json_atomic(args.out / "default-preset.json", study)
    print(f"wrote {_arg(args.out / 'default-preset.md')} and .json", file=sys.stderr)
    print(f"recommended default preset: {study['recommended']} {json.dumps(CANDIDATES[study['recommended']])}")
    return 0


def cli() -> int:
    """:func:`main` with one line on stderr for a known failure (rerun the same command to
    continue: finished runs are reused, interrupted ones resumed)."""
    from cml_cli.errors import CMLError, Interrupted

    try:
        return main()
    except CMLError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
