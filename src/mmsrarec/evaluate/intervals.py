"""How sure a leaderboard is: 95% bootstrap intervals over cases.

Every method ranks the same cases, so a difference between two methods is paired case by case: its
interval resamples the cases once for both, which is much narrower than two separate intervals would
suggest. One draw of case indices is shared by all metrics of a call.
"""

from __future__ import annotations

import numpy as np

DRAWS = 10_000


def case_bootstrap(per_case: dict[str, np.ndarray], rng: np.random.Generator,
                   draws: int = DRAWS) -> dict[str, list[float]]:
    """{metric: [mean, 2.5%, 97.5%]} of the per-case values' mean under resampling the cases."""
    n = len(next(iter(per_case.values()))) if per_case else 0
    if n == 0:
        return {metric: [float("nan")] * 3 for metric in per_case}
    picks = rng.integers(0, n, size=(draws, n))
    out = {}
    for metric, values in per_case.items():
        values = np.asarray(values, dtype=np.float64)
        boot = values[picks].mean(1)
        out[metric] = [round(float(values.mean()), 4), round(float(np.quantile(boot, 0.025)), 4),
                       round(float(np.quantile(boot, 0.975)), 4)]
    return out


def paired_bootstrap(mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray], rng: np.random.Generator,
                     draws: int = DRAWS) -> dict[str, list[float]]:
    """{metric: [mean difference, 2.5%, 97.5%]} of mine - theirs, case by case (the same cases, in order)."""
    return case_bootstrap({m: np.asarray(mine[m], float) - np.asarray(theirs[m], float) for m in mine}, rng, draws)
