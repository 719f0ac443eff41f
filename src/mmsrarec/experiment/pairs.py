"""Each variant of an experiment paired case by case, on each seed's lists, with the main ranker, the best CF
model and the text baseline of that seed's main run.

A variant's run evaluates its own rows only (members.py), so its own leaderboard compares it with nothing, and the
board's mean ± std over seeds says nothing of the cases. Here every pair is one 95% paired bootstrap over the
seed's test cases (evaluate.intervals.paired_bootstrap, the draws of evaluate's own pairing), from the
per-case metrics each run's evaluate wrote (evaluate/cases.parquet; the pooled `auc` has none and is left out).
The best CF model is the one the main ranker's row was paired with on its run's leaderboard (picked on valid;
for the rerank protocol, the full protocol's best, on the same cases); the text baseline on the sampled lists.
A pair needs the same test users on both sides (one case each where their order differs). Variant runs evaluated
before cases.parquet existed, and those whose seed's main run is not finished here (the ledger keeps no cases),
are named, not paired. A variant's evaluate.fuse blends are not paired.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.casefiles import read_case_metrics
from ..evaluate.intervals import paired_bootstrap
from .members import Member

PROTOCOLS = ("sampled", "rerank")  # those an LLM ranker has rows on; rerank pairs the CF model's full rows
COLUMNS = ["variant", "seed", "protocol", "minus", "role", "cases", "metric", "diff", "lo", "hi"]


def case_pairs(done: list[tuple[Member, Path]], rows: pd.DataFrame, main: str, text: str,
               metrics: dict[str, list[str]]) -> tuple[pd.DataFrame, list[str]]:
    """(one row per variant, seed, protocol, partner and metric: the variant minus the partner over the test
    cases, with its 95% interval (COLUMNS); the finished variant runs not paired, each with why). Partners
    (`role`): the main ranker `main`, the best CF model of the main run's `main` row (its `vs_cf` in `rows`), the
    text baseline `text` (sampled). The metrics: `metrics[protocol]` where the two runs have them per case, else
    hr@k and ndcg@k at the largest k both have (a rerank of the top 10 has no hr@10)."""
    cases, unpaired = {}, []
    for member, run_dir in done:
        frame = read_case_metrics(run_dir / "evaluate")
        if frame is None:
            unpaired.append(f"{member.label} (evaluated before evaluate wrote cases.parquet: `mmsrarec run --config "
                            f"... --runs {member.label} --force` redoes its evaluate stage in seconds, no model)")
        else:
            cases[(member.seed, member.method)] = frame[frame["split"] == "test"]
    out = []
    for member, _ in done:
        variant, seed = member.method, member.seed
        if variant is None or (seed, variant) not in cases:
            continue
        theirs = cases.get((seed, None))
        if theirs is None:
            main_here = any(m.seed == seed and m.method is None for m, _ in done)
            unpaired.append(f"{member.label} (its seed's main run " + ("has no cases.parquet)" if main_here else
                            "is not finished here: the ledger keeps no cases)"))
            continue
        for protocol in PROTOCOLS:
            own = _part(cases[(seed, variant)], variant, protocol)
            if own is None:
                continue
            for role, partner, their_protocol in _partners(rows, seed, main, text, protocol):
                other = _part(theirs, partner, their_protocol)
                if other is None:
                    continue
                paired = _aligned(own, other)
                if paired is None:
                    print(f"[experiment] {member.label}: its {protocol} test cases are not those of {partner} in "
                          f"{seed}-main (other users); not paired", file=sys.stderr)
                    continue
                a, b = paired
                names = _metrics(a, b, metrics.get(protocol, []))
                if not names:
                    print(f"[experiment] {member.label}: no {protocol} metric per case in common with {partner}; "
                          "not paired", file=sys.stderr)
                    continue
                diffs = paired_bootstrap({m: a[m].to_numpy() for m in names}, {m: b[m].to_numpy() for m in names},
                                         np.random.default_rng([seed, 1013]))
                out += [{"variant": variant, "seed": seed, "protocol": protocol, "minus": partner, "role": role,
                         "cases": len(a), "metric": m, "diff": d, "lo": lo, "hi": hi}
                        for m, (d, lo, hi) in diffs.items()]
    frame = pd.DataFrame(out, columns=COLUMNS)
    order = {v: i for i, v in enumerate(dict.fromkeys(m.method for m, _ in done if m.method))}
    return frame.sort_values("variant", key=lambda v: v.map(order), kind="stable").reset_index(drop=True), unpaired


def _metrics(a: pd.DataFrame, b: pd.DataFrame, wanted: list[str]) -> list[str]:
    """The metrics both frames have on every case: those `wanted` there, else hr@k and ndcg@k at the largest
    such k."""
    have = [c for c in a.columns if "@" in c or c in wanted]
    have = [c for c in have if c in b and a[c].notna().all() and b[c].notna().all()]
    names = [m for m in wanted if m in have]
    if names:
        return names
    ks = [int(c.split("@")[1]) for c in have if c.startswith("hr@") and f"ndcg@{c.split('@')[1]}" in have]
    return [f"hr@{max(ks)}", f"ndcg@{max(ks)}"] if ks else []


def _partners(rows: pd.DataFrame, seed: int, main: str, text: str, protocol: str) -> list[tuple[str, str, str]]:
    """(role, method, the protocol of its cases) for a variant's rows under `protocol` on `seed`; the rerank
    protocol's best CF model is the full protocol's, on the same leave-one-out cases (evaluate's pairing)."""
    out = [("main ranker", main, protocol)]
    mine = rows[(rows["seed"] == seed) & (rows["method"] == main) & (rows["protocol"] == protocol)]
    cf = mine["vs_cf"].dropna() if "vs_cf" in mine else pd.Series(dtype=object)
    if len(cf):
        out.append(("best CF", str(cf.iloc[0]), "full" if protocol == "rerank" else protocol))
    if protocol == "sampled":
        out.append(("text", text, protocol))
    return out


def _part(frame: pd.DataFrame, method: str, protocol: str) -> pd.DataFrame | None:
    part = frame[(frame["method"] == method) & (frame["protocol"] == protocol)]
    return part.reset_index(drop=True) if len(part) else None


def _aligned(mine: pd.DataFrame, theirs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The two runs' cases in the partner's order (so the draws are those of the partner's own evaluate): as
    written where the users agree, else matched by user where each user is one case on both sides; None where
    the users differ."""
    if len(mine) == len(theirs) and np.array_equal(mine["user"].to_numpy(), theirs["user"].to_numpy()):
        return mine, theirs
    if len(mine) != len(theirs) or mine["user"].duplicated().any() or theirs["user"].duplicated().any() \
            or set(mine["user"]) != set(theirs["user"]):
        return None
    return mine.set_index("user").loc[theirs["user"]].reset_index(), theirs


def pairs_lines(pairs: pd.DataFrame, unpaired: list[str]) -> list[str]:
    """The board's markdown section of case_pairs: per protocol, one line per variant, seed and partner; then
    the variant runs not paired."""
    if not len(pairs) and not unpaired:
        return []
    lines = ["### Variants case by case, on each seed's lists", "",
             "Variant minus the main ranker, the best CF model by valid (the one the main ranker is paired with on "
             "that seed's leaderboard) and the text baseline (sampled), with a 95% paired bootstrap interval over "
             "the seed's test cases (experiment/pairs.py); all of them in variant_pairs.csv. A variant's own run "
             "evaluates its rows only: these are its comparisons. Its evaluate.fuse blends are not paired here.", ""]
    for protocol, part in pairs.groupby("protocol", sort=False):
        names = list(dict.fromkeys(part["metric"]))
        lines += [f"{protocol}:", "", "| variant | seed | cases | minus | " + " | ".join(names) + " |",
                  "|---|---|---|---|" + "---|" * len(names)]
        for (variant, seed, minus), group in part.groupby(["variant", "seed", "minus"], sort=False):
            cell = {r["metric"]: f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]"
                    for r in group.to_dict(orient="records")}
            role = group["role"].iloc[0]
            who = f"{minus} ({role})" if role == "best CF" else minus
            lines.append(f"| {variant} | {seed} | {int(group['cases'].iloc[0])} | {who} | "
                         + " | ".join(cell.get(m, "–") for m in names) + " |")
        lines.append("")
    if unpaired:
        lines += ["Not paired case by case: " + "; ".join(unpaired) + ".", ""]
    return lines
