"""The evaluate stage: read every method's per-case results, write the leaderboard and the report.

It computes with no model: the scoring stages (score-cf, score-ranker, rerank-ranker, score-mllmmsr) wrote
each method's per-case standing of the target (evaluate/casefiles.py), and outside score files are matched
to the stored lists here. Every row then comes from one builder (method_row) over those files, with a 95%
bootstrap interval over cases for its headline metrics and, per protocol, its paired difference to the best
CF model (picked on valid). The sampled protocol reports two AUCs (evaluate/metrics.py): `auc`, one ROC AUC
of all test rows pooled, as the papers report it, recomputed from the stored scores (and on every bootstrap
sample of the cases), and `gauc`, the mean of the per-case AUCs. Test metrics are reported only; nothing
here selects a model on them. Every row is also computed on slices of its cases, by the target's training
popularity and by the history length (evaluate/slices.py), each paired with the best CF model on that slice.
Writes leaderboard.{md,csv,json,png}, metrics.json, cases.parquet (every row's per-case metrics),
slices.{csv,json,png}, the per-case files of the rows computed here (outside score files, blends) and report.html.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import read_json, write_json, write_text
from ..cf.base import Cases
from ..data.prepare import load_prepared
from ..errors import ArtifactError
from .casefiles import USERS, case_path, read_cases, read_methods, score_matrix, write_case_metrics, write_scored_lists
from .intervals import case_bootstrap, paired_bootstrap
from .leaderboard import write_leaderboard
from .metrics import POOLED, PooledAUC, metric_names, per_case
from .outside import outside_scores
from .rerank import rerank_names
from .slices import case_slices, labels_of, slicings, write_slices

SPLITS = ("valid", "test")
VERDICT = "verdict.md"  # `mmsrarec run` prints it
# the metrics each protocol's rows get intervals and paired differences for
HEADLINE = {"sampled": ("hr@5", "ndcg@5", "auc", "gauc"), "full": ("hr@10", "ndcg@10"),
            "rerank": ("hr@10", "ndcg@10")}
SELECTION = (("sampled", "ndcg@5"), ("full", "ndcg@10"))  # the valid metric the best CF model is picked by
SLICINGS = ("popularity", "history")  # evaluate/slices.py's, in the columns of case_slices
SLICE_MIN_VALID = 10  # a slice's best CF model is picked on at least this many of its valid cases


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
    cf_models = [m for m in ev.methods if m in cfg.cf.models]
    add_intervals(rows, per, cf_models, cfg.seed)
    write_case_metrics(ctx.out, per)
    for row in rows:
        ctx.log(f"{row['method']:10s} {row['protocol']:8s} test " + "  ".join(
            f"{k}={row['test_' + k]:.4f}" for k in HEADLINE[row["protocol"]] if f"test_{k}" in row))
    buckets = slicings(ev.popularity_buckets, ev.history_buckets)
    labelled = case_slices(data, buckets)
    table = write_slices(add_slices(rows, per, labelled, cf_models, cfg.seed), ctx.out, buckets, labelled)
    board = pd.DataFrame(rows)
    write_json(ctx.out / "metrics.json", rows)
    write_leaderboard(board, ctx.out, title=f"{cfg.name}: {data['stats']['users']} users, "
                      f"{len(data['items'])} items, split={cfg.data.split}", stats=data["stats"],
                      slices=(table, {name: b.labels() for name, b in buckets.items()}))
    ctx.summary["rows"] = len(rows)
    lines = verdict(ctx, per, labelled, cf_models)
    if lines:
        write_text(ctx.out / VERDICT, "\n".join(lines))
        ctx.log(f"verdict: {ctx.out.parent / 'evaluate' / VERDICT} (`mmsrarec run` prints it)")
    from .report import ReportInputs, write_report  # after the leaderboard, which the report reads
    shown = {}  # each method's sampled test cases, for its rankings in the report
    for method, scored in sources.items():
        folder, facts = scored.get("sampled", (None, {}))
        if "test" in facts.get("splits", ()):
            shown[method] = case_path(folder, method, "sampled", "test")
    write_report(ReportInputs.from_context(ctx, shown), ctx.out / "report.html")


def verdict(ctx, per: dict, labelled: dict[str, pd.DataFrame], cf_models: list[str]) -> list[str]:
    """The verdict's lines (evaluate/verdict.py): each LLM method on the leaderboard against the best CF model
    and the text baseline, over all cases and by popularity slice, and the keyword policy's held-out reward."""
    from .verdict import verdict_lines

    cfg = ctx.cfg
    llm = [m for m in (cfg.rank.name, cfg.mllm_msr.name) if m in cfg.evaluate.methods and (m, "sampled") in per]
    if not llm:
        return []
    text = cfg.text.name if (cfg.text.name, "sampled") in per else None
    popularity = {split: (lambda users, t=table, s=split: labels_of(t, "popularity", users, f"{s} cases"))
                  for split, table in labelled.items()}
    s_index = [c for c in next(iter(labelled.values())).columns if c in SLICINGS].index("popularity")

    def draws(label: str | None) -> np.random.Generator:  # those of add_intervals' and add_slices' differences
        return np.random.default_rng([cfg.seed, 1013] if label is None else [cfg.seed, 1013, s_index, _lower(label)])

    grpo = None
    if "train-summarizer" in (ctx.needs or ()) and (ctx.input("train-summarizer") / "eval.json").is_file():
        grpo = read_json(ctx.input("train-summarizer") / "eval.json")
    return verdict_lines(per, llm, best_cf(per, cf_models).get("sampled"), text, popularity, cfg.data.split,
                         draws, grpo)


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
    and the row says why (`auc_missing`), never an AUC of something else. Each split's per-case values also
    hold its cases' users (under USERS), which slices (add_slices) and pairings match cases by."""
    names = rerank_names(ks, facts["rerank_width"]) if protocol == "rerank" else metric_names(ks, protocol)
    row = {"method": method, "protocol": protocol,
           **{k: v for k, v in facts.items() if k != "splits"}}
    per = {}
    for split in facts["splits"]:
        frame = read_cases(folder, method, protocol, split)
        counted = per_case([n for n in names if n not in POOLED],
                           *(frame[c].to_numpy(np.int64) for c in ("greater", "ties", "n")))
        per[split] = {USERS: frame["user"].to_numpy(np.int64)}
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
    best = best_cf(per, cf_models)
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
        if against is None or against == row["method"] or ref is None or len(ref[metrics[0]]) != len(test[metrics[0]]) \
                or not np.array_equal(ref[USERS], test[USERS]):
            continue
        row["vs_cf"] = against
        both = [m for m in metrics if m in ref]
        for m, (diff, lo, hi) in paired_bootstrap({m: test[m] for m in both}, {m: ref[m] for m in both},
                                                  np.random.default_rng([seed, 1013])).items():
            row[f"test_{m}_diff"], row[f"test_{m}_diff_lo"], row[f"test_{m}_diff_hi"] = diff, lo, hi


