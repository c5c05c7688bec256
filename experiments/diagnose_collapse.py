"""Why does CML rank the same list for everyone? Train one configuration and measure, every
few epochs, on the validation split:

* accuracy: sampled HR@10 (1+99) and full-ranking HR@10;
* collapse: full-ranking coverage@10 and personalization@10, ARP@10, and the mean Pearson
  correlation between the score vectors (over all items) of a fixed sample of users;
* per layer l of the encoder (the blocks its projection concatenates): the share of the
  user embeddings' energy that varies between users, ``mean_d Var_u(H) / mean_d E_u[H^2]``,
  the fraction of saturated activations (sigmoid outside [0.01, 0.99], |tanh| > 0.99), and
  the score correlation when users are scored with that layer's part of ``e_u`` only.

    python experiments/diagnose_collapse.py --dataset retailrocket --label preset --epochs 60
    python experiments/diagnose_collapse.py --dataset retailrocket --label tanh --set act=tanh
    python experiments/diagnose_collapse.py --dataset retailrocket --label init-x10 --init-scale 10

Writes ``<out>/<label>.json`` (one row per measurement, plus the command and the machine) and
prints the rows as a table. ``--init-scale S`` multiplies the initial user and item tables (a
measurement of the initialisation, not a run option). The command line is recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cml_cli.config import config_for_dataset, parse_set
from cml_cli.data.store import resolve_dataset_dir
from cml_cli.evaluate import evaluate_full, evaluate_sampled
from cml_cli.train.factory import make_trainer
from cml_cli.train.loop import load_run_dataset
from cml_cli.train.rundir import command_line, git_revision, machine


def score_correlation(scores: torch.Tensor) -> float:
    """Mean Pearson correlation between the rows of ``scores [n, |I|]`` over all pairs of rows."""
    z = scores - scores.mean(1, keepdim=True)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    c = z @ z.T
    n = c.shape[0]
    return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))


def layer_stats(trainer, users: torch.Tensor, act: str) -> list[dict]:
    """Per-layer statistics of the encoder's user blocks (see the module docstring)."""
    encoder, graph = trainer.model.encoder, trainer.graph
    with torch.no_grad():
        agg_u, _, _ = encoder.layer_outputs(graph)
        e_u, e_i, _ = encoder(graph)
        dim = agg_u[0].shape[1]
        projected = hasattr(encoder, "p_user")  # the paper's encoder; else the LightGCN backbone
        first = 1 if projected and not encoder.ego else 0  # number of the first block's layer
        out = []
        for block, h in enumerate(agg_u):
            layer, h_s = block + first, h[users]
            share = float(h_s.var(0).mean() / h_s.pow(2).mean().clamp_min(1e-12))
            saturated = 0.0
            if projected:
                part = h_s @ encoder.p_user[block * dim:(block + 1) * dim]
                if layer > 0 and act == "sigmoid":
                    saturated = float(((h_s < 0.01) | (h_s > 0.99)).float().mean())
                elif layer > 0:
                    saturated = float((h_s.abs() > 0.99).float().mean())
            else:  # e_u is the mean of the layers, without activation
                part = h_s
            out.append({"layer": layer, "user_share": share, "saturated": saturated,
                        "score_corr": score_correlation(part @ e_i.T)})
    return out


def measure(trainer, ds, users: torch.Tensor, cfg) -> dict:
    scorer = trainer.scorer()
    sampled = evaluate_sampled(scorer, ds.valid, [10], cfg.eval_batch)
    full = evaluate_full(scorer, ds, "valid", [10])
    row = {"valid_hr@10": sampled["hr@10"], "valid_full_hr@10": full["hr@10"], "coverage@10": full["coverage@10"],
           "personalization@10": full["personalization@10"], "arp@10": full["arp@10"],
           "score_corr": score_correlation(scorer.score_all(users).float())}
    if cfg.model == "cml":
        row["layers"] = layer_stats(trainer, users, cfg.act)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--label", required=True, help="name of the measurement (output file stem)")
    parser.add_argument("--preset", default=None, help="training preset [default: the dataset's]")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="epochs between measurements")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="key=value (repeatable)")
    parser.add_argument("--init-scale", type=float, default=1.0)
    parser.add_argument("--users", type=int, default=500, help="validation users in the score correlation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/collapse"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    ds_dir = resolve_dataset_dir(args.dataset, args.data_dir)
    cfg = config_for_dataset(ds_dir, {**parse_set(args.sets), "epochs": args.epochs, "device": "cpu"},
                             preset=args.preset)
    ds = load_run_dataset(ds_dir, cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    trainer = make_trainer(ds, cfg, torch.device("cpu"))
    if args.init_scale != 1.0:
        with torch.no_grad():
            for name in ("user_emb", "item_emb"):
                getattr(trainer.model.encoder, name).mul_(args.init_scale)
    users = torch.from_numpy(ds.valid.user[np.random.default_rng(0).permutation(len(ds.valid))[:args.users]])
    rows = [{"epoch": 0, **measure(trainer, ds, users, cfg)}]
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        for batch in trainer.batches(rng):
            trainer.train_batch(batch, rng)
        trainer.end_epoch()
        if epoch % args.every == 0 or epoch == cfg.epochs:
            rows.append({"epoch": epoch, **measure(trainer, ds, users, cfg)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "layers"}), file=sys.stderr)
    result = {"label": args.label, "dataset": args.dataset, "config": cfg.to_dict(), "init_scale": args.init_scale,
              "command": command_line(["python", "experiments/diagnose_collapse.py", *sys.argv[1:]],
                                      Path(__file__).resolve().parents[1]),
              "git_revision": git_revision(), "machine": machine(),
              "seconds": time.perf_counter() - started, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.label}.json").write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        layers = " | ".join(f"L{x['layer']}: share {x['user_share']:.3f} sat {x['saturated']:.2f} corr "
                            f"{x['score_corr']:.2f}" for x in r.get("layers", []))
        print(f"epoch {r['epoch']:3d}  valid HR@10 {r['valid_hr@10']:.3f}  full {r['valid_full_hr@10']:.4f}  "
              f"cov {r['coverage@10']:.4f}  pers {r['personalization@10']:.3f}  corr {r['score_corr']:.3f}  {layers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
