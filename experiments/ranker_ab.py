"""A/B of ranker variants at a size the CPU affords: same stages, same SFT budget, same test cases.

Each variant is the config plus its overrides, run as its own run (`<name>-ab-<variant>`) whose
stages before train-ranker are linked from the config's finished run (same keys: no recompute), so
only its SFT runs. Every variant then scores the same seeded subsample of the stored 1 + N test
lists (the paper's protocol). Beside them, on the same cases: the LLM-free vote reader of each
rank.candidate_votes k used (how many of the k most similar training users chose the candidate:
the number such a prompt shows) and the base run's CF scores (score-cf/sampled/<method>_test.parquet).

    python experiments/ranker_ab.py --config configs/ml100k_gpu.yaml --cases 150 \
        --set rank.max_examples=400 --variant plain --variant votes=rank.candidate_votes=500 \
        --out experiments/results/ranker_ab_votes_cpu

An ablation's own stages (the zero-shot keywords of no-rl, the GRU4Rec index) are linked from the
config's experiment runs that built them (`mmsrarec run --config C --stop-before train-ranker`). `--seed S`
takes the experiment's run of seed S as the base and trains every variant with seed S, on the same cases.

Small SFT budgets say whether a prompt feature is picked up at all, not what a full run reaches.
Writes OUT.json (every number, per-case scores included) and OUT.md, which also gives each variant's
paired difference to the first one over the same cases (HR@5, NDCG@5; 95% bootstrap interval).
`--pair A B` adds row A minus row B (any two rows with per-case scores, e.g. a variant and
'sasrec (base run)'). `--redraw` rewrites OUT.md from OUT.json without running anything (with `--pair`,
the pairs are kept in OUT.json); `--with EARLIER.json` puts an
earlier run's LLM rows (same cases) first instead of training and scoring them again. `--fuse sasrec`
blends every LLM variant with SASRec as `evaluate.fuse` does, the weight picked on a seeded subsample
of valid cases that each ranker then scores too (`--valid-cases`), and pairs each blend with SASRec.
`--across A.json B.json ...` (one run per seed, the same variants and cases) writes OUT with each row's
mean ± std over the seeds and each variant's paired difference averaged over them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from mmsrarec.artifacts import read_json
from mmsrarec.cf.base import Cases, SeenItemsOnly, seen_items
from mmsrarec.cf.stage import load_trained
from mmsrarec.config import load_config
from mmsrarec.data.prepare import load_prepared
from mmsrarec.evaluate.casefiles import case_path, read_scores
from mmsrarec.evaluate.intervals import case_bootstrap
from mmsrarec.evaluate.protocols import sampled_metrics
from mmsrarec.experiment import members
from mmsrarec.stages import Runner
from mmsrarec.rank.prompts import LEVEL_WORDS, rank_level
from mmsrarec.rank.sharded import stored_seconds
from mmsrarec.rank.stage import RankerInputs, cf_ranks, score_cases, similar_users_votes

METRICS = ["hr@1", "hr@5", "ndcg@5", "gauc"]  # gauc: the mean of per-case AUCs (evaluate/metrics.py)


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


def named(rows: list[dict]) -> list[dict]:
    """Rows of an OUT.json written before the mean of per-case AUCs was named `gauc` (it was `auc`), renamed."""
    return [{("gauc" if key == "auc" and "gauc" not in row else key): v for key, v in row.items()} for row in rows]


def metrics(scores: np.ndarray) -> dict[str, float]:
    return {k: round(float(v.mean()), 4) for k, v in sampled_metrics(scores, METRICS).items()}


@dataclass
class Setup:
    """What every variant shares: the config and overrides it starts from, the base run whose stages it
    links and whose CF scores are the references, the finished runs it may link stages from (the base run,
    then the config's run and its experiment's runs: an ablation's own stages, such as zero-shot keywords
    or a GRU4Rec index, come from the experiment run that built them), and its runs' name prefix."""

    config: str | None
    common: list[str]
    base: Any
    reuse: list[Path]
    prefix: str
    case_seed: int  # the config's seed: every --seed scores the same cases (data.seed is the config's too)

    @classmethod
    def of(cls, config: str | None, overrides: list[str], seed: int | None = None) -> "Setup":
        """seed: the experiment's run of that seed (experiment.seeds) as the base; None: the config's own."""
        root = load_config(config, overrides)
        others = sorted(p for p in (root.run_dir / "experiment").glob("*") if p.is_dir())
        if seed is None or seed == root.seed:
            return cls(config, overrides, root, [root.run_dir, *others], f"{root.name}-ab", root.seed)
        member = next((m for m in members(root, config, overrides) if m.seed == seed and m.variant is None), None)
        if member is None:
            sys.exit(f"--seed {seed}: the config's experiment.seeds are {root.experiment.seeds or [root.seed]}")
        return cls(config, [*overrides, f"seed={seed}", f"data.seed={root.data_seed}"], member.cfg,
                   [member.cfg.run_dir, root.run_dir, *others], f"{root.name}-ab-{seed}", root.seed)


