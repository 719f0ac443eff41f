"""Each variant of an experiment paired case by case, on each seed's lists, with the main ranker, the best CF
model and the text baseline of that seed's main run.

A variant's run evaluates its own rows only (members.py), so its own leaderboard compares it with nothing, and the
board's mean ± std over seeds says nothing of the cases. Here every pair is one 95% paired bootstrap over the
test cases both runs scored (evaluate.intervals.paired_bootstrap, the draws of evaluate's own pairing), from the
per-case metrics each run's evaluate wrote (evaluate/cases.parquet; the pooled `auc` has none and is left out).
The best CF model is the one the main ranker's row was paired with on its run's leaderboard (picked on valid;
for the rerank protocol, the full protocol's best, on the same cases). Runs evaluated before cases.parquet
existed, and rows from the ledger, have no cases: they are named, not paired.
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
    cases, with its 95% interval (COLUMNS), the labels of finished runs without cases.parquet). Partners
    (`role`): the main ranker `main`, the best CF model of the main run's `main` row (its `vs_cf` in `rows`), the
    text baseline `text`; `metrics` per protocol, those without per-case values skipped."""
    cases, stale = {}, []
    for member, run_dir in done:
        frame = read_case_metrics(run_dir / "evaluate")
        if frame is None:
            stale.append(member.label)
        else:
            cases[(member.seed, member.method)] = frame[frame["split"] == "test"]
    out = []
    for (seed, variant), mine in cases.items():
        theirs = cases.get((seed, None))
        if variant is None or theirs is None:
            continue
        for protocol in PROTOCOLS:
            own = _part(mine, variant, protocol)
            if own is None:
                continue
            for role, partner, their_protocol in _partners(rows, seed, main, text, protocol):
                other = _part(theirs, partner, their_protocol)
                if other is None:
                    continue
                names = [m for m in metrics.get(protocol, []) if m in own and m in other
                         and own[m].notna().all() and other[m].notna().all()]
                paired = _aligned(own, other)
                if not names or paired is None:
                    if names:
                        print(f"[experiment] {seed}-{variant}: its {protocol} test cases are not those of {partner} "
                              "in its seed's main run; not paired", file=sys.stderr)
                    continue
                a, b = paired
                diffs = paired_bootstrap({m: a[m].to_numpy() for m in names}, {m: b[m].to_numpy() for m in names},
                                         np.random.default_rng([seed, 1013]))
                out += [{"variant": variant, "seed": seed, "protocol": protocol, "minus": partner, "role": role,
                         "cases": len(a), "metric": m, "diff": d, "lo": lo, "hi": hi}
                        for m, (d, lo, hi) in diffs.items()]
    frame = pd.DataFrame(out, columns=COLUMNS)
    order = {v: i for i, v in enumerate(dict.fromkeys(m.method for m, _ in done if m.method))}
    return frame.sort_values("variant", key=lambda v: v.map(order), kind="stable").reset_index(drop=True), stale


def _partners(rows: pd.DataFrame, seed: int, main: str, text: str, protocol: str) -> list[tuple[str, str, str]]:
    """(role, method, the protocol of its cases) for a variant's rows under `protocol` on `seed`."""
    out = [("main ranker", main, protocol)]
    mine = rows[(rows["seed"] == seed) & (rows["method"] == main) & (rows["protocol"] == protocol)]
    if "label" in mine:
        mine = mine[mine["label"] == f"{seed}-main"]
    cf = mine["vs_cf"].dropna() if "vs_cf" in mine else pd.Series(dtype=object)
    if len(cf):
        out.append(("best CF", str(cf.iloc[0]), "full" if protocol == "rerank" else protocol))
    if protocol == "sampled":
        out.append(("text", text, protocol))
    return out


def _part(frame: pd.DataFrame, method: str, protocol: str) -> pd.DataFrame | None:
    part = frame[(frame["method"] == method) & (frame["protocol"] == protocol)]
    return part.reset_index(drop=True) if len(part) else None


def _aligned(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The two runs' cases in one order: as written where their users agree, else matched by user where each
    user is one case on both sides; None where the cases differ."""
    if len(a) == len(b) and np.array_equal(a["user"].to_numpy(), b["user"].to_numpy()):
        return a, b
    if len(a) != len(b) or a["user"].duplicated().any() or b["user"].duplicated().any() \
            or set(a["user"]) != set(b["user"]):
        return None
    return a, b.set_index("user").loc[a["user"]].reset_index()


def pairs_lines(pairs: pd.DataFrame, stale: list[str], from_ledger: bool) -> list[str]:
    """The board's markdown section of case_pairs: per protocol, one line per variant, seed and partner."""
    lines = []
    if len(pairs):
        lines += ["### Variants case by case, on each seed's lists", "",
                  "Variant minus the main ranker, the best CF model by valid (the one the main ranker is paired with "
                  "on that seed's leaderboard) and the text baseline, with a 95% paired bootstrap interval over the test "
                  "cases both scored (experiment/pairs.py); all of them in variant_pairs.csv. A variant's own run "
                  "evaluates its rows only: these are its comparisons.", ""]
        for protocol, part in pairs.groupby("protocol", sort=False):
            names = list(dict.fromkeys(part["metric"]))
            lines += [f"{protocol}:", "", "| variant | seed | cases | minus | " + " | ".join(names) + " |",
                      "|---|---|---|---|" + "---|" * len(names)]
            for (variant, seed, minus), group in part.groupby(["variant", "seed", "minus"], sort=False):
                cell = {r["metric"]: f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]"
                        for r in group.to_dict(orient="records")}
                role = group["role"].iloc[0]
                who = minus if role == "main ranker" or role == "text" else f"{minus} ({role})"
                lines.append(f"| {variant} | {seed} | {int(group['cases'].iloc[0])} | {who} | "
                             + " | ".join(cell.get(m, "–") for m in names) + " |")
            lines.append("")
    if stale:
        lines += [f"Not paired case by case: {', '.join(stale)}, evaluated before evaluate wrote cases.parquet; "
                  "`mmsrarec run --config ... --runs LABEL --force` redoes their evaluate stage (seconds, no model).",
                  ""]
    if from_ledger and len(pairs):
        lines += ["Runs taken from the ledger have no cases here.", ""]
    return lines
