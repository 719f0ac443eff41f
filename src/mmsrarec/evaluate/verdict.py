"""The verdict: where each LLM method stands against the best CF model and the text baseline, in a few lines.

It is read off the leaderboard's own per-case values (sampled protocol, the stored 1 + N lists): for each LLM
method, each split it was scored on and each group of those cases (all of them, then every popularity slice
with at least MIN_CASES cases), its NDCG@5 against the best CF model (picked on valid) and against the text
baseline, as paired differences with 95% bootstrap intervals over the cases. A method is *ahead* or
*behind* when the interval of its NDCG@5 difference excludes 0, else *level*. Under data.split=cold the test
cases target items no CF model saw, on which every CF model is at chance by construction (docs/protocols.md),
and the valid cases are the warm leave-one-out ones; the CF models were early-stopped on those, so their valid
numbers are a little optimistic, which the verdict says. The GRPO line compares the keyword policy's held-out
reward before and after tuning (train-summarizer's eval.json), when the ranker's keywords come from it.

Writes nothing itself: the evaluate stage puts the lines in verdict.md and `mmsrarec run` prints them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .intervals import paired_bootstrap

MIN_CASES = 10  # a slice with fewer cases gets no line: its interval would span most of [0, 1]
SPLIT_WORDS = {("cold", "test"): "test, items never in training (every CF model is at chance here)",
               ("cold", "valid"): "valid, warm leave-one-out cases (the CF models were early-stopped on them: "
                                  "their numbers here are a little optimistic)"}


def standing(diff: list[float]) -> str:
    """'ahead of' / 'behind' / 'level with' from a [difference, lo, hi] interval."""
    _, lo, hi = diff
    return "ahead of" if lo > 0 else "behind" if hi < 0 else "level with"


def pick_metrics(values: dict) -> tuple[str, str] | None:
    """(NDCG@K, HR@K) the verdict compares by: K = 5 when evaluate.ks has it, else the smallest K with both."""
    cuts = sorted(int(m.split("@")[1]) for m in values if m.startswith("ndcg@") and f"hr@{m.split('@')[1]}" in values)
    if not cuts:
        return None
    k = 5 if 5 in cuts else cuts[0]
    return f"ndcg@{k}", f"hr@{k}"


def verdict_lines(per: dict, llm_methods: list[str], best_cf: str | None, text: str | None,
                  popularity: dict[str, Callable[[np.ndarray], np.ndarray]], data_split: str,
                  draws: Callable[[str | None], np.random.Generator], grpo: dict | None = None) -> list[str]:
    """Markdown lines of the verdict.

    per: (method, "sampled") -> split -> metric -> per-case values, with the cases' users under "users" (the
    evaluate stage's); popularity: split -> users -> each case's popularity slice label; data_split: data.split;
    draws(slice label, None for all cases) -> the generator of that group's bootstrap draws (the evaluate stage
    passes those of its leaderboard and slice intervals, so the same comparison has the same interval there)."""
    lines = ["# Verdict", "",
             f"Sampled protocol (1 + N stored lists), against the best CF model by valid and the text baseline. "
             f"Paired differences with 95% bootstrap intervals over the cases; *ahead*/*behind* when the NDCG "
             f"interval excludes 0, else *level*. Slices by the target's training popularity; those with fewer "
             f"than {MIN_CASES} cases are left out.", ""]
    shown = False
    for method in llm_methods:
        for split in ("test", "valid"):
            mine = per.get((method, "sampled"), {}).get(split)
            metrics = pick_metrics(mine or {})
            if mine is None or metrics is None or split not in popularity:
                continue
            ndcg, hr = metrics
            users = mine["users"]
            refs = [(r, per[(r, "sampled")][split]) for r in dict.fromkeys((best_cf, text))
                    if r and r != method and split in per.get((r, "sampled"), {})]
            refs = [(r, v) for r, v in refs if np.array_equal(v["users"], users) and ndcg in v]  # the same cases
            if not refs:
                continue
            shown = True
            lines += [f"## {method}, {SPLIT_WORDS.get((data_split, split), split)}", ""]
            labels = popularity[split](users)
            slices = sorted(dict.fromkeys(labels), key=lambda label: int(str(label).split("-")[0].rstrip("+")))
            groups = {None: np.ones(len(users), bool), **{label: labels == label for label in slices}}
            if len(groups) == 2:  # one slice holds every case: it says nothing more
                groups.popitem()
            for label, mask in groups.items():
                if mask.sum() < MIN_CASES:
                    continue
                own = {m: np.asarray(mine[m], float)[mask] for m in metrics}
                parts = []
                for ref, values in refs:
                    theirs = {m: np.asarray(values[m], float)[mask] for m in metrics}
                    d = paired_bootstrap(own, theirs, draws(label))[ndcg]
                    parts.append(f"{standing(d)} {ref} ({theirs[ndcg].mean():.3f}): "
                                 f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
                name = "all cases" if label is None else f"popularity {label}"
                lines.append(f"- {name} ({int(mask.sum())} cases): {ndcg.upper()} {own[ndcg].mean():.3f} "
                             f"({hr.upper()} {own[hr].mean():.3f}); " + "; ".join(parts))
            lines.append("")
    if not shown:
        lines += ["No LLM method was scored on the same lists as a CF model or the text baseline: nothing to compare. "
                  "(A variant's run in an experiment evaluates its own ranker only; the experiment's board, "
                  "runs/<name>/leaderboard/ or leaderboard-redraw/, pairs it case by case with its seed's main "
                  "ranker, best CF model and text baseline: section \"Variants case by case\", variant_pairs.csv.)", ""]
    if grpo:
        zero, tuned = grpo.get("zero_shot"), grpo.get("tuned")
        if zero and tuned:
            change = tuned["combined"] - zero["combined"]
            word = "raised" if change > 0 else "lowered" if change < 0 else "left"
            lines += ["## The keyword policy (GRPO)", "",
                      f"- On {grpo.get('held_out_items', '?')} held-out items, tuning {word} the combined reward: "
                      f"{zero['combined']:.4f} zero-shot -> {tuned['combined']:.4f} tuned ({change:+.4f}).", ""]
    return lines