def trained(setup: Setup, name: str, sets: list[str], train: bool = True):
    """Variant `name`'s run (linked to the stages it shares with setup.reuse's runs) with its ranker trained
    (a finished one is kept). train=False (a --with row) trains nothing: it takes the ranker in the run's
    folder, the one that scored the row, even if this code would key its stage differently (e.g. a config
    field added since)."""
    cfg = load_config(setup.config, [*setup.common, *sets, f"name={setup.prefix}-{name}"])
    runner = Runner(cfg, reuse=setup.reuse)
    if train or runner.finished(runner.plan("train-ranker")) is not None:
        return cfg, runner, runner.run("train-ranker")
    path = runner.run_dir / "train-ranker" / "manifest.json"
    if not path.is_file():
        sys.exit(f"variant {name}: {path} is missing; rerun the variant with --variant instead of --with")
    print(f"[ab {name}] using the ranker in {path.parent} (its stage key is not the one this code gives)",
          file=sys.stderr)
    return cfg, runner, read_json(path)


def variant_scores(cfg, runner, manifest, name: str, split: str, cases: pd.DataFrame) -> tuple[np.ndarray, Path]:
    """The variant's ranker on `cases` of `split`, through <run>/ab-scores/<train-ranker key>[-valid]
    (resumable: a rerun with the same ranker scores only new cases)."""
    ctx = SimpleNamespace(cfg=cfg, input=lambda stage: runner.run_dir / stage)
    store = runner.run_dir / "ab-scores" / (manifest["key"][:16] + ("" if split == "test" else f"-{split}"))
    scores = score_cases(RankerInputs.from_context(ctx), split, cases=cases, store=store,
                         log=lambda m: print(f"[ab {name} {split}] {m}", file=sys.stderr)).astype(np.float64)
    return scores, store


def run_variant(setup: Setup, name: str, sets: list[str], cases: pd.DataFrame) -> dict:
    """Train variant `name` and score the test `cases`."""
    t0 = time.perf_counter()
    cfg, runner, manifest = trained(setup, name, sets)
    sft_s = time.perf_counter() - t0
    scores, store = variant_scores(cfg, runner, manifest, name, "test", cases)
    per_case = float(np.nanmean(stored_seconds(store)))  # stored per case: resumed scoring does not distort it
    summary = manifest.get("summary", {})
    return {"variant": name, "overrides": sets, "run": str(runner.run_dir), "cases": len(cases),
            "candidate_votes": cfg.rank.candidate_votes, "candidate_cf_rank": cfg.rank.candidate_cf_rank,
            "candidate_cf_rank_as": cfg.rank.candidate_cf_rank_as,
            "examples": summary.get("examples"), "steps": summary.get("steps"),
            "first_loss": _round(summary.get("first_loss")), "last_loss": _round(summary.get("last_loss")),
            "sft_s": round(float(manifest.get("wall_time_s") or sft_s), 1), "score_s": round(per_case * len(cases), 1),
            "s_per_case": round(per_case, 2), **metrics(scores),
            "scores": scores.tolist()}


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def paired(scores: np.ndarray, against: np.ndarray, rng: np.random.Generator, draws: int = 10_000) -> dict:
    """Per-case HR@5 and NDCG@5 of `scores` minus those of `against` (same cases): [mean, 2.5%, 97.5%]
    of the case bootstrap."""
    return paired_over_seeds([case_differences(scores, against)], rng, draws)


def case_differences(scores, against) -> dict[str, np.ndarray]:
    """Per-case HR@5 and NDCG@5 of `scores` minus those of `against` (same cases)."""
    mine, theirs = (sampled_metrics(np.asarray(s, float), ["hr@5", "ndcg@5"]) for s in (scores, against))
    return {metric: mine[metric] - theirs[metric] for metric in ("hr@5", "ndcg@5")}


