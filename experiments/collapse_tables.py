"""Markdown tables of the measurements written by ``experiments/diagnose_collapse.py``:

    python experiments/collapse_tables.py preset paper tanh ...   # labels, in table order
    python experiments/collapse_tables.py --epochs preset          # one measurement per epoch

Reads ``experiments/results/collapse/<label>.json`` and prints, per label, the validation
figures of the last measurement (and, with ``--epochs``, of every measurement, per layer).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results" / "collapse"


def command(d: dict) -> str:
    """The recorded command, as run from the repository root with the default --out."""
    cmd = re.sub(r"python \S*experiments/diagnose_collapse\.py", "python experiments/diagnose_collapse.py", d["command"])
    return re.sub(r" --out \S*experiments/results/collapse(?= |$)", "", cmd)


def _layers(row: dict) -> str:
    return "; ".join(f"L{x['layer']} {x['user_share']:.2f} / {x['saturated']:.2f} / {x['score_corr']:.2f}"
                     for x in row.get("layers", []))


def summary(labels: list[str]) -> str:
    lines = ["| measurement | epochs | valid HR@10 (sampled) | valid HR@10 (full) | coverage@10 | personalization@10 "
             "| ARP@10 | score corr. | per layer: user share / saturated / score corr. |",
             "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :--- |"]
    for label in labels:
        d = json.loads((HERE / f"{label}.json").read_text())
        r = d["rows"][-1]
        lines.append(f"| `{label}` | {r['epoch']} | {r['valid_hr@10']:.3f} | {r['valid_full_hr@10']:.4f} | "
                     f"{r['coverage@10']:.4f} | {r['personalization@10']:.3f} | {r['arp@10']:.1f} | "
                     f"{r['score_corr']:.3f} | {_layers(r)} |")
    return "\n".join(lines)


def per_epoch(label: str) -> str:
    d = json.loads((HERE / f"{label}.json").read_text())
    lines = [f"`{label}`: `{command(d)}`", "",
             "| epoch | valid HR@10 (sampled) | valid HR@10 (full) | coverage@10 | personalization@10 | score corr. | "
             "per layer: user share / saturated / score corr. |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | :--- |"]
    for r in d["rows"]:
        lines.append(f"| {r['epoch']} | {r['valid_hr@10']:.3f} | {r['valid_full_hr@10']:.4f} | {r['coverage@10']:.4f} | "
                     f"{r['personalization@10']:.3f} | {r['score_corr']:.3f} | {_layers(r)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", nargs="+")
    parser.add_argument("--epochs", action="store_true", help="every measurement of each label")
    args = parser.parse_args()
    print("\n\n".join(per_epoch(label) for label in args.labels) if args.epochs else summary(args.labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
