"""Training speed of a base revision and this working tree, side by side (issue 18).

Cases (``--cases``, default all of them, in this order):

* ``retailrocket``: CML at the dataset's preset; target: ``new`` at least 5x faster than the base;
* ``tmall-mbcgcn`` (the MB-CGCN files, ~1.15 M interactions): CML at the preset; targets: at
  least 4.5x faster and at most 1.5 s per epoch;
* ``tmall`` (the CML files, without page views): CML at the preset; target: at most 3 s per epoch;
* ``graphs``: one epoch of every other graph model (LightGCN on purchases and merged, MB-CGCN
  with its pre-training skipped, CRGCN) on tmall-mbcgcn at the model's own settings.

Every case reports seconds per epoch of each side (training plus the validation pass, median
over the epochs after the first), the speed-up base/new overall and per round, the
validation pass alone (evaluation time: sampled 1+99 ranking of every validation user) and each
run's peak RSS. Targets are ratios measured in the same run, never timed tests: the machine's
speed drifts by up to 2x over a day. ``--sides new`` times the working tree alone.

    python benchmarks/bench_train.py --cases retailrocket --rounds 1     # a quick look (~2 min)
    python benchmarks/bench_train.py --record                          # all cases, into benchmarks.json
    python benchmarks/bench_train.py --base HEAD~3 --sides base,new --cases tmall-mbcgcn

Datasets are preprocessed from ../shared/datasets into ``--data-dir`` by the working tree's
code when missing; both sides read the same processed files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sidebyside import (
    BASE_REVISION,
    RESULTS,
    ROOT,
    SHARED,
    BenchError,
    Job,
    Side,
    alternate,
    compare,
    entry,
    goals,
    machine_state,
    main_guard,
    preprocess,
    record,
    show_row,
    sides,
    working_tree,
)

# name -> (preset family, source directory, format)
DATASETS = {
    "retailrocket": ("retailrocket", SHARED / "retailrocket" / "cml-format", "cml"),
    "tmall-mbcgcn": ("tmall", SHARED / "tmall" / "mbcgcn-format", "mbcgcn"),
    "tmall": ("tmall", SHARED / "tmall" / "cml-format", "cml"),
}


@dataclass(frozen=True)
class Case:
    """A dataset, the model settings timed on it (label -> ``--set`` overrides), epochs per
    run, rounds of alternation and the targets."""

    dataset: str
    variants: tuple[tuple[str, tuple[str, ...]], ...]
    epochs: int
    rounds: int
    min_speedup: float | None = None
    max_seconds: float | None = None


CML = (("cml", ()),)
CASES = {
    "retailrocket": Case("retailrocket", CML, epochs=8, rounds=2, min_speedup=5.0),
    "tmall-mbcgcn": Case("tmall-mbcgcn", CML, epochs=4, rounds=2, min_speedup=4.5, max_seconds=1.5),
    "tmall": Case("tmall", CML, epochs=4, rounds=2, max_seconds=3.0),
    "graphs": Case("tmall-mbcgcn", (
        ("lightgcn-target", ("model=lightgcn-target",)),
        ("lightgcn-merged", ("model=lightgcn-merged",)),
        ("mbcgcn", ("model=mbcgcn", "pretrain_epochs=0")),  # time the cascade's own epochs
        ("crgcn", ("model=crgcn",)),
    ), epochs=3, rounds=1),
}


def ensure_dataset(side: Side, name: str, data_dir: Path) -> None:
    """Preprocess ``name`` from the shared datasets with ``side``'s code when it is missing."""
    family, source, fmt = DATASETS[name]
    if not source.is_dir():
        raise BenchError(f"{source}: not found (the shared datasets are needed for case '{name}')", 2)
    preprocess(side, data_dir, name, "--dataset", family, "--source", str(source), "--format", fmt)


def run_case(name: str, case: Case, pair: list[Side], args: argparse.Namespace, runs_dir: Path) -> dict:
    """Time every variant of ``case`` on every side; the recorded entry of the case."""
    ensure_dataset(working_tree(), case.dataset, args.data_dir)
    epochs, rounds = args.epochs or case.epochs, args.rounds or case.rounds
    print(f"{name}: {case.dataset}, {epochs} epochs x {rounds} round(s) per side", file=sys.stderr, flush=True)
    state = machine_state()
    summary, rows = {}, {}
    for label, overrides in case.variants:
        job = Job(case.dataset, epochs, (*overrides, *args.overrides), args.device)
        rows[label] = alternate(pair, job, rounds, args.data_dir, runs_dir, show_row)
        summary[label] = compare(rows[label])
        summary[label]["valid_seconds"] = {side: rs[0]["median_valid_seconds"] for side, rs in rows[label].items()}
        summary[label]["peak_rss_mib"] = {side: max(r["peak_rss_mib"] for r in rs) for side, rs in rows[label].items()}
        if label == "cml":
            summary[label]["goals"] = goals(summary[label], case.min_speedup, case.max_seconds)
    flat = {f"{label}/{side}": rs for label, by_side in rows.items() for side, rs in by_side.items()}
    return entry(pair, ["python", "benchmarks/bench_train.py", *sys.argv[1:]], state, summary, flat)


def report(name: str, result: dict) -> None:
    """The case's summary, one line per variant, on stdout."""
    for label, s in result["summary"].items():
        parts = [f"{side} {s[f'{side}_seconds_per_epoch']:.3f} s" for side in ("base", "new")
                 if f"{side}_seconds_per_epoch" in s]
        if "speedup" in s:
            parts.append(f"speed-up {s['speedup']:.2f}x (rounds {', '.join(map(str, s['speedup_per_round']))})")
        met = "  ".join(f"[{'met' if ok else 'MISSED'}] {goal}" for goal, ok in s.get("goals", {}).items())
        print(f"{name:<13} {label:<16} " + "  ".join(parts) + (f"  {met}" if met else ""), flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--base", default=BASE_REVISION, help="base revision [default: %(default)s, issue 18's base]")
    parser.add_argument("--sides", default="base,new", help="base,new | new (the working tree alone) | base")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per run [default: the case's]")
    parser.add_argument("--rounds", type=int, default=0, help="runs per side [default: the case's]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto [default: cpu]")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--record", action="store_true", help=f"merge the cases into {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or not args.cases:
        raise BenchError(f"--cases: unknown case(s) {', '.join(unknown) or '(none given)'} (choose from "
                         f"{', '.join(CASES)})", 2)
    if args.epochs < 0 or args.rounds < 0:
        raise BenchError("--epochs and --rounds must be positive", 2)
    args.data_dir = args.data_dir.resolve()
    return args


def main() -> None:
    args = parse()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    with sides(args.sides.split(","), args.base) as pair, tempfile.TemporaryDirectory(prefix="cml-bench-runs-") as runs:
        for name in args.cases:
            results[name] = run_case(name, CASES[name], pair, args, Path(runs))
            report(name, results[name])
            if args.record:  # case by case: an interrupted benchmark keeps what it finished
                record({name: results[name]})
    if args.record:
        print(f"recorded in {RESULTS}", file=sys.stderr)
    else:
        print(json.dumps({n: r["summary"] for n, r in results.items()}, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main_guard(main)