def paired_over_seeds(differences: list[dict], rng: np.random.Generator, draws: int = 10_000) -> dict:
    """`paired` for one case_differences per seed, every seed on the same cases: the per-case difference
    averaged over the seeds, its bootstrap resampling the cases (one draw shared by the seeds)."""
    return case_bootstrap({metric: np.mean([d[metric] for d in differences], axis=0) for metric in ("hr@5", "ndcg@5")},
                          rng, draws)


def paired_differences(rows: list[dict], seed: int) -> list[dict]:
    """Each LLM variant minus the first, and each fused row minus its CF model, case by case."""
    llm = [r for r in rows if "overrides" in r]
    rng = np.random.default_rng(seed)
    out = [{"variant": row["variant"], "against": llm[0]["variant"], **paired(row["scores"], llm[0]["scores"], rng)}
           for row in llm[1:]]
    cf = {r["method"]: r for r in rows if "method" in r}
    return out + [{"variant": row["variant"], "against": cf[row["fused_with"]]["variant"],
                   **paired(row["scores"], cf[row["fused_with"]]["scores"], rng)}
                  for row in rows if "fused_with" in row and row["fused_with"] in cf]


def pair_problem(rows: list[dict], pairs: list[list[str]]) -> str | None:
    """What is wrong with `--pair` names for these rows, or None."""
    scored = [r["variant"] for r in rows if "scores" in r]
    unknown = [n for pair in pairs for n in pair if n not in scored]
    return (f"--pair: no row {', '.join(repr(n) for n in unknown)} with per-case scores; the rows that have them: "
            + ", ".join(repr(n) for n in scored)) if unknown else None


def named_pairs(rows: list[dict], pairs: list[list[str]], seed: int) -> list[dict]:
    """`--pair A B`: row A minus row B, case by case (any two rows with per-case scores: an LLM variant, a
    blend, a base run's CF model)."""
    scored = {r["variant"]: r for r in rows if "scores" in r}
    rng = np.random.default_rng(seed)
    return [{"variant": a, "against": b, **paired(scored[a]["scores"], scored[b]["scores"], rng)} for a, b in pairs]


def fused_rows(setup: Setup, rows: list[dict], valid: pd.DataFrame, methods: list[str]) -> list[dict]:
    """evaluate.fuse on the A/B's cases: each LLM variant blended with each CF method, the weight picked on
    `valid` (its ranker scores them too, into a -valid store) and applied to the test cases it scored."""
    from mmsrarec.evaluate.fusion import fuse, pick_weight, weight_curve

    out = []
    cf_rows = {r["method"]: r for r in rows if "method" in r}
    for row in [r for r in rows if "overrides" in r]:
        cfg, runner, manifest = trained(setup, row["variant"], row["overrides"], train="from" not in row)
        llm_valid, _ = variant_scores(cfg, runner, manifest, row["variant"], "valid", valid)
        for method in methods:
            cf_valid = stored_cf_scores(setup.base, method, "valid", valid)
            weight, curve = pick_weight(llm_valid, cf_valid, "ndcg@5")
            llm_test, cf_test = np.array(row["scores"], float), np.array(cf_rows[method]["scores"], float)
            scores = fuse(llm_test, cf_test, weight)
            # a diagnostic that peeks at test (never used to pick): was valid's pick unlucky, or is there nothing?
            peek = {f"{w:.2f}": round(v, 4) for w, v in weight_curve(llm_test, cf_test, "ndcg@5").items()}
            out.append({"variant": f"{row['variant']} + {method}, weight {weight:.2f} (picked on valid)",
                        "of": row["variant"], "cases": len(scores), "fused_with": method, "weight": weight,
                        "valid_ndcg@5": {"llm": round(curve[0.0], 4), "fused": round(curve[weight], 4),
                                         method: round(curve[1.0], 4)},
                        "valid_curve": {f"{w:.2f}": round(v, 4) for w, v in curve.items()},
                        "test_curve_diagnostic": peek, **metrics(scores), "scores": scores.tolist()})
    return out


def earlier_rows(path: Path, cases: pd.DataFrame) -> list[dict]:
    """The LLM rows of an earlier OUT.json, refused unless it scored exactly these cases."""
    earlier = json.loads(path.read_text())
    if earlier["case_numbers"] != cases.index.tolist():
        sys.exit(f"--with {path}: it scored other cases ({earlier['cases']} from seed {earlier['seed']}); give the "
                 "same --config and --cases")
    return [{**row, "from": str(path)} for row in named(earlier["rows"]) if "overrides" in row]


