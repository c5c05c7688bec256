"""How far does "recommend what the user already viewed (or carted)" go? Full-ranking metrics
of a scorer that ranks each user's own auxiliary-behavior items first, by behavior weight,
then by popularity (interactions over all behaviors), with training purchases masked:

    python experiments/aux_heuristic.py --dataset tmall-mbcgcn-novalid --weights view=1
    python experiments/aux_heuristic.py --dataset tmall-mbcgcn-novalid --weights view=1,cart=2

A calibration for published full-ranking figures on data whose test purchases are mostly
among the user's own views (the MB-CGCN files): a model that only recovers those scores this.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from cml_cli.data.store import load_dataset
from cml_cli.evaluate import evaluate_full


class OwnItemsScorer:
    """``score(u, i) = sum_b w_b [u did b with i] + 1e-6 * popularity(i)``."""

    def __init__(self, ds, weights: dict[str, float]):
        self.matrix = sp.csr_matrix((ds.n_users, ds.n_items), dtype=np.float32)
        for behavior, weight in weights.items():
            t = ds.train[behavior]
            self.matrix = self.matrix + sp.csr_matrix((np.full(len(t), weight, np.float32), (t.user, t.item)),
                                                      shape=(ds.n_users, ds.n_items))
        self.popularity = ds.item_interactions().astype(np.float32)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        rows = self.matrix[users.numpy()].toarray() + 1e-6 * self.popularity[None, :]
        return torch.from_numpy(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--weights", default="view=1", help="behavior=weight,... (auxiliary behaviors)")
    parser.add_argument("--ks", default="10,20")
    args = parser.parse_args()
    ds = load_dataset(args.dataset, args.data_dir)
    weights = {b: float(w) for b, w in (p.split("=") for p in args.weights.split(","))}
    metrics = evaluate_full(OwnItemsScorer(ds, weights), ds, "test", [int(k) for k in args.ks.split(",")])
    print(json.dumps({"dataset": ds.name, "weights": weights, "full": metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
