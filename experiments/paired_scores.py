"""Two rankers on the same stored lists, paired case by case: each one's HR@K / NDCG@K and the difference
A - B with a 95% bootstrap interval over the cases (evaluate.intervals.paired_bootstrap, seed 0).

Reads two per-case score files of one split (`<run>/score-ranker/sampled/<method>_<split>.parquet`, or any
file with the columns greater, ties, n, candidates); refuses files that do not rank the same lists.

`--blend W ...` adds, for each weight W, the blend (1 - W) * z(A) + W * z(B) of the two methods' per-case
z-scored scores (evaluate.fusion.fuse; the files need their `scores` column) minus B alone: does A add
anything to B? The weights are fixed by the caller, not picked on these cases.

    python experiments/paired_scores.py \\
        runs/demo/experiment/2025-mmsrarec-neg4/score-ranker/sampled/mmsrarec-neg4_test.parquet \\
        runs/demo/score-ranker/sampled/mmsrarec_test.parquet --out experiments/results/demo_negatives_test
    python experiments/paired_scores.py runs/X/score-ranker/sampled/mmsrarec_test.parquet \\
        runs/X/score-text/sampled/text_test.parquet --blend 0.5 0.7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmsrarec.evaluate.casefiles import score_matrix
from mmsrarec.evaluate.fusion import fuse
from mmsrarec.evaluate.intervals import paired_bootstrap
from mmsrarec.evaluate.metrics import per_case
from mmsrarec.evaluate.protocols import sampled_counts, sampled_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--metrics", nargs="+", default=["hr@5", "ndcg@5", "gauc"])
    ap.add_argument("--blend", nargs="+", type=float, default=[], metavar="W",
                    help="also (1 - W) * z(A) + W * z(B) minus B, for each W in [0, 1]")
    ap.add_argument("--out", type=Path, help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    if any(not 0.0 <= w <= 1.0 for w in args.blend):
        raise SystemExit(f"--blend weights must be in [0, 1], got {args.blend}")
    weights = sorted(set(args.blend))
    columns = ["greater", "ties", "n", "candidates", *(["scores"] if weights else [])]
    try:
        frames = [pd.read_parquet(p, columns=columns) for p in (args.a, args.b)]
    except (OSError, ValueError) as e:  # a missing file or column (ArrowInvalid is a ValueError)
        raise SystemExit(f"cannot read {args.a} and {args.b} with the columns {', '.join(columns)}: {e}")
    if len(frames[0]) != len(frames[1]) or any(not np.array_equal(x, y) for x, y in
                                                 zip(frames[0]["candidates"], frames[1]["candidates"])):
        raise SystemExit(f"{args.a} and {args.b} do not rank the same lists")
    values = [per_case(args.metrics, *(f[c].to_numpy() for c in ("greater", "ties", "n"))) for f in frames]
    diff = paired_bootstrap(values[0], values[1], np.random.default_rng(0))
    report = {"a": str(args.a), "b": str(args.b), "cases": len(frames[0]),
              "a_values": {m: round(float(np.mean(v)), 4) for m, v in values[0].items()},
              "b_values": {m: round(float(np.mean(v)), 4) for m, v in values[1].items()}, "a_minus_b": diff}
    lines = [f"# {args.a} minus {args.b}, {len(frames[0])} cases", "",
             "| metric | A | B | A - B (95%) |", "|---|---:|---:|---|"]
    lines += [f"| {m} | {report['a_values'][m]:.4f} | {report['b_values'][m]:.4f} | "
              f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}] |" for m, d in diff.items()]
    if weights:
        a, b = (score_matrix(f) for f in frames)
        for path, frame, scores in zip((args.a, args.b), frames, (a, b)):
            if any(not np.array_equal(x, frame[c].to_numpy()) for x, c in zip(sampled_counts(scores),
                                                                          ("greater", "ties", "n"))):
                raise SystemExit(f"{path}: its scores and its stored ranks (greater, ties, n) do not match")
        lines += ["", "| blend (1 - W) z(A) + W z(B) | metric | blend | blend - B (95%) |", "|---|---|---:|---|"]
        report["blends"] = {}
        for w in weights:
            blended = sampled_metrics(fuse(a, b, w), args.metrics)
            d = paired_bootstrap(blended, values[1], np.random.default_rng(0))
            report["blends"][str(w)] = {"values": {m: round(float(np.mean(v)), 4) for m, v in blended.items()},
                                        "minus_b": d}
            lines += [f"| W = {w:g} | {m} | {np.mean(blended[m]):.4f} | {d[m][0]:+.4f} [{d[m][1]:+.4f}, {d[m][2]:+.4f}] |"
                      for m in args.metrics]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name(args.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_name(args.out.name + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
