"""The evaluate stage: read every method's per-case results, write the leaderboard and the report.

It computes with no model: the scoring stages (score-cf, score-ranker, rerank-ranker, score-mllmmsr) wrote
each method's per-case standing of the target (evaluate/casefiles.py), and outside score files are matched
to the stored lists here. Every row then comes from one builder (method_row) over those files, with a 95%
bootstrap interval over cases for its headline metrics and, per protocol, its paired difference to the best
CF model (picked on valid). The sampled protocol reports two AUCs (evaluate/metrics.py): `auc`, one ROC AUC
of all test rows pooled, as the papers report it, recomputed from the stored scores (and on every bootstrap
sample of the cases), and `gauc`, the mean of the per-case AUCs. Test metrics are reported only; nothing
here selects a model on them.
Writes leaderboard.{md,csv,json,png}, metrics.json, the per-case files of the rows computed here (outside
score files, blends) and report.html.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import write_json
from ..cf.base import Cases
from ..data.prepare import load_prepared
from ..errors import ArtifactError
from .casefiles import case_path, read_cases, read_methods, score_matrix, write_scored_lists
from .intervals import case_bootstrap, paired_bootstrap
from .leaderboard import write_leaderboard
from .metrics import POOLED, PooledAUC, metric_names, per_case
from .outside import outside_scores
from .rerank import rerank_names

SPLITS = ("valid", "test")
# the metrics each protocol's rows get intervals and paired differences for
HEADLINE = {"sampled": ("hr@5", "ndcg@5", "auc", "gauc"), "full": ("hr@10", "ndcg@10"),
            "rerank": ("hr@10", "ndcg@10")}


def run(ctx) -> None:
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    data = load_prepared(ctx.input("prepare"))
    cases = {split: Cases.from_frame(data[split]) for split in SPLITS}
    sources = scored_methods(ctx)
    for name, facts in outside_scores(ctx, data, cases).items():
        sources[name] = {p: (ctx.out, f) for p, f in facts.items()}
    order = [*(m for m in sources if m not in ev.methods), *ev.methods]  # outside files first, as before
    rows, per = [], {}
    for method in order:
        for protocol in (p for p in ev.protocols if p in sources.get(method, {})):
            row, per[(method, protocol)] = method_row(method, protocol, *sources[method][protocol], ev.ks)
            rows.append(row)
    for cf_name in ev.fuse:  # blends of the per-case scores read above
        name, facts = fusion(ctx, sources, cf_name)
        sources[name] = {"sampled": (ctx.out, facts)}
        row, per[(name, "sampled")] = method_row(name, "sampled", ctx.out, facts, ev.ks)
        rows.append(row)
    for row in rows:
        if row.get("auc_missing"):
            ctx.log(f"{row['method']:10s} {row['protocol']:8s} no pooled auc: {row['auc_missing']}")
    add_intervals(rows, per, [m for m in ev.methods if m in cfg.cf.models], cfg.seed)
    for row in rows:
        ctx.log(f"{row['method']:10s} {row['protocol']:8s} test " + "  ".join(
            f"{k}={row['test_' + k]:.4f}" for k in HEADLINE[row["protocol"]] if f"test_{k}" in row))
    board = pd.DataFrame(rows)
    write_json(ctx.out / "metrics.json", rows)
    write_leaderboard(board, ctx.out, title=f"{cfg.name}: {data['stats']['users']} users, "
                      f"{len(data['items'])} items, split={cfg.data.split}", stats=data["stats"])
    ctx.summary["rows"] = len(rows)
    from .report import ReportInputs, write_report  # after the leaderboard, which the report reads
    shown = {}  # each method's sampled test cases, for its rankings in the report
    for method, scored in sources.items():
        folder, facts = scored.get("sampled", (None, {}))
        if "test" in facts.get("splits", ()):
            shown[method] = case_path(folder, method, "sampled", "test")
    write_report(ReportInputs.from_context(ctx, shown), ctx.out / "report.html")


def scored_methods(ctx) -> dict[str, dict[str, tuple[Path, dict]]]:
    """method -> protocol -> (the scoring stage folder holding its per-case files, its facts), from every
    stage this one needs that wrote a methods.json."""
    out: dict[str, dict[str, tuple[Path, dict]]] = {}
    for stage in ctx.needs or ():
        folder = ctx.input(stage)
        for method, facts in read_methods(folder).items():
            for protocol, f in facts.items():
                held = out.setdefault(method, {})
                if protocol in held:
                    raise ArtifactError(f"{method!r} ({protocol}) is scored by two stages, {held[protocol][0]} and "
                                        f"{folder}: give each method its own name (rank.name, mllm_msr.name, cf.models)")
                held[protocol] = (folder, f)
    return out


def method_row(method: str, protocol: str, folder: Path, facts: dict, ks: list[int]
               ) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(the leaderboard row of one method under one protocol, its per-case metrics per split) from the
    per-case files a scoring stage wrote in `folder` and that stage's facts. The pooled `auc` (sampled) comes
    from the files' scores, as a metrics.PooledAUC in place of per-case values; a file without scores gets NaN
    and the row says why (`auc_missing`), never an AUC of something else."""
    names = rerank_names(ks, facts["rerank_width"]) if protocol == "rerank" else metric_names(ks, protocol)
    row = {"method": method, "protocol": protocol,
           **{k: v for k, v in facts.items() if k != "splits"}}
    per = {}
    for split in facts["splits"]:
        frame = read_cases(folder, method, protocol, split)
        counted = per_case([n for n in names if n not in POOLED],
                           *(frame[c].to_numpy(np.int64) for c in ("greater", "ties", "n")))
        per[split] = {}
        row[f"{split}_cases"] = len(frame)
        for name in names:
            if name not in POOLED:
                per[split][name] = counted[name]
                row[f"{split}_{name}"] = float(counted[name].mean())
            elif "scores" in frame:
                try:  # ragged lists, a wrong shape, NaN or infinity
                    per[split][name] = PooledAUC(score_matrix(frame))
                except ValueError as err:
                    raise ArtifactError(f"{case_path(folder, method, protocol, split)}: no pooled {name} from its "
                                        f"scores ({err}); the scoring stage in {folder} wrote a broken case file: "
                                        f"rerun it with --force (`mmsrarec {Path(folder).name} --config ... --force`)"
                                        ) from err
                row[f"{split}_{name}"] = per[split][name].value
            else:
                row[f"{split}_{name}"] = float("nan")
                row["auc_missing"] = (f"its {protocol} case files ({case_path(folder, method, protocol, split)}) "
                                      "hold no scores, only the target's standing; rescore it with --force")
    return row, per


