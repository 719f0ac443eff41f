"""The score-cf stage: every CF model of evaluate.methods on the valid and test cases.

sampled: the stored 1 + N candidate lists; full: every item but the case's history (evaluate.protocols).
Items no training sequence holds score below every other item, all tied (base.SeenItemsOnly).
Writes per-case files (evaluate/casefiles.py) and methods.json (training facts, scoring time) for the
evaluate stage, which computes the metrics from them without loading a model.
"""

from __future__ import annotations

import time

from ..data.prepare import load_prepared
from ..evaluate.casefiles import write_cases, write_methods, write_scored_lists
from ..evaluate.protocols import full_counts, sampled_scores
from .base import Cases, SeenItemsOnly, seen_items
from .stage import load_trained

SPLITS = ("valid", "test")


def run(ctx) -> None:
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    data = load_prepared(ctx.input("prepare"))
    n_items = len(data["items"])
    cases = {split: Cases.from_frame(data[split]) for split in SPLITS}
    cf_dir = ctx.input("train-cf")
    methods = [m for m in ev.methods if m in cfg.cf.models]
    seen = seen_items(data["train"]["items"], n_items)
    facts: dict[str, dict] = {}
    for method in methods:
        model, info = load_trained(cf_dir, method, cfg, n_items)
        model = SeenItemsOnly(model, seen)
        trained = {"train_time_s": info.get("train_time_s"), "peak_rss_mb": info.get("peak_rss_mb"),
                   "epochs": info.get("epochs_run")}
        facts[method] = {}
        for protocol in (p for p in ev.protocols if p in ("sampled", "full")):
            row = {**trained, "splits": list(SPLITS)}
            for split, c in cases.items():
                t0 = time.perf_counter()
                if protocol == "sampled":
                    scores = sampled_scores(model.score, c, ev.batch_size)
                    write_scored_lists(ctx.out, method, split, c.users, c.candidates(), scores)
                else:
                    greater, ties, n = full_counts(model.full_scores, c, n_items, ev.batch_size,
                                                   exclude_history=ev.full_exclude_history)
                    write_cases(ctx.out, method, "full", split, c.users, greater, ties, n)
                row[f"{split}_eval_time_s"] = round(time.perf_counter() - t0, 3)
            facts[method][protocol] = row
        ctx.log(f"{method}: scored {', '.join(facts[method])} on {len(cases['valid'])} valid and "
                f"{len(cases['test'])} test cases")
    write_methods(ctx.out, facts)
    ctx.summary["methods"] = methods
