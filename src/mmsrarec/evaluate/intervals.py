"""How sure a leaderboard is: 95% bootstrap intervals over cases.

Every method ranks the same cases, so a difference between two methods is paired case by case: its
interval resamples the cases once for both, which is much narrower than two separate intervals would
suggest. One draw of case indices is shared by all metrics of a call.
"""

from __future__ import annotations

import numpy as np

DRAWS = 10_000
CHUNK = 500  # draws resampled at a time: 10,000 x n case indices at once would be GBs for 50k test cases


def case_bootstrap(per_case: dict[str, np.ndarray], rng: np.random.Generator,
                   draws: int = DRAWS) -> dict[str, list[float]]:
    """{metric: [mean, 2.5%, 97.5%]} of the per-case values' mean under resampling the cases."""
    n = len(next(iter(per_case.values()))) if per_case else 0
    if n == 0:
        return {metric: [float("nan")] * 3 for metric in per_case}
    values = {metric: np.asarray(v, dtype=np.float64) for metric, v in per_case.items()}
    boot = {metric: [] for metric in values}
    for start in range(0, draws, CHUNK):  # the same draws as one (draws, n) call, in less memory
        picks = rng.integers(0, n, size=(min(CHUNK, draws - start), n))
        for metric, v in values.items():
            boot[metric].append(v[picks].mean(1))
    out = {}
    for metric, v in values.items():
        means = np.concatenate(boot[metric])
        out[metric] = [round(float(v.mean()), 4), round(float(np.quantile(means, 0.025)), 4),
                       round(float(np.quantile(means, 0.975)), 4)]
    return out


def paired_bootstrap(mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray], rng: np.random.Generator,
                     draws: int = DRAWS) -> dict[str, list[float]]:
    """{metric: [mean difference, 2.5%, 97.5%]} of mine - theirs, case by case (the same cases, in order)."""
    return case_bootstrap({m: np.asarray(mine[m], float) - np.asarray(theirs[m], float) for m in mine}, rng, draws)
