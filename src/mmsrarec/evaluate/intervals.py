"""How sure a leaderboard is: 95% bootstrap intervals over cases.

Every method ranks the same cases, so a difference between two methods is paired case by case: its
interval resamples the cases once for both, which is much narrower than two separate intervals would
suggest. One draw of case indices is shared by all metrics of a call.

A metric is either per-case values whose mean is reported (an array), or a statistic of all cases at once
that a sample of the cases recomputes: the sampled protocol's pooled `auc` (metrics.PooledAUC), given as an
object with `value`, `len()` and `resampled(counts)` (counts [draws, n_cases]: how often each sample draws
each case) -> [draws] values. Both kinds see the same draws.
"""

from __future__ import annotations

from typing import Protocol, Union

import numpy as np

DRAWS = 10_000
CHUNK = 500  # draws resampled at a time: 10,000 x n case indices at once would be GBs for 50k test cases


class Resampled(Protocol):
    """A statistic of all cases at once (not a mean of per-case values), recomputed on bootstrap samples."""
    value: float

    def __len__(self) -> int: ...

    def resampled(self, counts: np.ndarray) -> np.ndarray: ...


Metric = Union[np.ndarray, Resampled]


class Difference:
    """mine - theirs of two statistics of the same cases, on the same samples (a paired difference)."""

    def __init__(self, mine: Resampled, theirs: Resampled):
        if len(mine) != len(theirs):
            raise ValueError(f"paired statistics of {len(mine)} and {len(theirs)} cases")
        self.mine, self.theirs = mine, theirs
        self.value = mine.value - theirs.value
        minus = getattr(mine, "minus", None)  # a statistic that can fold the pair into one (PooledAUC)
        self._joint = minus(theirs) if minus is not None and type(mine) is type(theirs) else None

    def __len__(self) -> int:
        return len(self.mine)

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        if self._joint is not None:
            return self._joint.resampled(counts)
        return self.mine.resampled(counts) - self.theirs.resampled(counts)


def _is_array(v) -> bool:
    return not hasattr(v, "resampled")


def case_bootstrap(per_case: dict[str, Metric], rng: np.random.Generator,
                   draws: int = DRAWS) -> dict[str, list[float]]:
    """{metric: [value, 2.5%, 97.5%]} under resampling the cases: of the per-case values' mean for an array,
    of the statistic itself for a Resampled one (module doc)."""
    n = len(next(iter(per_case.values()))) if per_case else 0
    if n == 0:
        return {metric: [float("nan")] * 3 for metric in per_case}
    values = {metric: np.asarray(v, dtype=np.float64) if _is_array(v) else v for metric, v in per_case.items()}
    boot = {metric: [] for metric in values}
    pooled = any(not _is_array(v) for v in values.values())
    for start in range(0, draws, CHUNK):  # the same draws as one (draws, n) call, in less memory
        picks = rng.integers(0, n, size=(min(CHUNK, draws - start), n))
        counts = np.bincount((picks + n * np.arange(len(picks))[:, None]).ravel(),
                             minlength=len(picks) * n).reshape(len(picks), n) if pooled else None
        for metric, v in values.items():
            boot[metric].append(v[picks].mean(1) if _is_array(v) else v.resampled(counts))
    out = {}
    for metric, v in values.items():
        means = np.concatenate(boot[metric])
        point = float(v.mean()) if _is_array(v) else float(v.value)
        out[metric] = [round(point, 4), round(float(np.quantile(means, 0.025)), 4),
                       round(float(np.quantile(means, 0.975)), 4)]
    return out


def paired_bootstrap(mine: dict[str, Metric], theirs: dict[str, Metric], rng: np.random.Generator,
                     draws: int = DRAWS) -> dict[str, list[float]]:
    """{metric: [difference, 2.5%, 97.5%]} of mine - theirs, case by case (the same cases, in order)."""
    return case_bootstrap({m: np.asarray(mine[m], float) - np.asarray(theirs[m], float) if _is_array(mine[m])
                           else Difference(mine[m], theirs[m]) for m in mine}, rng, draws)
