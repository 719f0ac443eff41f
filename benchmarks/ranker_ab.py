"""A/B of ranker variants at a size the CPU affords: same stages, same SFT budget, same test cases.

Each variant is the config plus its overrides, run as its own run (`<name>-ab-<variant>`) whose
stages before train-ranker are linked from the config's finished run (same keys: no recompute), so
only its SFT runs. Every variant then scores the same seeded subsample of the stored 1 + N test
lists (the paper's protocol). Beside them, on the same cases: the LLM-free vote reader of each
rank.candidate_votes k used (how many of the k most similar training users chose the candidate:
the number such a prompt shows) and the base run's CF scores (evaluate/scores/<method>_test.parquet).

    python benchmarks/ranker_ab.py --config configs/ml100k_gpu.yaml --cases 150 \
        --set rank.max_examples=400 --variant plain --variant votes=rank.candidate_votes=500 \
        --out benchmarks/results/ranker_ab_votes_cpu

Small SFT budgets say whether a prompt feature is picked up at all, not what a full run reaches.
Writes OUT.json (every number, per-case scores included) and OUT.md, which also gives each variant's
paired difference to the first one over the same cases (HR@5, NDCG@5; 95% bootstrap interval).
`--redraw` rewrites OUT.md from OUT.json without running anything; `--with EARLIER.json` puts an
earlier run's LLM rows (same cases) first instead of training and scoring them again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from mmsrarec.cf.base import Cases
from mmsrarec.config import load_config
from mmsrarec.data.prepare import load_prepared
from mmsrarec.evaluate.protocols import sampled_metrics
from mmsrarec.pipeline import Runner
from mmsrarec.rank.sharded import stored_seconds
from mmsrarec.rank.stage import RankerInputs, score_cases, similar_users_votes

METRICS = ["hr@1", "hr@5", "ndcg@5", "auc"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name' or 'name=key=value;key=value' -> (name, overrides)."""
    name, _, sets = text.partition("=")
    if not name.strip():
        raise SystemExit(f"--variant {text!r}: give a name, e.g. votes=rank.candidate_votes=500")
    return name.strip(), [s.strip() for s in sets.split(";") if s.strip()]


def case_sample(n_cases: int, want: int, seed: int) -> np.ndarray:
    """Sorted case numbers of a seeded subsample (all when want is 0 or not smaller)."""
    if not want or want >= n_cases:
        return np.arange(n_cases)
    return np.sort(np.random.default_rng([seed, 7]).choice(n_cases, want, replace=False))


def metrics(scores: np.ndarray) -> dict[str, float]:
    return {k: round(float(v.mean()), 4) for k, v in sampled_metrics(scores, METRICS).items()}


def run_variant(config: str | None, common: list[str], name: str, sets: list[str], base, cases: pd.DataFrame) -> dict:
    """Train variant `name` (its own run, linked to the base run's stages) and score `cases` into
    <run>/ab-scores/<train-ranker key> (resumable: a rerun with the same ranker scores only new cases)."""
    cfg = load_config(config, [*common, *sets, f"name={base.name}-ab-{name}"])
    runner = Runner(cfg, reuse=[base.run_dir])
    t0 = time.perf_counter()
    manifest = runner.run("train-ranker")
    sft_s = time.perf_counter() - t0
    ctx = SimpleNamespace(cfg=cfg, input=lambda stage: runner.run_dir / stage)
    store = runner.run_dir / "ab-scores" / manifest["key"][:16]
    scores = score_cases(RankerInputs.from_context(ctx), "test", cases=cases, store=store,
                         log=lambda m: print(f"[ab {name}] {m}", file=sys.stderr)).astype(np.float64)
    per_case = float(np.nanmean(stored_seconds(store)))  # stored per case: resumed scoring does not distort it
    summary = manifest.get("summary", {})
    return {"variant": name, "overrides": sets, "run": str(runner.run_dir), "cases": len(cases),
            "candidate_votes": cfg.rank.candidate_votes, "candidate_cf_rank": cfg.rank.candidate_cf_rank,
            "examples": summary.get("examples"), "steps": summary.get("steps"),
            "first_loss": _round(summary.get("first_loss")), "last_loss": _round(summary.get("last_loss")),
            "sft_s": round(float(manifest.get("wall_time_s") or sft_s), 1), "score_s": round(per_case * len(cases), 1),
            "s_per_case": round(per_case, 2), **metrics(scores),
            "scores": scores.tolist()}


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def paired_differences(rows: list[dict], seed: int, draws: int = 10_000) -> list[dict]:
    """Each LLM variant minus the first, case by case (same cases): mean and 95% bootstrap interval."""
    llm = [r for r in rows if "scores" in r]
    out = []
    if len(llm) < 2:
        return out
    per = {r["variant"]: sampled_metrics(np.array(r["scores"], float), ["hr@5", "ndcg@5"]) for r in llm}
    base = llm[0]["variant"]
    rng = np.random.default_rng(seed)
    for row in llm[1:]:
        entry = {"variant": row["variant"], "against": base}
        picks = rng.integers(0, row["cases"], size=(draws, row["cases"]))
        for metric in ("hr@5", "ndcg@5"):
            diff = per[row["variant"]][metric] - per[base][metric]
            boot = diff[picks].mean(1)
            entry[metric] = [round(float(diff.mean()), 4), round(float(np.quantile(boot, 0.025)), 4),
                             round(float(np.quantile(boot, 0.975)), 4)]
        out.append(entry)
    return out


