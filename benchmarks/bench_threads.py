"""Several independent ``cml train`` processes at once: how much slower is each epoch?

For every setting and every count in ``--procs`` (default 1 and 3), that many trainings of the
same dataset start together; the figure is the median over processes of each one's median
epoch time, and the slow-down is that figure against the same setting with one process.
Settings (``--settings``, comma-separated, each ``SIDE`` or ``SIDE:VAR=VALUE+VAR=VALUE``):

* ``base``: the base revision as it was (OpenMP threads on every core, OpenMP's default
  waiting: threads spin before they sleep);
* ``new``: the working tree at its defaults;
* ``new:CML_THREADS=1``: the working tree with one thread per process.

    python benchmarks/bench_threads.py --record
    python benchmarks/bench_threads.py --settings new,new:OMP_WAIT_POLICY=ACTIVE --procs 1,3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sidebyside import (
    BASE_REVISION,
    RESULTS,
    ROOT,
    BenchError,
    Job,
    collect,
    entry,
    machine_state,
    main_guard,
    median,
    record,
    show_row,
    sides,
    start,
)

DEFAULT_SETTINGS = "base,new,new:CML_THREADS=1"


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """``"new:CML_THREADS=1+OMP_WAIT_POLICY=ACTIVE"`` -> ``("new", {...})``."""
    side, _, rest = text.partition(":")
    env = {}
    for pair in filter(None, rest.split("+")):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise BenchError(f"--settings: '{text}': expected SIDE or SIDE:VAR=VALUE+VAR=VALUE", 2)
        env[key] = value
    if side not in ("base", "new"):
        raise BenchError(f"--settings: '{text}': the side is base or new", 2)
    return side, env


def together(side, job: Job, count: int, env: dict[str, str], data_dir: Path, runs_dir: Path) -> list[dict]:
    """Start ``count`` trainings of ``job`` at once and wait for all of them."""
    running = [start(side, job, data_dir, runs_dir, tag=f"-{i}", env=env) for i in range(count)]
    rows = [collect(r) for r in running]
    for row in rows:
        row["env"] = env
        show_row(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="retailrocket", help="a processed dataset in --data-dir")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--procs", default="1,3", help="processes at once, comma-separated")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    parser.add_argument("--base", default=BASE_REVISION)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--record", action="store_true", help=f"merge into {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    settings = [(text, *parse_setting(text)) for text in args.settings.split(",") if text]
    if len({text for text, _, _ in settings}) < len(settings):
        raise BenchError(f"--settings: '{args.settings}' names a setting twice", 2)
    try:
        counts = [int(c) for c in args.procs.split(",")]
    except ValueError:
        raise BenchError(f"--procs: expected comma-separated counts, got '{args.procs}'", 2) from None
    if not (args.data_dir / args.dataset / "manifest.json").is_file():
        raise BenchError(f"{args.data_dir / args.dataset}: not a processed dataset (run bench_train.py first)", 2)
    labels = sorted({side for _, side, _ in settings}, key=["base", "new"].index)
    state, rows, summary = machine_state(), {}, {}
    with sides(labels, args.base) as pair, tempfile.TemporaryDirectory(prefix="cml-bench-runs-") as runs:
        by_label = {s.label: s for s in pair}
        for count in counts:
            for text, side, env in settings:
                print(f"{count} x {text}", file=sys.stderr, flush=True)
                key = f"{text} x{count}"
                rows[key] = together(by_label[side], Job(args.dataset, args.epochs), count, env, args.data_dir,
                                     Path(runs))
                summary[key] = {"seconds_per_epoch": median([r["median_seconds_per_epoch"] for r in rows[key]])}
        for text, _, _ in settings:
            one = summary.get(f"{text} x1", {}).get("seconds_per_epoch")
            for count in counts:
                if one:
                    summary[f"{text} x{count}"]["slowdown"] = round(summary[f"{text} x{count}"]["seconds_per_epoch"] / one, 2)
        for key, s in summary.items():
            print(f"{key:<32} {s['seconds_per_epoch']:8.3f} s/epoch  x{s.get('slowdown', '?')}", flush=True)
        if args.record:
            record({f"threads {args.dataset}": entry(pair, ["python", "benchmarks/bench_threads.py", *sys.argv[1:]],
                                                     state, summary, rows)})


if __name__ == "__main__":
    main_guard(main)
