"""Score fusion: the LLM ranker's per-case scores blended with a CF model's, on the same stored lists.

Not in the paper. It answers the question a leaderboard of an LLM ranker below a CF model leaves
open: does the LLM know anything the CF model does not? Each method's scores are standardized within
a case (mean 0 and standard deviation 1 over its 1 + N candidates; a case whose scores are all equal
gets zeros, so a tied method leaves the other to decide), then

    fused = (1 - weight) * z(llm) + weight * z(cf)

with `weight` picked on the valid cases from WEIGHTS: the smallest weight that reaches the best valid
value of the selection metric, so ties favour the LLM. Weight 0 is the LLM alone, 1 the CF model alone;
a fused row above the CF model on test, with a weight below 1, is signal the LLM adds. Test scores are
fused with the picked weight, never searched.
"""

from __future__ import annotations

import numpy as np

from .metrics import POOLED
from .protocols import sampled_metrics

WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)  # 0, 0.05, ..., 1


def standardize(scores: np.ndarray) -> np.ndarray:
    """Per-row z-scores of a [n_cases, C] matrix; rows with no spread become zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 1e-12)


def fuse(llm: np.ndarray, cf: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * z(llm) + weight * z(cf), case by case; both [n_cases, 1 + N], target in column 0."""
    if np.shape(llm) != np.shape(cf):
        raise ValueError(f"score matrices differ in shape: {np.shape(llm)} and {np.shape(cf)}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return (1.0 - weight) * standardize(llm) + weight * standardize(cf)


def weight_curve(llm: np.ndarray, cf: np.ndarray, metric: str = "ndcg@5",
                 weights: np.ndarray = WEIGHTS) -> dict[float, float]:
    """Each weight's mean `metric` of the blend over these cases. Not the pooled `auc`: a blend of per-case
    z-scores is on no common scale across cases, so pooling its rows says nothing (the per-case AUC is `gauc`)."""
    if metric in POOLED:
        raise ValueError(f"the fusion weight cannot be picked by the pooled {metric!r}: the blend's per-case z-scores "
                         "are not comparable across cases; use 'gauc' (the mean per-case AUC) or hr/ndcg/mrr")
    return {float(w): float(sampled_metrics(fuse(llm, cf, float(w)), [metric])[metric].mean()) for w in weights}


def pick_weight(llm: np.ndarray, cf: np.ndarray, metric: str = "ndcg@5",
                weights: np.ndarray = WEIGHTS) -> tuple[float, dict[float, float]]:
    """The smallest weight reaching the best mean `metric` on these (valid) cases, and every weight's value."""
    if not len(llm):
        raise ValueError("no cases to pick the fusion weight on")
    curve = weight_curve(llm, cf, metric, weights)
    best = max(curve.values())
    return min(w for w, v in curve.items() if v >= best - 1e-12), curve
