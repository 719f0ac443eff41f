#!/usr/bin/env python
"""Average RecBole result JSONs over seeds (standard library only; any Python).

    python experiments/recbole/summarize.py [--results-dir DIR] [--json OUT]

Reads results/recbole_<model>_seed<seed>.json and prints, per model, mean and sample std over the seeds
of the test metrics, the training wall time and the epochs run, as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = ["ndcg@10", "hit@10", "mrr@10", "ndcg@5", "hit@5", "ndcg@20", "hit@20"]
OTHER = ["train_wall_s", "mean_epoch_train_s", "epochs_run"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--results-dir", type=Path, default=HERE / "results")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = p.parse_args()

    runs = defaultdict(list)
    for f in sorted(args.results_dir.glob("recbole_*_seed*.json")):
        r = json.loads(f.read_text())
        runs[r["model"]].append(r)
    if not runs:
        print(f"no results in {args.results_dir}")
        return 1

    def ms(xs):
        return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    summary = {}
    cols = METRICS + OTHER
    print("| model | seeds | " + " | ".join(c.replace("hit", "HR").replace("ndcg", "NDCG")
                                           .replace("mrr", "MRR") for c in cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for model, rs in sorted(runs.items()):
        row = {}
        for c in METRICS:
            row[c] = ms([r["test"][c] for r in rs])
        for c in OTHER:
            row[c] = ms([float(r[c]) for r in rs])
        batch = sorted({r["config"]["train_batch_size"] for r in rs})
        stops = sorted({r["stopped_by"] for r in rs})
        summary[model] = {"seeds": [r["seed"] for r in rs], "train_batch_size": batch,
                          "stopped_by": stops, **{k: {"mean": m, "std": s} for k, (m, s) in row.items()}}
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in (row[c] for c in METRICS)]
        cells += [f"{m:.0f} ± {s:.0f}" if c != "mean_epoch_train_s" else f"{m:.1f}"
                  for c, (m, s) in ((c, row[c]) for c in OTHER)]
        print(f"| {model} (bs {','.join(map(str, batch))}) | {len(rs)} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