def earlier_rows(path: Path, cases: pd.DataFrame) -> list[dict]:
    """The LLM rows of an earlier OUT.json, refused unless it scored exactly these cases."""
    earlier = json.loads(path.read_text())
    if earlier["case_numbers"] != cases.index.tolist():
        sys.exit(f"--with {path}: it scored other cases ({earlier['cases']} from seed {earlier['seed']}); give the "
                 "same --config and --cases")
    return [{**row, "from": str(path)} for row in earlier["rows"] if "scores" in row]


def references(base, n_items: int, cases: pd.DataFrame, vote_ks: list[int], methods: list[str]) -> list[dict]:
    """The vote reader at each k and the base run's stored CF scores, on the same cases."""
    base_dir = base.run_dir
    rows = []
    candidates = Cases.from_frame(cases).candidates()
    if vote_ks:
        from mmsrarec.index.store import load_retriever

        retriever = load_retriever(base_dir / "index", base_dir / "train-cf", base, n_items)
        for k in vote_ks:
            votes = similar_users_votes(retriever, cases["history"], cases["user"], k)
            counts = np.array([[v.votes.get(int(c), 0) for c in row] for v, row in zip(votes, candidates)], float)
            rows.append({"variant": f"vote reader, k = {k} (no LLM)", "cases": len(cases), **metrics(counts)})
    for method in methods:
        path = base_dir / "evaluate" / "scores" / f"{method}_test.parquet"
        if not path.is_file():
            print(f"[ab] {path} is missing: no {method} row", file=sys.stderr)
            continue
        stored = pd.read_parquet(path).iloc[cases.index.to_numpy()]
        if [list(c) for c in stored["candidates"]] != candidates.tolist():
            sys.exit(f"{path}: its candidate lists are not the run's stored test lists")
        rows.append({"variant": f"{method} (base run)", "cases": len(cases),
                     **metrics(np.array(stored["scores"].tolist(), float))})
    return rows


def markdown(rows: list[dict], command: str, facts: dict) -> str:
    cols = ["variant", "cases", "examples", "sft_s", "s_per_case", "last_loss", *METRICS]
    lines = [f"# Ranker A/B on {facts['cases']} test cases ({facts['machine']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join("–" if row.get(c) is None else str(row[c]) for c in cols) + " |")
    for diff in paired_differences(rows, facts["seed"]):
        lines += ["", f"{diff['variant']} - {diff['against']}, paired over the same cases: " + "; ".join(
            f"{m.upper()} {v[0]:+.4f} (95% bootstrap {v[1]:+.4f} to {v[2]:+.4f})" for m, v in diff.items()
            if m not in ("variant", "against"))]
    chance = 5 / facts["candidates"]
    lines += ["", f"Chance HR@5: {chance:.3f} (1 + {facts['candidates'] - 1} candidates). Case sample: seed "
              f"{facts['seed']}, {facts['cases']} of {facts['all_cases']} test cases. "
              f"Wall time {facts['wall_s']:.0f} s.",
              "", "    " + command]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a config file whose run has finished the stages before train-ranker")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides for every variant (e.g. a smaller rank.max_examples)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[=KEY=VALUE;...]")
    parser.add_argument("--cases", type=int, default=150, help="test cases scored (seeded subsample; 0 = all)")
    parser.add_argument("--references", nargs="*", default=["pop", "sasrec"], metavar="METHOD")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--redraw", action="store_true", help="rewrite OUT.md from OUT.json; run nothing")
    parser.add_argument("--with", dest="earlier", metavar="EARLIER.json",
                        help="put the LLM rows of an earlier run of this script on the same cases first (its first "
                             "row is then the one the paired differences subtract), instead of training and "
                             "scoring them again")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.redraw:
        report = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(markdown(report["rows"], report["command"], report))
        print(out.with_suffix(".md").read_text())
        return

    if not args.variant:
        parser.error("give at least one --variant")
    started = time.perf_counter()
    base = load_config(args.config, args.overrides)
    base_dir = base.run_dir
    if not (base_dir / "index" / "manifest.json").is_file():
        sys.exit(f"{base_dir} has no finished index stage; `mmsrarec run --config {args.config or '...'} "
                 "--stop-before train-ranker` builds the stages the variants link")
    data = load_prepared(base_dir / "prepare")
    test = data["test"]
    cases = test.iloc[case_sample(len(test), args.cases, base.seed)]
    variants = [parse_variant(v) for v in args.variant]
    rows = earlier_rows(Path(args.earlier), cases) if args.earlier else []
    rows += [run_variant(args.config, args.overrides, name, sets, base, cases) for name, sets in variants]
    vote_ks = sorted({row.get("candidate_votes", 0) for row in rows} - {0})
    rows += references(base, len(data["items"]), cases, vote_ks, args.references)
    facts = {"cases": len(cases), "all_cases": len(test), "seed": base.seed,
             "candidates": 1 + len(test["negatives"].iloc[0]), "wall_s": time.perf_counter() - started,
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
             "case_numbers": cases.index.tolist()}
    command = "python benchmarks/ranker_ab.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, **facts, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, command, facts))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