def references(base, n_items: int, cases: pd.DataFrame, vote_ks: list[int], methods: list[str],
               level_models: list[str] = ()) -> list[dict]:
    """The vote reader at each k, the level reader of each CF model shown as levels
    (rank.candidate_cf_rank_as=level: the level word alone, ties counted as ties) and the base run's stored
    CF scores, on the same cases."""
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
    for model_name in level_models:
        model = SeenItemsOnly(load_trained(base_dir / "train-cf", model_name, base, n_items, device="cpu")[0],
                              seen_items(load_prepared(base_dir / "prepare")["train"]["items"], n_items))
        ranks = cf_ranks(model, list(cases["history"]), candidates)  # as the ranker's notes rank them
        levels = np.array([[-LEVEL_WORDS.index(rank_level(int(r), n_items)) for r in row] for row in ranks], float)
        rows.append({"variant": f"{model_name} level reader (no LLM)", "cases": len(cases), **metrics(levels)})
    for method in methods:
        path = case_path(base_dir / "score-cf", method, "sampled", "test")
        if not path.is_file():
            print(f"[ab] {path} is missing: no {method} row", file=sys.stderr)
            continue
        scores = stored_cf_scores(base, method, "test", cases)
        rows.append({"variant": f"{method} (base run)", "method": method, "cases": len(cases), **metrics(scores),
                     "scores": scores.tolist()})
    return rows


def stored_cf_scores(base, method: str, split: str, cases: pd.DataFrame) -> np.ndarray:
    """The base run's score-cf scores of `method` for these cases, checked to rank their stored lists."""
    scored = base.run_dir / "score-cf"
    path = case_path(scored, method, "sampled", split)
    if not path.is_file():
        sys.exit(f"{path} is missing: run the base run's score-cf stage for {method} first")
    frame, scores = read_scores(scored, method, split)
    rows = cases.index.to_numpy()
    if [list(c) for c in frame["candidates"].iloc[rows]] != Cases.from_frame(cases).candidates().tolist():
        sys.exit(f"{path}: its candidate lists are not the run's stored {split} lists")
    return scores[rows]


