"""How much the retrieved context can tell the ranker, measured without an LLM.

The ranker sees, per case, the words of the items that the k most similar training users chose next
(index stage + index/context.py). This script scores the stored 1 + N candidate lists (the paper's
protocol) with LLM-free readers of that same retrieval, for several k:

- words:  how many of the candidate's words (its keywords, or its title in the no-summarization
          ablation: `Catalog.context_words`) are among the case's context words, the very
          `rank.max_context_keywords` words a prompt shows;
- items:  the summed similarity of the neighbours whose next item *is* the candidate (a user-KNN
          vote: the collaborative evidence before it is turned into words);
- votes:  how many of the neighbours chose the candidate next: the number rank.candidate_votes shows
          on the candidate's line;
- listM:  the candidate's place in the M most voted next items (M - place; 0 when not listed): what a
          prompt that lists the voted items, rather than judging each candidate's vote, could pass on;
- and, as the no-retrieval reference, `history`: how many of the candidate's words are among the
  words of the last `rank.history_len` history items.

It also reports how often the true item is one of the neighbours' next items. Ties count as random
(evaluate/metrics.py), so a reader that knows nothing gets HR@5 = 5 / (N + 1). The neighbours are
searched again with the run's own index and CF model; at the run's k they must equal the stored
neighbours table, which the script checks. Training windows only: valid and test interactions are in
no index (tests/test_index.py).

    python experiments/context_signal.py --config configs/ml100k_gpu.yaml --runs '*-main' '*-no-rl' \
        '*-no-summarization' '*-gru4rec-retrieval' --out experiments/results/context_signal_ml100k

Runs that share an index and a keyword table are measured once. Writes OUT.json (every row) and
OUT.md (mean ± sample std over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmsrarec.cf.base import Cases
from mmsrarec.config import RunConfig, load_config
from mmsrarec.data.prepare import load_prepared
from mmsrarec.evaluate.protocols import sampled_metrics
from mmsrarec.experiment import members, select
from mmsrarec.index.context import context_keywords
from mmsrarec.index.store import load_neighbours, load_retriever
from mmsrarec.rank.config import keyword_stage
from mmsrarec.rank.stage import catalog_for

METRICS = ["hr@5", "ndcg@5", "gauc"]  # gauc: the mean of per-case AUCs (evaluate/metrics.py)


def _words(items, words_by_item) -> set[str]:
    return {w.strip().casefold() for item in items for w in words_by_item.get(int(item), ()) if w.strip()}


def reader_scores(candidates: np.ndarray, next_items: np.ndarray, similarities: np.ndarray,
                  words_by_item: dict[int, list[str]], cap: int, lists: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """[cases, 1 + N] scores of the `items`, `votes`, `words` and `list<M>` (M in lists) readers for
    neighbours [cases, k] (padding: next item 0, similarity nan)."""
    sims = np.where(np.isfinite(similarities), similarities, 0.0)
    chose = next_items[:, None, :] == candidates[:, :, None]  # [cases, 1 + N, k]
    summed, counts = (chose * sims[:, None, :]).sum(-1), chose.sum(-1)
    words = np.zeros(candidates.shape, np.float32)
    listed = {m: np.zeros(candidates.shape, np.float32) for m in lists}
    for i, (row, items, row_sims) in enumerate(zip(candidates, next_items, similarities)):
        context = {w.casefold() for w in context_keywords(items, row_sims, words_by_item, cap)}
        words[i] = [len(_words([c], words_by_item) & context) for c in row]
        if lists:
            voted, inverse = np.unique(items[items > 0], return_inverse=True)
            mass = np.bincount(inverse, weights=sims[i][items > 0], minlength=len(voted))
            ranked = voted[np.lexsort((voted, -mass))]  # most voted first; ties: the smaller id
            for m, out in listed.items():
                place = {int(item): m - j for j, item in enumerate(ranked[:m])}
                out[i] = [place.get(int(c), 0) for c in row]
    return {"items": summed.astype(np.float32), "votes": counts.astype(np.float32), "words": words,
            **{f"list{m}": v for m, v in listed.items()}}


def history_scores(candidates: np.ndarray, histories, words_by_item: dict[int, list[str]],
                   history_len: int) -> np.ndarray:
    """[cases, 1 + N]: the candidate's words found among those of the last history_len history items."""
    out = np.zeros(candidates.shape, np.float32)
    for i, (row, history) in enumerate(zip(candidates, histories)):
        seen = _words(list(history)[-history_len:], words_by_item)
        out[i] = [len(_words([c], words_by_item) & seen) for c in row]
    return out


def _metrics(scores: np.ndarray) -> dict[str, float]:
    return {name: round(float(values.mean()), 4) for name, values in sampled_metrics(scores, METRICS).items()}


