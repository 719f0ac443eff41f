"""Quick ML-100K check of the CF models: full-ranking valid/test HR@10 and NDCG@10, epochs, wall time.

Reads the `prepare` stage's output (run `mmsrarec prepare --config configs/ml100k.yaml` first) and
trains each model with its default parameters on CPU. Test cases are used only after fitting.

    python experiments/cf_ml100k_quick.py [--models sasrec gru4rec] [--threads 2] [--train batch_size=64]
        [--set dropout=0.3]

--train overrides CFTrainConfig keys, --set the sequential models' own parameters. The reported
numbers used `--threads 1 --train batch_size=64` (64 windows of 51 items per Adam step).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from mmsrarec.cf import build_model
from mmsrarec.cf.base import Cases
from mmsrarec.cf.config import CFTrainConfig
from mmsrarec.configtools import from_dict
from mmsrarec.evaluate.protocols import evaluate_full, summarize

METRICS = ["hr@10", "ndcg@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("runs/ml100k/prepare"))
    ap.add_argument("--models", nargs="+", default=["pop", "itemknn", "gru4rec", "sasrec"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE", help="CFTrainConfig override")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model parameter override")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parse = lambda pairs: {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}  # noqa: E731
    train_cfg = from_dict(CFTrainConfig, {"device": "cpu", **parse(args.train)})
    sequences = [np.asarray(s, dtype=np.int64) for s in pd.read_parquet(args.data / "train.parquet")["items"]]
    valid = Cases.from_frame(pd.read_parquet(args.data / "valid.parquet"))
    test = Cases.from_frame(pd.read_parquet(args.data / "test.parquet"))
    n_items = int(pd.read_parquet(args.data / "items.parquet")["item"].max())
    rows = []
    for name in args.models:
        model = build_model(name, n_items, parse(args.set) if name in ("gru4rec", "sasrec", "bert4rec") else {},
                            train_cfg, args.seed, torch.device("cpu"))
        started, cpu = time.perf_counter(), time.process_time()
        facts = model.fit(sequences, valid, log=lambda line: print(line, flush=True))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        v = summarize(evaluate_full(model.full_scores, valid, n_items, METRICS, progress=False))
        t = summarize(evaluate_full(model.full_scores, test, n_items, METRICS, progress=False))
        rows.append((name, facts["epochs_run"], facts["best_epoch"], wall, cpu, v, t))
    print(f"\n{'model':10} {'epochs':>6} {'best':>5} {'wall s':>7} {'cpu s':>7} {'valid hr@10':>11} {'valid ndcg@10':>13} "
          f"{'test hr@10':>10} {'test ndcg@10':>12}")
    for name, epochs, best, wall, cpu, v, t in rows:
        print(f"{name:10} {epochs:6d} {best:5d} {wall:7.1f} {cpu:7.1f} {v['hr@10']:11.4f} {v['ndcg@10']:13.4f} "
              f"{t['hr@10']:10.4f} {t['ndcg@10']:12.4f}")


if __name__ == "__main__":
    main()