def best_cf(per: dict, cf_models: list[str], rows_of=None) -> dict[str, str | None]:
    """protocol -> the CF model with the best valid selection metric (SELECTION; rerank: the full protocol's),
    None where no CF model has valid cases. rows_of(model, protocol, users): which of a model's valid cases
    count (a slice; None: all); on a slice, a model with fewer than SLICE_MIN_VALID of them is not a candidate,
    and a tie for the best (every CF model at chance on never-seen targets) picks none (the caller falls back to
    the overall best)."""
    best = {}
    for protocol, preferred in SELECTION:
        valid = {}
        for m in cf_models:
            split = per.get((m, protocol), {}).get("valid")
            if split is None:
                continue
            rows = None if rows_of is None else rows_of(m, protocol, split[USERS])
            if rows is None or len(rows) >= SLICE_MIN_VALID:
                valid[m] = split if rows is None else {k: v[rows] for k, v in split.items() if _is_array(v)}
        metric = selection_metric(next(iter(valid.values()), {}), preferred)
        ranked = [] if metric is None else sorted(((float(v[metric].mean()), m) for m, v in valid.items()), reverse=True)
        tied = rows_of is not None and len(ranked) > 1 and ranked[0][0] == ranked[1][0]
        best[protocol] = None if not ranked or tied else ranked[0][1]
    best["rerank"] = best.get("full")
    return best