def measure(cfg: RunConfig, run_dir: Path, splits: list[str], ks: list[int], lists: tuple[int, ...] = ()) -> list[dict]:
    """Rows (split, k, reader, metrics) for one run's index and words."""
    data = load_prepared(run_dir / "prepare")
    rank, icfg = cfg.rank, cfg.index
    keywords = run_dir / keyword_stage(cfg) / "keywords.parquet" if rank.use_keywords else None
    words_by_item = catalog_for(rank, data["items"], keywords).context_words()
    retriever = load_retriever(run_dir / "index", run_dir / "train-cf", cfg, len(data["items"]))
    rows = []
    for split in splits:
        cases = data[split]
        candidates = Cases.from_frame(cases).candidates()
        base = {"split": split, "cases": len(cases), "candidates": candidates.shape[1]}
        rows.append({**base, "k": 0, "reader": "history", "target_in_context": None,
                     **_metrics(history_scores(candidates, cases["history"], words_by_item, rank.history_len))})
        for k in ks:
            found = retriever.search(cases["history"], cases["user"], k)
            if k == icfg.k:
                _check_stored(found.next_items, load_neighbours(run_dir / "index", split), run_dir, split)
            hit = float((found.next_items == candidates[:, :1]).any(1).mean())
            for reader, scores in reader_scores(candidates, found.next_items, found.similarities, words_by_item,
                                                rank.max_context_keywords, lists).items():
                rows.append({**base, "k": k, "reader": reader, "target_in_context": round(hit, 4),
                             **_metrics(scores)})
    return rows


def _check_stored(next_items: np.ndarray, stored: pd.DataFrame, run_dir: Path, split: str) -> None:
    """The search repeated at the run's k must give the neighbours the ranker was trained and scored with."""
    for i, items in enumerate(stored["next_items"]):
        if list(next_items[i][next_items[i] > 0]) != list(items):
            sys.exit(f"{run_dir}/index/neighbours_{split}.parquet, case {i}: stored next items {list(items)}, "
                     f"searched again {list(next_items[i])}; the index or CF model changed since the index stage ran")


def _measured_runs(config: str, overrides: list[str], patterns: list[str]):
    """(label, cfg, run dir) of each picked run that retrieves, one per distinct index + words."""
    cfg = load_config(config, overrides)
    seen: dict[tuple, str] = {}
    for member in select(members(cfg, config, overrides), patterns):
        label, run_cfg = member.label, member.cfg
        run_dir = run_cfg.run_dir
        if not run_cfg.rank.use_retrieval or run_cfg.rank.zero_shot:
            continue
        words = (run_dir / keyword_stage(run_cfg)).resolve() if run_cfg.rank.use_keywords else "titles"
        key = ((run_dir / "index").resolve(), words, run_cfg.rank.max_context_keywords, run_cfg.rank.max_keywords)
        if key in seen:
            print(f"[context-signal] {label}: same index and words as {seen[key]}, not measured again", file=sys.stderr)
            continue
        seen[key] = label
        needed = [run_dir / "index" / "manifest.json"] + ([words / "manifest.json"] if words != "titles" else [])
        if not all(path.is_file() for path in needed):
            sys.exit(f"{label}: {run_dir} has no finished {'index' if not needed[0].is_file() else words.name} stage; "
                     f"`mmsrarec run --config {config or '...'} --stop-before train-ranker` builds it")
        yield label, run_cfg, run_dir


def summarize(rows: list[dict]) -> pd.DataFrame:
    """Mean ± sample std over seeds per variant, split, reader and k."""
    frame = pd.DataFrame(rows)
    frame["variant"] = frame["run"].str.split("-", n=1).str[1]
    keys = ["variant", "split", "reader", "k"]
    values = ["target_in_context", *METRICS]
    grouped = frame.groupby(keys, sort=False)[values]
    mean, std, seeds = grouped.mean(), grouped.std(ddof=1), grouped.size()
    out = pd.DataFrame({col: [_cell(m, s, n) for m, s, n in zip(mean[col], std[col], seeds)] for col in values},
                       index=mean.index)
    out.insert(0, "seeds", seeds)
    return out.reset_index()


def _cell(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.4f}" if n < 2 or pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join("–" if v is None else str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a config file (default: the embedded default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", nargs="*", default=[], help="labels (shell patterns) of the experiment's runs")
    parser.add_argument("--k", nargs="+", type=int, default=[3, 10, 20, 50, 100, 200], dest="ks")
    parser.add_argument("--lists", nargs="*", type=int, default=[20], metavar="M",
                        help="list<M> readers: the M most voted next items (none: no such reader)")
    parser.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)

    rows, started = [], time.perf_counter()
    for label, run_cfg, run_dir in _measured_runs(args.config, args.overrides, args.runs):
        t0 = time.perf_counter()
        found = measure(run_cfg, run_dir, args.splits, args.ks, tuple(args.lists))
        rows += [{"run": label, **row} for row in found]
        print(f"[context-signal] {label}: {len(found)} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not rows:
        sys.exit("no picked run retrieves (rank.use_retrieval, not zero-shot): nothing to measure")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                                    "runs": args.runs, "ks": args.ks, "rows": rows}, indent=1))
    table = summarize(rows)
    out.with_suffix(".md").write_text(
        f"# What the retrieved context tells, without an LLM ({args.config or 'embedded default'})\n\n"
        f"`python experiments/context_signal.py {shlex.join(argv if argv is not None else sys.argv[1:])}`: "
        f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}. Readers: see the script's docstring; k = 0 is the no-retrieval "
        "reference (history words).\n\n" + _markdown(table) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
