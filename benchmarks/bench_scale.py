"""Growth: one CML epoch on the synthetic Taobao-like log at several sizes (issue 18).

The synthetic generator makes a log of about the requested number of training interactions
(``cml preprocess --dataset synthetic --size 2M``: four behaviors, a view >> cart, fav >> buy
funnel, power-law popularity; users and items grow with the size). Each size is trained at the
``default`` preset in a fresh process per side (base and new alternately, as in
``bench_train.py``); the figures are the epoch time (training plus validation, median over the
epochs after the first, or the only one), the cost per training interaction and, between
consecutive sizes, the time ratio against the data ratio. Target: doubling the data at most
2.2x the time (``--max-growth``, per doubling). Peak RSS is each run's own.

    python benchmarks/bench_scale.py --record                    # 1M and 2M, base and new
    python benchmarks/bench_scale.py --sizes 9.2M --sides new --epochs 1 --record   # the 9 M point
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from sidebyside import (
    BASE_REVISION,
    RESULTS,
    ROOT,
    BenchError,
    Job,
    alternate,
    compare,
    entry,
    machine_state,
    main_guard,
    preprocess,
    record,
    show_row,
    side_seconds,
    sides,
    working_tree,
)


def dataset_name(size: str) -> str:
    """``"2M"`` -> ``"synthetic-2m"`` (a dataset name: one path component)."""
    return "synthetic-" + size.strip().lower()


def interactions(data_dir: Path, name: str) -> int:
    """Training interactions of a processed dataset, all behaviors."""
    manifest = json.loads((data_dir / name / "manifest.json").read_text())
    return sum(manifest["train_interactions"].values())


def growth(points: list[dict], max_growth: float) -> list[dict]:
    """Between consecutive sizes: data ratio, time ratio and whether the time grew at most
    ``max_growth`` per doubling of the data (``time ratio <= max_growth ** log2(data ratio)``)."""
    out = []
    for small, large in zip(points, points[1:]):
        data = large["interactions"] / small["interactions"]
        seconds = large["seconds_per_epoch"] / small["seconds_per_epoch"]
        out.append({"from": small["size"], "to": large["size"], "data_ratio": round(data, 3),
                    "time_ratio": round(seconds, 3),
                    "meets_target": seconds <= max_growth ** math.log2(data) if data > 1 else None})
    return out


def side_points(sizes: list[str], counts: dict[str, int], rows: dict[str, dict[str, list[dict]]], side: str) -> list[dict]:
    """One side's epoch time and cost per training interaction at each size."""
    points = []
    for size in sizes:
        seconds = side_seconds(rows[size][side])
        points.append({"size": size, "interactions": counts[size], "seconds_per_epoch": round(seconds, 4),
                       "microseconds_per_interaction": round(1e6 * seconds / counts[size], 3),
                       "peak_rss_mib": max(r["peak_rss_mib"] for r in rows[size][side])})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,2M", help="training-interaction counts, comma-separated")
    parser.add_argument("--base", default=BASE_REVISION, help="base revision [default: %(default)s]")
    parser.add_argument("--sides", default="base,new", help="base,new | new | base")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (the first is dropped when > 1)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per side and size")
    parser.add_argument("--max-growth", type=float, default=2.2, help="target time ratio per doubling")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--record", action="store_true", help=f"merge into {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not sizes or args.epochs < 1 or args.rounds < 1:
        raise BenchError("--sizes must name a size, --epochs and --rounds must be positive", 2)
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    state, rows, counts = machine_state(), {}, {}
    with sides(args.sides.split(","), args.base) as pair, tempfile.TemporaryDirectory(prefix="cml-bench-runs-") as runs:
        for size in sizes:
            name = dataset_name(size)
            preprocess(working_tree(), data_dir, name, "--dataset", "synthetic", "--size", size)
            counts[size] = interactions(data_dir, name)
            print(f"{name}: {counts[size]:,} training interactions", file=sys.stderr, flush=True)
            job = Job(name, args.epochs, tuple(args.overrides), args.device)
            rows[size] = alternate(pair, job, args.rounds, data_dir, Path(runs), show_row)
        summary: dict = {"sizes": sizes, "interactions": counts}
        for side in (s.label for s in pair):
            points = side_points(sizes, counts, rows, side)
            summary[side] = {"points": points, "growth": growth(points, args.max_growth)}
            for p in points:
                print(f"{side:<4} {p['size']:>6} {p['interactions']:>10,} interactions  {p['seconds_per_epoch']:9.3f} "
                      f"s/epoch  {p['microseconds_per_interaction']:8.3f} us/interaction  peak {p['peak_rss_mib']:.0f} MiB")
            for g in summary[side]["growth"]:
                print(f"{side:<4} {g['from']} -> {g['to']}: {g['data_ratio']}x the data, {g['time_ratio']}x the time "
                      f"[{'met' if g['meets_target'] else 'MISSED'}: <= {args.max_growth}x per doubling]")
        if len(pair) == 2:
            summary["speedup"] = {size: compare(rows[size])["speedup"] for size in sizes}
        if args.record:
            flat = {f"{size}/{side}": rs for size, by_side in rows.items() for side, rs in by_side.items()}
            key = "scale " + ",".join(sizes)
            record({key: entry(pair, ["python", "benchmarks/bench_scale.py", *sys.argv[1:]], state, summary, flat)})
            print(f"recorded in {RESULTS} under '{key}'", file=sys.stderr)


if __name__ == "__main__":
    main_guard(main)
