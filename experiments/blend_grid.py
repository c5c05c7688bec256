#!/usr/bin/env python
"""Blend weights on a grid, measured on the validation split under both protocols:

    python experiments/blend_grid.py --dataset tmall-mbcgcn --members cascadingrank,history,itemknn-merged \\
        --weights 0,0.1,0.25,0.5,1 --out experiments/results/sota/blend-grid-tmall-mbcgcn.json

``cml tune --model blend`` selects on validation NDCG@10 of the sampled protocol (its
objective for every model); this script shows what each weighting gives on validation under
full ranking too, so that a selection by either protocol can be made on validation alone and
the chosen blend tested once (``cml train --set model=blend --set blend_weights=...``).

The first member's weight is 1 (a blend ranks alike under any common scale); every other
member takes each of ``--weights``. Each member's scores come from the registry's model
(fitted with the run options' defaults and ``--set``), normalised per user over all items as
the blend does; users are processed in blocks, so memory stays bounded. Full ranking masks the
user's training target items, ties rank by item id, as in ``cml evaluate``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cml_cli.config import RunConfig, apply_overrides, parse_set
from cml_cli.data.store import load_dataset
from cml_cli.evaluate import known_items, sampled_metrics
from cml_cli.model.blend import member_rows, normalise
from cml_cli.train.factory import make_trainer


def held_out_ranks(rows: np.ndarray, items: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """0-based rank of each row's held-out item among the unmasked items (ties: smaller id first)."""
    scores = np.where(masked, -np.inf, rows)
    pos = scores[np.arange(len(rows)), items][:, None]
    ahead = (scores > pos) | ((scores == pos) & (np.arange(rows.shape[1])[None, :] < items[:, None]))
    return ahead.sum(axis=1)


def grid(args) -> dict:
    ds = load_dataset(args.dataset, args.data_dir)
    cfg = apply_overrides(RunConfig(device="cpu"), parse_set(args.set)).validate()
    members = args.members.split(",")
    scorers = [member_rows(make_trainer(ds, apply_overrides(cfg, {"model": m}).validate(), torch.device("cpu"))
                           .scorer(), torch.device("cpu")) for m in members]
    combos = [(1.0, *w) for w in itertools.product(args.weights, repeat=len(members) - 1)]
    split = ds.valid
    mu, mi = known_items(ds, "valid")
    row_of = np.full(ds.n_users, -1)
    hits, gains, sampled = (np.zeros(len(combos)) for _ in range(3))
    for lo in range(0, len(split), args.block):
        users, items = split.user[lo:lo + args.block], split.item[lo:lo + args.block]
        masked = np.zeros((len(users), ds.n_items), dtype=bool)
        row_of[users] = np.arange(len(users))
        keep = np.isin(mu, users)
        masked[row_of[mu[keep]], mi[keep]] = True
        parts = [normalise(score(users), args.norm) for score in scorers]
        cands = split.candidates()[lo:lo + args.block]
        for c, weights in enumerate(combos):
            rows = sum(w * p for w, p in zip(weights, parts) if w)
            rank = held_out_ranks(rows, items, masked)
            hits[c] += (rank < 10).sum()
            gains[c] += np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0).sum()
            s = torch.from_numpy(np.take_along_axis(rows, cands, axis=1))
            sampled[c] += sampled_metrics(s[:, 0], s[:, 1:], [10])["ndcg@10"] * len(users)
    n = len(split)
    table = [{"weights": list(w), "full_hr@10": hits[c] / n, "full_ndcg@10": gains[c] / n,
              "sampled_ndcg@10": sampled[c] / n} for c, w in enumerate(combos)]
    return {"dataset": ds.name, "split": "valid", "users": n, "members": members, "norm": args.norm,
            "set": args.set, "table": table,
            "best_full_hr@10": max(table, key=lambda r: r["full_hr@10"]),
            "best_sampled_ndcg@10": max(table, key=lambda r: r["sampled_ndcg@10"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--members", default="cascadingrank,history", help="registry models, comma-separated")
    parser.add_argument("--weights", default="0,0.1,0.25,0.5,1",
                        type=lambda t: [float(x) for x in t.split(",")], help="weights of the other members")
    parser.add_argument("--norm", default="zscore", choices=["zscore", "rank"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="options of the members")
    parser.add_argument("--block", type=int, default=512, help="users per block")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    started = time.time()
    result = grid(args)
    result["seconds"] = round(time.time() - started, 1)
    result["command"] = "python experiments/blend_grid.py " + " ".join(sys.argv[1:])
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
