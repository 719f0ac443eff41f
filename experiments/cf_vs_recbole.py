"""Our SASRec/GRU4Rec against RecBole 1.2.1's on ML-100K: leave-one-out, full ranking, max length 50,
3 seeds. Ranks as RecBole does for sequential models (history items stay in the ranking).

    python experiments/cf_vs_recbole.py --ours            # trains ours for seeds 0 1 2 (runs/bench_cf_seed*)
    EPOCHS=300 MAX_MINUTES=12 BATCH=256 bash experiments/recbole/run_benchmark.sh   # RecBole, own venv
    python experiments/cf_vs_recbole.py                   # the side-by-side table from both results

Writes experiments/results/cf_vs_recbole.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
RECBOLE = ROOT / "experiments" / "recbole" / "results"
SEEDS = (0, 1, 2)
MODELS = {"sasrec": "SASRec", "gru4rec": "GRU4Rec"}


def run_ours(seed: int) -> None:
    cmd = [sys.executable, "-m", "mmsrarec.cli", "evaluate", "--config", str(ROOT / "configs/ml100k_baselines.yaml"),
           "--set", f"name=bench_cf_seed{seed}", "--set", f"seed={seed}", "--set", "evaluate.protocols=[full]",
           "--set", "evaluate.full_exclude_history=false",
           "--set", "cf.train.valid_exclude_history=false", "--set", "cf.models=[sasrec, gru4rec]",
           "--set", "evaluate.methods=[sasrec, gru4rec]", "--set", "cf.train.patience=5", "--set", "threads=1"]
    subprocess.run(cmd, check=True, cwd=ROOT)


def ours(seed: int) -> dict[str, dict]:
    run = ROOT / "runs" / f"bench_cf_seed{seed}"
    board = json.loads((run / "evaluate" / "leaderboard.json").read_text())["rows"]
    out = {}
    for row in board:
        info = json.loads((run / "train-cf" / f"{row['method']}.json").read_text())
        out[row["method"]] = {"ndcg@10": row["test_ndcg@10"], "hr@10": row["test_hr@10"],
                              "mrr@10": row["test_mrr@10"], "train_s": info["train_time_s"],
                              "train_cpu_s": info.get("train_cpu_s"), "epochs": info.get("epochs_run")}
    return out


def recbole(model: str, seed: int) -> dict | None:
    path = RECBOLE / f"recbole_{model}_seed{seed}.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    test = r["test"]  # RecBole's keys; hit@K is HR@K with one positive per case
    return {"ndcg@10": test["ndcg@10"], "hr@10": test["hit@10"], "mrr@10": test["mrr@10"],
            "train_s": r["train_wall_s"],  # fit: training + per-epoch validation, like ours
            "train_cpu_s": r["train_epochs_cpu_s"],  # training epochs only (ours includes validation)
            "epochs": r["epochs_run"]}


def mean_sd(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if all(isinstance(v, int) for v in values) and len(values) == 1:
        return str(values[0])
    if len(values) == 1:
        return f"{values[0]:.4f}" if values[0] < 10 else f"{values[0]:.0f}"
    m, s = statistics.mean(values), statistics.stdev(values)
    return f"{m:.4f} ± {s:.4f}" if m < 10 else f"{m:.0f} ± {s:.0f}"


def table() -> str:
    lines = ["| model | implementation | seeds | test NDCG@10 | test HR@10 | test MRR@10 | train wall s | train CPU s | epochs |",
             "|---|---|---|---|---|---|---|---|---|"]
    data = {}
    for ours_name, rb_name in MODELS.items():
        mine = [ours(s)[ours_name] for s in SEEDS if (ROOT / "runs" / f"bench_cf_seed{s}" / "evaluate").is_dir()]
        theirs = [r for s in SEEDS if (r := recbole(rb_name, s)) is not None]
        data[ours_name] = {"mmsrarec": mine, "recbole": theirs}
        for label, rows in (("mmsrarec", mine), ("RecBole 1.2.1", theirs)):
            lines.append(f"| {rb_name} | {label} | {len(rows)} | " + " | ".join(
                mean_sd([r[k] for r in rows]) for k in ("ndcg@10", "hr@10", "mrr@10", "train_s", "train_cpu_s", "epochs"))
                + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cf_vs_recbole.json").write_text(json.dumps(data, indent=2))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", action="store_true", help="train and evaluate our models first")
    args = parser.parse_args()
    if args.ours:
        for seed in SEEDS:
            run_ours(seed)
    text = table()
    (RESULTS / "cf_vs_recbole.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
