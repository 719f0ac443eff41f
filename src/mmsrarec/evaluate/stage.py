"""The evaluate stage: score every method on the valid and test cases under each protocol.

Writes leaderboard.{md,csv,json,png}, metrics.json (means), and per-case sampled scores
(scores/<method>_<split>.parquet) so any number can be traced to the candidate lists it came from.
Test metrics are reported only; nothing here selects a model on them.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import distributed
from ..artifacts import write_json, write_parquet
from ..cf.base import Cases
from ..cf.stage import load_trained
from ..data.prepare import load_prepared
from .leaderboard import write_leaderboard
from .metrics import metric_names
from .outside import outside_rows
from .protocols import evaluate_full, evaluate_sampled, sampled_metrics, summarize


def run(ctx) -> None:
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    data = load_prepared(ctx.input("prepare"))
    n_items = len(data["items"])
    cases = {split: Cases.from_frame(data[split]) for split in ("valid", "test")}
    cf_dir = ctx.input("train-cf")
    ranker = None
    if cfg.rank.name in ev.methods and {"sampled", "rerank"} & set(ev.protocols):
        from ..rank.stage import load_ranker
        ranker = load_ranker(ctx)  # once, for every split and protocol
    if not distributed.is_main():  # under accelerate launch / torchrun: score a share of the LLM's cases only
        if ranker is not None and "sampled" in ev.protocols:
            ranker_row(ctx, ranker, cases, write=False)
        if ranker is not None and "rerank" in ev.protocols:
            rerank_row(ctx, ranker, data, cf_dir)
        return
    rows = outside_rows(ctx, data, cases)  # evaluate.score_files: checked before any model is scored
    for method in ev.methods:
        if method == cfg.rank.name:
            if "sampled" in ev.protocols:
                rows.append(ranker_row(ctx, ranker, cases))
            if "rerank" in ev.protocols:
                rows.append(rerank_row(ctx, ranker, data, cf_dir))
            continue
        if method == cfg.mllm_msr.name:  # sampled protocol only: its summaries exist for the stored cases
            from ..mllmmsr.stage import leaderboard_row
            if "sampled" in ev.protocols:
                rows.append(leaderboard_row(ctx, data, cases))
            continue
        model, info = load_trained(cf_dir, method, cfg, n_items)
        for protocol in (p for p in ev.protocols if p != "rerank"):  # rerank is for LLM rankers
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
    rows += [fusion_row(ctx, cf_name) for cf_name in ev.fuse]  # from the score files written above
    board = pd.DataFrame(rows)
    write_json(ctx.out / "metrics.json", rows)
    write_leaderboard(board, ctx.out, title=f"{cfg.name}: {data['stats']['users']} users, "
                      f"{n_items} items, split={cfg.data.split}", stats=data["stats"])
    ctx.summary["rows"] = len(rows)
    from .report import write_report  # after the leaderboard and scores, which the report reads
    write_report(ctx, ctx.out / "report.html")


def llm_store(ctx, name: str):
    """Where the LLM's per-case scores go while they are computed (rank/sharded.py): a killed evaluate
    resumes from them, and under a launcher every process scores its share of the cases into it."""
    return ctx.out / "llm_scores" / name


def write_scores(out, method: str, split: str, cases: Cases, scores: np.ndarray) -> None:
    """Per-case scores of the stored candidate lists (target first), so any metric can be traced."""
    write_parquet(out / "scores" / f"{method}_{split}.parquet", pd.DataFrame({
        "user": cases.users, "candidates": cases.candidates().tolist(), "scores": scores.tolist()}))


def read_scores(out, method: str, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    """write_scores' file and its [n_cases, 1 + N] score matrix."""
    frame = pd.read_parquet(out / "scores" / f"{method}_{split}.parquet")
    return frame, np.array(frame["scores"].tolist(), dtype=np.float64)


def fusion_row(ctx, cf_name: str) -> dict:
    """evaluate.fuse: the LLM ranker's sampled scores blended with `cf_name`'s, the weight picked on valid
    (evaluate/fusion.py); its per-case scores are written like any method's."""
    from ..errors import ArtifactError
    from .fusion import fuse, pick_weight

    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    name, names = f"{cfg.rank.name}+{cf_name}", metric_names(ev.ks, "sampled")
    pairs = {}
    for split in ("valid", "test"):
        (llm_frame, llm), (cf_frame, cf) = read_scores(ctx.out, cfg.rank.name, split), read_scores(ctx.out, cf_name, split)
        if [list(c) for c in llm_frame["candidates"]] != [list(c) for c in cf_frame["candidates"]]:
            raise ArtifactError(f"{ctx.out / 'scores'}: {cfg.rank.name} and {cf_name} ranked different {split} lists; "
                                "delete the evaluate stage's folder and rerun it")
        pairs[split] = (cf_frame, llm, cf)
    weight, curve = pick_weight(pairs["valid"][1], pairs["valid"][2], ev.fuse_metric)
    row = {"method": name, "protocol": "sampled", "fuse_weight": weight, "fuse_metric": ev.fuse_metric,
           "fuse_valid_curve": {f"{w:.2f}": round(v, 6) for w, v in curve.items()}}
    for split, (frame, llm, cf) in pairs.items():
        scores = fuse(llm, cf, weight)
        write_parquet(ctx.out / "scores" / f"{name}_{split}.parquet",
                      frame.assign(scores=scores.tolist())[["user", "candidates", "scores"]])
        row[f"{split}_cases"] = len(frame)
        row.update({f"{split}_{k}": v for k, v in summarize(sampled_metrics(scores, names)).items()})
    ctx.log(f"{name:10s} sampled  {cf_name} weight {weight:.2f} (valid {ev.fuse_metric} {curve[weight]:.4f}; "
            f"{cfg.rank.name} alone {curve[0.0]:.4f}, {cf_name} alone {curve[1.0]:.4f})  test "
            + "  ".join(f"{k}={row['test_' + k]:.4f}" for k in ("hr@5", "ndcg@5", "auc")))
    return row