def add_slices(rows: list[dict], per: dict, labelled: dict[str, pd.DataFrame], cf_models: list[str], seed: int
               ) -> list[dict]:
    """The slice records (evaluate/slices.py's long format) of every row: per split and slice of its cases, its
    headline metrics (valid: values; test: with 95% bootstrap intervals over the slice's cases and the paired
    difference to the best CF model on the slice's valid cases, else the overall best by valid). `labelled`:
    slices.case_slices. A slice's draws depend only on the seed and the slice, so they are the same for every
    row, as add_intervals' are."""
    overall = best_cf(per, cf_models)
    names = [c for c in next(iter(labelled.values())).columns if c in SLICINGS]
    cache: dict = {}

    def labels(method: str, protocol: str, split: str, slicing: str, users) -> np.ndarray:
        key = (method, protocol, split, slicing)
        if key not in cache:
            cache[key] = labels_of(labelled[split], slicing, users, f"{method} ({protocol}, {split})")
        return cache[key]

    best = {}  # (slicing, slice) -> protocol -> (the CF model, "slice" | "overall")
    for slicing in names:
        for label in dict.fromkeys(labelled["valid"][slicing]) if "valid" in labelled else ():
            picked = best_cf(per, cf_models, lambda m, p, users: np.flatnonzero(
                labels(m, p, "valid", slicing, users) == label))
            best[(slicing, label)] = {p: (m, "slice") if m is not None else (overall.get(p), "overall")
                                      for p, m in picked.items()}
    out = []
    for row in rows:
        method, protocol = row["method"], row["protocol"]
        for split in (s for s in SPLITS if s in per[(method, protocol)] and s in labelled):
            values = per[(method, protocol)][split]
            metrics = [m for m in HEADLINE[protocol] if m in values]
            if not metrics:
                continue
            for s_index, slicing in enumerate(names):
                mine = labels(method, protocol, split, slicing, values[USERS])
                for label in sorted(dict.fromkeys(labelled[split][slicing]), key=_lower):
                    idx = np.flatnonzero(mine == label)
                    if not len(idx):
                        continue
                    part = {m: _subset(values[m], idx) for m in metrics}
                    head = {"method": method, "protocol": protocol, "slicing": slicing, "slice": label,
                            "split": split, "cases": int(len(idx))}
                    records = {m: {**head, "metric": m, "value": _value(part[m])} for m in metrics}
                    out += records.values()
                    if split != "test":
                        continue
                    l_index = int(_lower(label))
                    for m, (_, lo, hi) in case_bootstrap(part, np.random.default_rng([seed, 1009, s_index, l_index])
                                                         ).items():
                        records[m].update(lo=lo, hi=hi)
                    against, source = best.get((slicing, label), {}).get(protocol, (overall.get(protocol), "overall"))
                    ref_protocol = "full" if protocol == "rerank" else protocol
                    ref = per.get((against, ref_protocol), {}).get("test")
                    if against is None or against == method or ref is None:
                        continue
                    if len(ref[USERS]) != len(values[USERS]):
                        continue  # scored on fewer cases than the reference: not paired, as in add_intervals
                    ref_idx = np.flatnonzero(labels(against, ref_protocol, "test", slicing, ref[USERS]) == label)
                    if not np.array_equal(values[USERS][idx], ref[USERS][ref_idx]):
                        continue  # not the same cases in the same order
                    both = [m for m in metrics if m in ref]
                    diffs = paired_bootstrap({m: part[m] for m in both}, {m: _subset(ref[m], ref_idx) for m in both},
                                             np.random.default_rng([seed, 1013, s_index, l_index]))
                    for m, (diff, lo, hi) in diffs.items():
                        records[m].update(vs_cf=against, vs_cf_from=source, diff=diff, diff_lo=lo, diff_hi=hi)
    return out


def _is_array(v) -> bool:
    return isinstance(v, np.ndarray)


def _subset(v, idx: np.ndarray):
    """A metric's per-case values (an array), or its pooled statistic (PooledAUC), on the cases `idx`."""
    return v[idx] if _is_array(v) else v.subset(idx)


def _value(v) -> float:
    return float(np.mean(v)) if _is_array(v) else float(v.value)


def _lower(label: str) -> int:
    """A slice label's smallest value ("5-19" -> 5, "100+" -> 100): its bucket order."""
    return int(label.split("-")[0].rstrip("+"))


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