def add_intervals(rows: list[dict], per: dict, cf_models: list[str], seed: int) -> None:
    """Each row's 95% bootstrap interval of its headline test metrics (test_<m>_lo/_hi), and its paired
    difference to the protocol's best CF model by valid (vs_cf, test_<m>_diff, _diff_lo, _diff_hi); a rerank
    row is paired with the full protocol's (the same leave-one-out cases)."""
    best = {}
    for protocol, preferred in (("sampled", "ndcg@5"), ("full", "ndcg@10")):
        valid = {m: per[(m, protocol)]["valid"] for m in cf_models if "valid" in per.get((m, protocol), {})}
        metric = selection_metric(next(iter(valid.values()), {}), preferred)
        if metric is not None:
            best[protocol] = max((float(v[metric].mean()), m) for m, v in valid.items())[1]
    best["rerank"] = best.get("full")
    for row in rows:
        protocol, test = row["protocol"], per[(row["method"], row["protocol"])].get("test")
        if test is None:
            continue
        metrics = [m for m in HEADLINE[protocol] if m in test]
        if not metrics:
            continue
        rng = np.random.default_rng([seed, 1009])
        for m, (_, lo, hi) in case_bootstrap({m: test[m] for m in metrics}, rng).items():
            row[f"test_{m}_lo"], row[f"test_{m}_hi"] = lo, hi
        against = best.get(protocol)
        ref = per.get((against, "full" if protocol == "rerank" else protocol), {}).get("test")
        if against is None or against == row["method"] or ref is None or len(ref[metrics[0]]) != len(test[metrics[0]]):
            continue
        row["vs_cf"] = against
        both = [m for m in metrics if m in ref]
        for m, (diff, lo, hi) in paired_bootstrap({m: test[m] for m in both}, {m: ref[m] for m in both},
                                                  np.random.default_rng([seed, 1013])).items():
            row[f"test_{m}_diff"], row[f"test_{m}_diff_lo"], row[f"test_{m}_diff_hi"] = diff, lo, hi


def selection_metric(names, preferred: str) -> str | None:
    """`preferred` when the rows have it, else their NDCG at the smallest cut-off (evaluate.ks may lack 5 or 10)."""
    if preferred in names:
        return preferred
    cuts = sorted((int(n.split("@")[1]), n) for n in names if n.startswith("ndcg@"))
    return cuts[0][1] if cuts else None


def fusion(ctx, sources: dict, cf_name: str) -> tuple[str, dict]:
    """evaluate.fuse: the LLM ranker's sampled scores blended with `cf_name`'s, the weight picked on valid
    (evaluate/fusion.py); its per-case files are written here like an outside method's. Returns (name, facts)."""
    from .fusion import fuse, pick_weight

    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    name = f"{cfg.rank.name}+{cf_name}"
    pairs = {}
    for split in SPLITS:
        llm_frame = read_cases(sources[cfg.rank.name]["sampled"][0], cfg.rank.name, "sampled", split)
        cf_frame = read_cases(sources[cf_name]["sampled"][0], cf_name, "sampled", split)
        if [list(c) for c in llm_frame["candidates"]] != [list(c) for c in cf_frame["candidates"]]:
            raise ArtifactError(f"{cfg.rank.name} and {cf_name} ranked different {split} lists; rerun the scoring "
                                "stages with --force")
        pairs[split] = (cf_frame, score_matrix(llm_frame), score_matrix(cf_frame))
    weight, curve = pick_weight(pairs["valid"][1], pairs["valid"][2], ev.fuse_metric)
    for split, (frame, llm, cf) in pairs.items():
        write_scored_lists(ctx.out, name, split, frame["user"], np.array(frame["candidates"].tolist()),
                           fuse(llm, cf, weight))
    ctx.log(f"{name:10s} sampled  {cf_name} weight {weight:.2f} (valid {ev.fuse_metric} {curve[weight]:.4f}; "
            f"{cfg.rank.name} alone {curve[0.0]:.4f}, {cf_name} alone {curve[1.0]:.4f})")
    return name, {"splits": list(SPLITS), "fuse_weight": weight, "fuse_metric": ev.fuse_metric,
            "fuse_valid_curve": {f"{w:.2f}": round(v, 6) for w, v in curve.items()}}
