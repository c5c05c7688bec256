"""CUDA smoke check: every model trains a few epochs with ``device=auto`` on a GPU.

    python benchmarks/gpu_check.py --data-dir data --out OUT_DIR [--runs-dir DIR]

Uses the Python API only (no CLI dependencies). For each model it trains on retailrocket
(CML, LightGCN merged, MB-CGCN, CRGCN, item-kNN) with ``device=auto``, checks that the run used
CUDA, that two runs with the same seed give the same validation metric (cuBLAS/cuSPARSE may
not be bit-exact: the difference is reported), and records s/epoch; the results go to
``OUT_DIR/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cml_cli.config import config_for_dataset
from cml_cli.train.loop import train

MODELS = ("cml", "lightgcn-merged", "mbcgcn", "crgcn", "itemknn-merged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="retailrocket")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="where gpu_check.json goes")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/cml-gpu-runs"))
    args = parser.parse_args()
    out = {"cuda": torch.cuda.is_available(), "device_name": torch.cuda.get_device_name(0)
           if torch.cuda.is_available() else None, "torch": torch.__version__, "results": []}
    for model in MODELS:
        row = {"model": model}
        try:
            finals = []
            for rep in range(2):
                cfg = config_for_dataset(args.dataset, {"model": model, "epochs": args.epochs, "device": "auto",
                                                        "pretrain_epochs": 1 if model == "mbcgcn" else 0},
                                         data_dir=args.data_dir)
                started = time.perf_counter()
                final = train(args.dataset, cfg, data_dir=args.data_dir, runs_dir=args.runs_dir,
                              name=f"{model}-{rep}", force=True)
                row[f"seconds_{rep}"] = round(time.perf_counter() - started, 2)
                log = [json.loads(x) for x in (args.runs_dir / f"{model}-{rep}" / "metrics.jsonl").read_text()
                       .splitlines()]
                row["seconds_per_epoch"] = [round(x["seconds"], 3) for x in log]
                finals.append(final)
            row["device"] = finals[0].get("device") or json.loads(
                (args.runs_dir / f"{model}-0" / "manifest.json").read_text()).get("device")
            row["test_hr@10"] = [f["test"]["hr@10"] for f in finals]
            row["full_hr@10"] = [f["test"]["full"]["hr@10"] for f in finals]
            row["same_seed_difference"] = abs(finals[0]["test"]["hr@10"] - finals[1]["test"]["hr@10"])
            row["ok"] = True
        except Exception as e:  # report and go on with the next model
            row["ok"], row["error"] = False, f"{type(e).__name__}: {e}"
        out["results"].append(row)
        print(json.dumps(row), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
