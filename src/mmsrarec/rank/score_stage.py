"""The ranker's scoring stages: what the evaluate stage reads of MMSRARec's ranker.

score-ranker   the stored 1 + N lists of evaluate.llm_splits (sampled protocol), one forward pass per
               user over its shared prefix (rank.scoring); per case also what the prompt showed (the
               retrieved context, the similar users behind it, the candidate notes), for the report.
rerank-ranker  the rerank protocol (evaluate/rerank.py): the ranker reorders the top evaluate.rerank_top
               items of the CF model evaluate.rerank_cf (test).

Both write per-case files and methods.json (evaluate/casefiles.py). While they run, llm_scores/ holds the
scores computed so far (rank/sharded.py): a killed stage resumes from them, and under a launcher every
process scores its share of the cases into it.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import distributed, faults
from ..artifacts import read_json
from ..cf.base import Cases, SeenItemsOnly, seen_items
from ..cf.stage import load_trained
from ..evaluate.casefiles import write_cases, write_methods, write_scored_lists
from ..evaluate.protocols import sampled_counts
from .sharded import stored_seconds
from .stage import case_inputs, load_ranker, score_cases


def scoring_times(store, n_cases: int, split: str, wall_s: float) -> dict:
    """<split>_s_per_user: LLM scoring seconds per case (user) from the times stored with the scores, so a
    resumed or sharded scoring reports what scoring cost, not how long this process waited; rerank cases
    whose target the CF model missed cost nothing and count. <split>_s_per_scored_user_median: the median
    over the cases the LLM scored. Falls back to this call's wall time for scores stored without times."""
    times = stored_seconds(store)
    if not len(times) or np.isnan(times).any():
        return {f"{split}_s_per_user": round(wall_s / max(n_cases, 1), 4)}
    return {f"{split}_s_per_user": round(float(times.sum()) / max(n_cases, 1), 4),
            f"{split}_s_per_scored_user_median": round(float(np.median(times)), 4)}


def trained_facts(ctx) -> dict:
    ranker_dir = ctx.input("train-ranker")
    info = read_json(ranker_dir / "ranker.json") if (ranker_dir / "ranker.json").is_file() else {}
    manifest = read_json(ranker_dir / "manifest.json")
    return {"train_time_s": manifest.get("wall_time_s"), "peak_rss_mb": manifest.get("peak_rss_mb"),
            "epochs": info.get("epochs"), "llm_calls_per_user": 1}


def shown(ranker, split: str, cases: pd.DataFrame, candidates: np.ndarray, contexts: dict,
          notes: dict | None) -> dict[str, list]:
    """Per case, what its prompt showed beyond the catalogue (for the report): the retrieved context, the
    similar training users behind it, and each candidate's note."""
    cfg = ranker.inputs.cfg.rank
    cols: dict[str, list] = {}
    if cfg.use_retrieval and ranker.inputs.index is not None:
        from ..index.store import load_neighbours

        table = load_neighbours(ranker.inputs.index, split).set_index("case")
        cols["context"] = [contexts.get(int(c), "") for c in cases.index]
        for col in ("neighbours", "similarities", "next_items"):
            cols[col] = [list(table.at[int(c), col]) if int(c) in table.index else [] for c in cases.index]
    if notes is not None:
        cols["notes"] = [[notes[int(c)].about(int(i)) for i in items] for c, items in zip(cases.index, candidates)]
    return cols


def run(ctx) -> None:
    cfg = ctx.cfg
    ranker = load_ranker(ctx)
    row = {**trained_facts(ctx), "splits": list(cfg.evaluate.llm_splits)}
    for split in cfg.evaluate.llm_splits:
        cases = ranker.data[split]
        t0 = time.perf_counter()
        prepared = case_inputs(ranker, split, cases, ctx.log)
        store = ctx.out / "llm_scores" / f"{cfg.rank.name}_{split}"
        scores = score_cases(ranker, split, log=ctx.log, store=store, prepared=prepared)
        seconds = time.perf_counter() - t0
        faults.step("score-ranker")  # the split's scores are all stored, its case files not written
        if not distributed.is_main():
            continue  # every process scored its share into the store; the main one writes
        candidates = Cases.from_frame(cases).candidates()
        write_scored_lists(ctx.out, cfg.rank.name, split, cases["user"], candidates, scores,
                           **shown(ranker, split, cases, candidates, *prepared))
        row[f"{split}_eval_time_s"] = round(seconds, 3)
        row.update(scoring_times(store, len(cases), split, seconds))
        ctx.log(f"{cfg.rank.name}: {split} {len(cases)} cases scored in {seconds:.1f} s")
    if distributed.is_main():
        write_methods(ctx.out, {cfg.rank.name: {"sampled": row}})


def run_rerank(ctx) -> None:
    from ..evaluate.rerank import rerank_scores

    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    ranker = load_ranker(ctx)
    data = ranker.data
    n_items = len(data["items"])
    # on the CPU, wherever this runs: the lists are an input of every LLM row, and the same on every machine
    # (an H200's top 50 of ML-100K differed from the CPU's in 1 case of 943, at a 1.6e-4 near-tie)
    model, _ = load_trained(ctx.input("train-cf"), ev.rerank_cf, cfg, n_items, device="cpu")
    model = SeenItemsOnly(model, seen_items(data["train"]["items"], n_items))  # never-seen items last, tied
    t0 = time.perf_counter()
    store = ctx.out / "llm_scores" / f"{cfg.rank.name}_rerank_test"
    scores, items, facts = rerank_scores(lambda hits: score_cases(ranker, "test", cases=hits, log=ctx.log,
                                                                  store=store),
                                         model, data["test"], n_items, ev.rerank_top, ev.full_exclude_history)
    seconds = time.perf_counter() - t0
    if not distributed.is_main():
        return
    greater, ties, n = sampled_counts(scores)
    write_cases(ctx.out, cfg.rank.name, "rerank", "test", data["test"]["user"], greater, ties, n,
                candidates=list(items), scores=list(scores))
    trained = {k: v for k, v in trained_facts(ctx).items() if k in ("train_time_s", "peak_rss_mb")}
    row = {**trained, "splits": ["test"], "rerank_cf": ev.rerank_cf, "rerank_top": ev.rerank_top,
           "test_eval_time_s": round(seconds, 3), **scoring_times(store, len(data["test"]), "test", seconds), **facts}
    write_methods(ctx.out, {cfg.rank.name: {"rerank": row}})
    ctx.log(f"{cfg.rank.name}: rerank of {ev.rerank_cf}'s top {facts['rerank_width']}, {facts['reranked_cases']} "
            f"of {len(data['test'])} targets retrieved, in {seconds:.1f} s")
