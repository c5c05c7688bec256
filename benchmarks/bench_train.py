"""Speed and memory of CML training and evaluation (issue targets, 2-core CPU):

* retailrocket: <= 1 s per epoch including the validation pass;
* tmall (MB-CGCN files, ~1.13 M interactions): <= 15 s per epoch; peak RSS <= 3 GiB;
* evaluating every test user (sampled 1+99): <= 2 s;
* s/epoch when the tmall interactions are subsampled to 25 %, 50 %, 100 %.

Each dataset is preprocessed from ../shared/datasets into --data-dir when missing. Every
measurement runs in a fresh subprocess so that peak RSS is that run's own. Results are
printed as JSON and written to experiments/results/benchmarks.json (with the command, git
revision and machine) when --record is given.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
SOURCES = {
    "retailrocket": ("retailrocket", SHARED / "retailrocket" / "cml-format", "cml"),
    "tmall-mbcgcn": ("tmall", SHARED / "tmall" / "mbcgcn-format", "mbcgcn"),
}
TARGETS = {"retailrocket": 1.0, "tmall-mbcgcn": 15.0}


def ensure_dataset(name: str, data_dir: Path, fraction: float = 1.0) -> str:
    """Preprocess ``name`` (optionally keeping ``fraction`` of every behavior's training
    interactions, seeded) and return the processed dataset's name."""
    from cml_cli.data.preprocess import preprocess
    from cml_cli.data.store import load_dataset, save_dataset

    full = data_dir / name
    if not (full / "manifest.json").is_file():
        preset, source, fmt = SOURCES[name]
        preprocess(preset, source, fmt=fmt, name=name, data_dir=data_dir)
    if fraction >= 1.0:
        return name
    sub = f"{name}-{int(fraction * 100)}pct"
    if not (data_dir / sub / "manifest.json").is_file():
        import numpy as np

        ds = load_dataset(name, data_dir)
        rng = np.random.default_rng(0)
        for b in ds.behaviors:
            inter = ds.train[b]
            ds.train[b] = inter.select(rng.random(len(inter)) < fraction)
        ds.name = sub
        save_dataset(ds, data_dir)
    return sub


def measure(dataset: str, data_dir: Path, epochs: int, overrides: list[str]) -> dict:
    """Train ``epochs`` epochs in this process; report s/epoch, eval time and peak RSS."""
    import torch

    from cml_cli.config import resolve_config
    from cml_cli.data.store import load_dataset, read_manifest
    from cml_cli.evaluate import evaluate_sampled
    from cml_cli.train.cml_trainer import CMLTrainer
    from cml_cli.train.loop import train

    preset = read_manifest(data_dir / dataset).get("preset", "default")
    cfg = resolve_config(preset, overrides=dict(o.split("=", 1) for o in overrides) | {"epochs": epochs})
    runs = Path("/tmp") / "cml-bench-runs"
    result = train(dataset, cfg, data_dir=data_dir, runs_dir=runs, name=dataset, force=True)
    log = [json.loads(line) for line in (runs / dataset / "metrics.jsonl").read_text().splitlines()]
    ds = load_dataset(dataset, data_dir)
    trainer = CMLTrainer(ds, cfg, torch.device("cpu"))
    started = time.perf_counter()
    evaluate_sampled(trainer.scorer(), ds.test, cfg.ks)
    eval_s = time.perf_counter() - started
    return {
        "dataset": dataset,
        "interactions": sum(len(ds.train[b]) for b in ds.behaviors),
        "epochs": epochs,
        "seconds_per_epoch": [round(r["seconds"], 3) for r in log],
        "median_seconds_per_epoch": sorted(r["seconds"] for r in log)[len(log) // 2],
        "test_eval_seconds": round(eval_s, 3),
        "n_test_users": len(ds.test),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "test_hr@10_after": result["test"]["hr@10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--record", action="store_true", help="write experiments/results/benchmarks.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.data_dir, args.epochs, args.overrides)))
        return
    plan = [ensure_dataset("retailrocket", args.data_dir)]
    plan += [ensure_dataset("tmall-mbcgcn", args.data_dir, f) for f in (0.25, 0.5, 1.0)]
    rows = []
    for dataset in plan:
        cmd = [sys.executable, __file__, "--one", dataset, "--data-dir", str(args.data_dir),
               "--epochs", str(args.epochs), *sum((["--set", o] for o in args.overrides), [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        target = TARGETS.get(dataset)
        if target is not None:
            row["target_seconds_per_epoch"] = target
            row["meets_target"] = row["median_seconds_per_epoch"] <= target
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.record:
        from cml_cli.train.rundir import git_revision, machine

        out = ROOT / "experiments" / "results" / "benchmarks.json"
        out.write_text(json.dumps({
            "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
            "git_revision": git_revision(), "machine": machine(),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": rows,
        }, indent=2) + "\n")
        print(f"recorded in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
