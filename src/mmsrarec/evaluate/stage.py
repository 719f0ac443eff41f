"""The evaluate stage: score every method on the valid and test cases under each protocol.

Writes leaderboard.{md,csv,json,png}, metrics.json (means), and per-case sampled scores
(scores/<method>_<split>.parquet) so any number can be traced to the candidate lists it came from.
Test metrics are reported only; nothing here selects a model on them.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..artifacts import write_json, write_parquet
from ..cf.base import Cases
from ..cf.stage import load_trained
from ..data.prepare import load_prepared
from .leaderboard import write_leaderboard
from .metrics import metric_names
from .protocols import evaluate_full, evaluate_sampled, sampled_metrics, summarize


def run(ctx) -> None:
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    data = load_prepared(ctx.input("prepare"))
    n_items = len(data["items"])
    cases = {split: Cases.from_frame(data[split]) for split in ("valid", "test")}
    cf_dir = ctx.input("train-cf")
    rows = []
    for method in ev.methods:
        if method == cfg.rank.name:
            rows.append(ranker_row(ctx, data, cases))
            continue
        model, info = load_trained(cf_dir, method, cfg, n_items)
        for protocol in ev.protocols:
            row = {"method": method, "protocol": protocol, "train_time_s": info.get("train_time_s"),
                   "peak_rss_mb": info.get("peak_rss_mb"), "epochs": info.get("epochs_run")}
            names = metric_names(ev.ks, protocol)
            for split, c in cases.items():
                t0 = time.perf_counter()
                if protocol == "sampled":
                    per, scores = evaluate_sampled(model.score, c, names, ev.batch_size)
                    write_scores(ctx.out, method, split, c, scores)
                else:
                    per = evaluate_full(model.full_scores, c, n_items, names, ev.batch_size,
                                        exclude_history=ev.full_exclude_history)
                row[f"{split}_cases"] = len(c)
                row[f"{split}_eval_time_s"] = round(time.perf_counter() - t0, 3)
                row.update({f"{split}_{k}": v for k, v in summarize(per).items()})
            rows.append(row)
            ctx.log(f"{method:10s} {protocol:8s} test " + "  ".join(
                f"{k}={row['test_' + k]:.4f}" for k in names if k in ("hr@10", "ndcg@10", "hr@5", "ndcg@5", "auc")))
    board = pd.DataFrame(rows)
    write_json(ctx.out / "metrics.json", rows)
    write_leaderboard(board, ctx.out, title=f"{cfg.name}: {data['stats']['users']} users, "
                      f"{n_items} items, split={cfg.data.split}", stats=data["stats"])
    ctx.summary["rows"] = len(rows)


def write_scores(out, method: str, split: str, cases: Cases, scores: np.ndarray) -> None:
    """Per-case scores of the stored candidate lists (target first), so any metric can be traced."""
    write_parquet(out / "scores" / f"{method}_{split}.parquet", pd.DataFrame({
        "user": cases.users, "candidates": cases.candidates().tolist(), "scores": scores.tolist()}))


def ranker_row(ctx, data: dict, cases: dict[str, Cases]) -> dict:
    """The LLM ranker (train-ranker's adapter) on the stored candidate lists: one forward pass per user
    over its shared prefix (rank.scoring), all candidates scored from it."""
    from ..artifacts import read_json
    from ..rank.stage import score_cases

    cfg = ctx.cfg
    names = metric_names(cfg.evaluate.ks, "sampled")
    ranker_dir = ctx.input("train-ranker")
    info = read_json(ranker_dir / "ranker.json") if (ranker_dir / "ranker.json").is_file() else {}
    manifest = read_json(ranker_dir / "manifest.json")
    row = {"method": cfg.rank.name, "protocol": "sampled", "train_time_s": manifest.get("wall_time_s"),
           "peak_rss_mb": manifest.get("peak_rss_mb"), "epochs": info.get("epochs"), "llm_calls_per_user": 1}
    for split, c in cases.items():
        t0 = time.perf_counter()
        scores = score_cases(ctx, split, log=ctx.log)
        seconds = time.perf_counter() - t0
        write_scores(ctx.out, cfg.rank.name, split, c, scores)
        row[f"{split}_cases"] = len(c)
        row[f"{split}_eval_time_s"] = round(seconds, 3)
        row[f"{split}_s_per_user"] = round(seconds / max(len(c), 1), 4)
        row.update({f"{split}_{k}": v for k, v in summarize(sampled_metrics(scores, names)).items()})
    ctx.log(f"{cfg.rank.name:10s} sampled  test " + "  ".join(
        f"{k}={row['test_' + k]:.4f}" for k in ("hr@5", "ndcg@5", "auc")))
    return row
