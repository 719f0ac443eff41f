"""How much better a CF model ranks the next item at the ranker's SFT positions than at valid / test cases.

rank.candidate_cf_rank shows each candidate's rank under a CF model trained on the training sequences.
The SFT examples are drawn from those same sequences (rank.tasks.training_positions), so there the model
ranks a target it was trained to predict; at valid and test it ranks one it never saw. This prints the
target's rank (1 = first, the history's items not competing) and its level word
(rank.candidate_cf_rank_as=level) over a seeded sample of each, from a finished run's stages. `--folds K`
adds the SFT positions ranked as rank.candidate_cf_rank_folds=K ranks them: by K models each trained
without one fold of the users, a user's positions by the model that never saw the user (rank/teachers.py;
trained here into <run>/.cf-rank-shift/, kept for a rerun):

    python experiments/cf_rank_shift.py --config configs/ml100k_gpu.yaml --folds 2 \
        --out experiments/results/cf_rank_shift
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mmsrarec.cf.base import SeenItemsOnly, seen_items
from mmsrarec.cf.stage import load_trained
from mmsrarec.config import load_config
from mmsrarec.data.prepare import load_prepared
from mmsrarec.rank.prompts import LEVEL_WORDS, rank_level
from mmsrarec.rank.stage import cf_ranks
from mmsrarec.rank.tasks import training_positions
from mmsrarec.rank.teachers import fold_teachers


def summary(ranks: np.ndarray, n_items: int) -> dict:
    levels = [rank_level(int(r), n_items) for r in ranks]
    return {"cases": len(ranks), "median_rank": float(np.median(ranks)), "mean_rank": round(float(ranks.mean()), 1),
            **{w: round(levels.count(w) / len(levels), 3) for w in LEVEL_WORDS}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model", default="sasrec", help="the CF model (rank.candidate_cf_rank)")
    ap.add_argument("--sample", type=int, default=600, help="cases per group (seeded)")
    ap.add_argument("--folds", type=int, default=0, help="K >= 2: also rank the SFT positions by K fold teachers")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    run = Path(cfg.run_dir)
    data = load_prepared(run / "prepare")
    n_items = len(data["items"])
    model = SeenItemsOnly(load_trained(run / "train-cf", args.model, cfg, n_items, device="cpu")[0],
                          seen_items(data["train"]["items"], n_items))  # as the ranker's notes and teachers rank
    rng = np.random.default_rng([cfg.seed, 31])
    positions = training_positions(data["train"], cfg.rank.examples_per_user, cfg.seed)
    picked = [positions[i] for i in rng.choice(len(positions), min(args.sample, len(positions)), replace=False)]
    groups = {"SFT positions (train)": ([seq[:t] for _, t, seq in picked], [int(seq[t]) for _, t, seq in picked])}
    for split in ("valid", "test"):
        frame = data[split].iloc[rng.choice(len(data[split]), min(args.sample, len(data[split])), replace=False)]
        groups[split] = (list(frame["history"]), [int(x) for x in frame["target"]])
    rows = {name: summary(np.array([r[0] for r in cf_ranks(model, hist, np.array(targets)[:, None])]), n_items)
            for name, (hist, targets) in groups.items()}
    if args.folds:
        folded = load_config(args.config, [*args.overrides, f"rank.candidate_cf_rank={args.model}",
                                           f"rank.candidate_cf_rank_folds={args.folds}"])
        teacher = fold_teachers(data, folded, run / ".cf-rank-shift", lambda m: print(m, file=sys.stderr))
        ranks = [cf_ranks(teacher(user), [seq[:t]], np.array([[seq[t]]]))[0][0] for user, t, seq in picked]
        first, *held_out = rows.items()
        rows = dict([first, (f"SFT positions, {args.folds} fold teachers", summary(np.array(ranks), n_items)),
                     *held_out])
    cols = ["cases", "median_rank", "mean_rank", *LEVEL_WORDS]
    md = [f"# The next item's {args.model} rank and level, SFT positions against held-out cases", "",
          f"Run `{run}` ({n_items:,} items; levels: {', '.join(LEVEL_WORDS)}), seeded samples.", "",
          "| cases of | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    md += [f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |" for name, row in rows.items()]
    md += ["", "    python experiments/cf_rank_shift.py " + " ".join(sys.argv[1:] if argv is None else argv)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"run": str(run), "model": args.model, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