def scoring_times(store, n_cases: int, split: str, wall_s: float) -> dict:
    """<split>_s_per_user: LLM scoring seconds per case (user) from the times stored with the scores, so a
    resumed or sharded evaluation reports what scoring cost, not how long this process waited; rerank cases
    whose target the CF model missed cost nothing and count. <split>_s_per_scored_user_median: the median
    over the cases the LLM scored. Falls back to this call's wall time for scores stored without times."""
    from ..rank.sharded import stored_seconds

    times = stored_seconds(store)
    if not len(times) or np.isnan(times).any():
        return {f"{split}_s_per_user": round(wall_s / max(n_cases, 1), 4)}
    return {f"{split}_s_per_user": round(float(times.sum()) / max(n_cases, 1), 4),
            f"{split}_s_per_scored_user_median": round(float(np.median(times)), 4)}


def ranker_row(ctx, ranker, cases: dict[str, Cases], write: bool = True) -> dict:
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
    for split, c in ((s, cases[s]) for s in cfg.evaluate.llm_splits):
        t0 = time.perf_counter()
        store = llm_store(ctx, f"{cfg.rank.name}_{split}")
        scores = score_cases(ranker, split, log=ctx.log, store=store)
        seconds = time.perf_counter() - t0
        if write:
            write_scores(ctx.out, cfg.rank.name, split, c, scores)
        row[f"{split}_cases"] = len(c)
        row[f"{split}_eval_time_s"] = round(seconds, 3)
        row.update(scoring_times(store, len(c), split, seconds))
        row.update({f"{split}_{k}": v for k, v in summarize(sampled_metrics(scores, names)).items()})
    ctx.log(f"{cfg.rank.name:10s} sampled  test " + "  ".join(
        f"{k}={row['test_' + k]:.4f}" for k in ("hr@5", "ndcg@5", "auc")))
    return row


def rerank_row(ctx, ranker, data: dict, cf_dir) -> dict:
    """The LLM ranker on leave-one-out test cases: it reranks the top evaluate.rerank_top items of
    evaluate.rerank_cf (see rerank.py); valid is not scored (nothing is selected on it here)."""
    from ..artifacts import read_json
    from ..rank.stage import score_cases
    from .rerank import evaluate_rerank

    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    n_items = len(data["items"])
    # on the CPU, wherever this runs: the lists are an input of every LLM row, and the same on every machine
    # (an H200's top 50 of ML-100K differed from the CPU's in 1 case of 943, at a 1.6e-4 near-tie)
    model, _ = load_trained(cf_dir, ev.rerank_cf, cfg, n_items, device="cpu")
    manifest = read_json(ctx.input("train-ranker") / "manifest.json")
    t0 = time.perf_counter()
    store = llm_store(ctx, f"{cfg.rank.name}_rerank_test")
    per, facts = evaluate_rerank(lambda hits: score_cases(ranker, "test", cases=hits, log=ctx.log, store=store), model,
                                 data["test"], n_items, ev.rerank_top, ev.ks, ev.full_exclude_history)
    seconds = time.perf_counter() - t0
    row = {"method": cfg.rank.name, "protocol": "rerank", "train_time_s": manifest.get("wall_time_s"),
           "peak_rss_mb": manifest.get("peak_rss_mb"), "rerank_cf": ev.rerank_cf, "rerank_top": ev.rerank_top,
           "test_cases": len(data["test"]), "test_eval_time_s": round(seconds, 3),
           **scoring_times(store, len(data["test"]), "test", seconds), **facts,
           **{f"test_{k}": v for k, v in summarize(per).items()}}
    ctx.log(f"{cfg.rank.name:10s} rerank   test hr@10={row.get('test_hr@10', float('nan')):.4f}  "
            f"ndcg@10={row.get('test_ndcg@10', float('nan')):.4f}  (CF top-{ev.rerank_top} hit rate "
            f"{facts['retrieval_hit_rate']:.3f})")
    return row