def markdown(rows: list[dict], command: str, facts: dict) -> str:
    cols = ["variant", "cases", "examples", "sft_s", "s_per_case", "last_loss", *METRICS]
    lines = [f"# Ranker A/B on {facts['cases']} test cases ({facts['machine']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join("–" if row.get(c) is None else str(row[c]) for c in cols) + " |")
    diffs = paired_differences(rows, facts["seed"]) + named_pairs(rows, facts.get("pairs", []), facts["seed"])
    for diff in diffs:
        lines += ["", f"{diff['variant']} - {diff['against']}, paired over the same cases: " + "; ".join(
            f"{m.upper()} {v[0]:+.4f} (95% bootstrap {v[1]:+.4f} to {v[2]:+.4f})" for m, v in diff.items()
            if m not in ("variant", "against"))]
    for row in (r for r in rows if "fused_with" in r):
        valid, peek = row["valid_ndcg@5"], row.get("test_curve_diagnostic", {})
        best = max(peek, key=lambda w: (peek[w], -float(w))) if peek else None
        lines += ["", f"{row.get('of', row['variant'])} + {row['fused_with']}: valid ({facts.get('valid_cases')} cases) "
                  f"NDCG@5 {valid['llm']:.4f} (LLM) / {valid['fused']:.4f} (blend, weight {row['weight']:.2f}) / "
                  f"{valid[row['fused_with']]:.4f} ({row['fused_with']})"
                  + (f". Diagnostic that peeks at test, not a result: the best weight on these test cases would "
                     f"be {best} (NDCG@5 {peek[best]:.4f})." if best else ".")]
    chance = 5 / facts["candidates"]
    run_seed = facts.get("run_seed", facts["seed"])
    lines += ["", f"Chance HR@5: {chance:.3f} (1 + {facts['candidates'] - 1} candidates). Case sample: seed "
              f"{facts['seed']}, {facts['cases']} of {facts['all_cases']} test cases. "
              + (f"Runs of seed {run_seed} (the base run and every ranker). " if run_seed != facts["seed"] else "") +
              f"Wall time {facts['wall_s']:.0f} s.",
              "", "    " + command]
    if facts.get("pairs_command"):
        lines += ["", "The pairs named by `--pair` were added from the JSON by:", "", "    " + facts["pairs_command"]]
    return "\n".join(lines) + "\n"


def across_seeds(paths: list[Path]) -> dict:
    """One OUT.json per seed (`--seed S`, the same variants and cases) -> each row's metrics as
    [mean, sample std] over the seeds, and each LLM variant's per-case difference to the first LLM variant,
    averaged over the seeds (paired_over_seeds), with every seed's own difference beside it."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    for run in runs:
        run["rows"] = named(run["rows"])
    seeds = [run.get("run_seed", run["seed"]) for run in runs]
    for path, run in zip(paths[1:], runs[1:]):
        if run["case_numbers"] != runs[0]["case_numbers"]:
            sys.exit(f"--across {path}: it scored other cases than {paths[0]}; give runs of one config and --cases")
    if len(set(seeds)) < len(seeds):
        sys.exit(f"--across: the runs' seeds are {seeds}; give one run per seed")
    by_seed = [{row["variant"]: row for row in run["rows"]} for run in runs]
    names = [row["variant"] for row in runs[0]["rows"] if all(row["variant"] in rows for rows in by_seed)]
    for name in (n for n in names if "overrides" in by_seed[0][n]):
        found = {tuple(rows[name].get("overrides", ())) for rows in by_seed}
        if len(found) > 1:
            sys.exit(f"--across: variant {name!r} has other overrides in other runs ({sorted(found)})")
    rows = [{"variant": name, "seeds": len(runs),
             **{m: [round(float(np.mean(v)), 4), round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 4)]
                for m in METRICS for v in [[rows[name][m] for rows in by_seed]]}} for name in names]
    llm = [name for name in names if "overrides" in by_seed[0][name]]
    rng = np.random.default_rng(runs[0]["seed"])
    diffs = []
    for name in llm[1:]:
        per_seed = [case_differences(rows[name]["scores"], rows[llm[0]]["scores"]) for rows in by_seed]
        diffs.append({"variant": name, "against": llm[0], **paired_over_seeds(per_seed, rng),
                      "per_seed": {m: [round(float(d[m].mean()), 4) for d in per_seed] for m in ("hr@5", "ndcg@5")}})
    return {"sources": [str(p) for p in paths], "seeds": seeds, "cases": runs[0]["cases"],
            "all_cases": runs[0]["all_cases"], "candidates": runs[0]["candidates"],
            "left_out": sorted({v for rows in by_seed for v in rows} - set(names)), "rows": rows, "diffs": diffs}


def across_markdown(report: dict) -> str:
    seeds = ", ".join(map(str, report["seeds"]))
    lines = [f"# Ranker A/B over seeds {seeds}: mean ± sample std over the seeds, {report['cases']} of "
             f"{report['all_cases']} test cases (the same for every seed)", "",
             "| variant | " + " | ".join(m.upper() for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    lines += ["| " + " | ".join([row["variant"], *(f"{row[m][0]:.4f} ± {row[m][1]:.4f}" for m in METRICS)]) + " |"
              for row in report["rows"]]
    if report["diffs"]:
        against = report["diffs"][0]["against"]
        lines += ["", f"Against {against}, paired over the same cases: the mean over the seeds (95% bootstrap "
                  f"over the cases) and each seed's difference ({seeds}):", "",
                  "| variant | HR@5 | HR@5 by seed | NDCG@5 | NDCG@5 by seed |", "|---|---|---|---|---|"]
        lines += [f"| {d['variant']} | " + " | ".join(
            f"{d[m][0]:+.4f} ({d[m][1]:+.4f} to {d[m][2]:+.4f}) | " + " / ".join(f"{v:+.4f}" for v in d["per_seed"][m])
            for m in ("hr@5", "ndcg@5")) + " |" for d in report["diffs"]]
    lines += ["", f"Chance HR@5: {5 / report['candidates']:.3f}. From: " + ", ".join(report["sources"]) + "."
              + (f" Rows not in every run, left out: {', '.join(report['left_out'])}." if report["left_out"] else "")]
    return "\n".join(lines) + "\n"


def command_line(argv: list[str] | None) -> str:
    """This invocation as a shell command, for the results to name."""
    return "python experiments/ranker_ab.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a config file whose run has finished the stages before train-ranker")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides for every variant (e.g. a smaller rank.max_examples)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[=KEY=VALUE;...]")
    parser.add_argument("--cases", type=int, default=150, help="test cases scored (seeded subsample; 0 = all)")
    parser.add_argument("--seed", type=int, default=None,
                        help="one of the config's experiment.seeds: its experiment run is the base (its CF models, "
                             "index, summarizer) and the variants train with that seed, on the same cases as the "
                             "config's seed (runs <name>-ab-<seed>-<variant>)")
    parser.add_argument("--references", nargs="*", default=["pop", "sasrec"], metavar="METHOD")
    parser.add_argument("--fuse", nargs="*", default=[], metavar="METHOD",
                        help="also blend every LLM variant with these CF methods (evaluate.fuse), the weight picked "
                             "on --valid-cases valid cases that each ranker then scores too")
    parser.add_argument("--valid-cases", type=int, default=150, help="--fuse: valid cases scored (seeded subsample)")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--redraw", action="store_true", help="rewrite OUT.md from OUT.json; run nothing")
    parser.add_argument("--across", nargs="+", metavar="SEED.json",
                        help="one OUT.json per seed (--seed S; the same variants and cases): write their mean ± std "
                             "over the seeds and the seed-averaged paired differences to OUT; run nothing")
    parser.add_argument("--with", dest="earlier", metavar="EARLIER.json",
                        help="put the LLM rows of an earlier run of this script on the same cases first (its first "
                             "row is then the one the paired differences subtract), instead of training and "
                             "scoring them again")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="also pair row A with row B over the same cases (A minus B; any rows with per-case "
                             "scores, e.g. a variant and 'sasrec (base run)'); with --redraw, kept in OUT.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.pair and args.across:
        parser.error("--pair pairs rows of one run; --across compares every variant with the first, seed by seed")
    if args.across:
        report = across_seeds([Path(p) for p in args.across])
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(across_markdown(report))
        print(out.with_suffix(".md").read_text())
        return
    if args.redraw:
        report = json.loads(out.with_suffix(".json").read_text())
        report["rows"] = named(report["rows"])
        if args.pair:
            if problem := pair_problem(report["rows"], args.pair):
                sys.exit(problem)
            report["pairs"] = args.pair
            report["pairs_command"] = command_line(argv)
            out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(markdown(report["rows"], report["command"], report))
        print(out.with_suffix(".md").read_text())
        return

    if not args.variant and not args.earlier:
        parser.error("give at least one --variant (or --with an earlier run's JSON)")
    started = time.perf_counter()
    setup = Setup.of(args.config, args.overrides, args.seed)
    base, base_dir = setup.base, setup.base.run_dir
    missing = Runner(base, reuse=setup.reuse).link("index")  # e.g. a seed's main run lacks the stages it shares
    if missing:
        sys.exit(f"{base_dir}: no finished {', '.join(missing)} stage, here or in the runs of the experiment; "
                 f"`mmsrarec run --config {args.config or '...'} --stop-before train-ranker` builds them")
    data = load_prepared(base_dir / "prepare")
    test = data["test"]
    cases = test.iloc[case_sample(len(test), args.cases, setup.case_seed)]
    variants = [parse_variant(v) for v in args.variant]
    rows = earlier_rows(Path(args.earlier), cases) if args.earlier else []
    rows += [run_variant(setup, name, sets, cases) for name, sets in variants]
    vote_ks = sorted({row.get("candidate_votes", 0) for row in rows} - {0})
    level_models = sorted({row["candidate_cf_rank"] for row in rows if row.get("candidate_cf_rank_as") == "level"
                           or "rank.candidate_cf_rank_as=level" in row.get("overrides", [])})  # (rows of older JSON)
    rows += references(base, len(data["items"]), cases, vote_ks, list(dict.fromkeys([*args.references, *args.fuse])),
                       level_models)
    valid = data["valid"].iloc[case_sample(len(data["valid"]), args.valid_cases, setup.case_seed)]
    rows += fused_rows(setup, rows, valid, args.fuse) if args.fuse else []
    facts = {"cases": len(cases), "all_cases": len(test), "seed": setup.case_seed, "run_seed": base.seed,
             "candidates": 1 + len(test["negatives"].iloc[0]), "wall_s": time.perf_counter() - started,
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
             "case_numbers": cases.index.tolist(),
             **({"valid_cases": len(valid), "valid_case_numbers": valid.index.tolist()} if args.fuse else {})}
    command = command_line(argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    problem = pair_problem(rows, args.pair)
    facts["pairs"] = [] if problem else args.pair
    out.with_suffix(".json").write_text(json.dumps({"command": command, **facts, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, command, facts))
    print(out.with_suffix(".md").read_text())
    if problem:
        sys.exit(f"{problem}. {out.with_suffix('.json')} and .md hold the results; add the pairs with "
                 f"--redraw --out {out} --pair A B")


if __name__ == "__main__":
    main()
