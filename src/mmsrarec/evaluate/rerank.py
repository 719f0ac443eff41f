"""The rerank protocol for LLM rankers: leave-one-out over all items, in two steps.

1. A trained CF model (evaluate.rerank_cf) ranks every item but the case's history, as the full
   protocol does, and keeps its top evaluate.rerank_top.
2. The LLM scores those candidates; the target's rank among them gives HR/NDCG/MRR@k.

A target the CF model did not retrieve is a miss at every cut-off; cut-offs k >= rerank_top are not
reported. Only the hits
are sent to the LLM, so the cost is (hit rate x cases) prompts of rerank_top candidates each.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..cf.base import Cases
from .metrics import metric_names
from .protocols import full_mask, sampled_metrics


def rerank_names(ks: list[int], top: int) -> list[str]:
    """Cut-offs below `top` only: a miss is ranked `top`-th (below every retrieved item), so at k = top it
    would count as a hit."""
    return [n for n in metric_names([k for k in ks if k < top], "full") if "@" in n]


def cf_top(model, frame: pd.DataFrame, n_items: int, top: int, exclude_history: bool = True,
           batch_size: int = 256) -> np.ndarray:
    """[n_cases, width] the CF model's best items per case, best first; history items excluded.
    width = top, or less when some case has fewer than `top` items left to rank (tiny catalogues)."""
    cases = Cases.from_frame(frame)
    out, width = [], top
    for start in range(0, len(cases), batch_size):
        hist = cases.histories[start:start + batch_size]
        targets = cases.targets[start:start + batch_size]
        with torch.no_grad():
            scores = model.full_scores(hist).float()
        allowed = full_mask(hist, targets, n_items, scores.device, exclude_history)
        allowed[torch.arange(len(targets)), torch.as_tensor(np.array(targets))] = True  # the target competes
        scores = scores.masked_fill(~allowed, float("-inf"))
        width = min(width, int(allowed.sum(dim=1).min()))
        out.append(scores.topk(min(top, n_items), dim=1).indices.cpu().numpy())
    return np.concatenate(out)[:, :width] if out else np.zeros((0, top), np.int64)


def rerank_cases(frame: pd.DataFrame, retrieved: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The cases whose target was retrieved, as a frame the ranker scores (target, then the other
    retrieved items as 'negatives', in the CF order), and the boolean hit mask over all cases."""
    targets = frame["target"].to_numpy(np.int64)
    hit = (retrieved == targets[:, None]).any(axis=1)
    others = [[int(i) for i in row if i != t] for row, t in zip(retrieved[hit], targets[hit])]
    hits = frame[hit].copy()
    hits["negatives"] = others
    return hits, hit


def rerank_matrix(hit: np.ndarray, hit_scores: np.ndarray, top: int) -> np.ndarray:
    """[n_cases, top] scores, the target in column 0: the LLM's scores of the retrieved items for hits; a
    miss is ranked last (every metric at k < top is 0)."""
    scores = np.zeros((len(hit), top), dtype=np.float64)
    scores[~hit, 0] = -1.0  # LLM scores are probabilities in [0, 1]: the target lands last
    if hit.any():
        scores[hit] = hit_scores
    return scores


def rerank_metrics(hit: np.ndarray, hit_scores: np.ndarray, top: int, names: list[str]) -> dict[str, np.ndarray]:
    """Per-case metrics: the LLM's rank of the target among the retrieved items for hits; a miss is
    ranked last (every metric at k < top is 0)."""
    return sampled_metrics(rerank_matrix(hit, hit_scores, top), names)


def rerank_scores(score_frame: Callable[[pd.DataFrame], np.ndarray], model, frame: pd.DataFrame, n_items: int,
                  top: int, exclude_history: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """CF-top-`top` + LLM rerank of every case: ([n_cases, width] scores with the target in column 0,
    [n_cases, width] the items they score (the target, then the other retrieved items; a miss: the target,
    then the CF model's first width - 1), facts: hit rate, prompts scored, width)."""
    retrieved = cf_top(model, frame, n_items, top, exclude_history)
    top = retrieved.shape[1]
    hits, hit = rerank_cases(frame, retrieved)
    hit_scores = score_frame(hits) if len(hits) else np.zeros((0, top))
    targets = frame["target"].to_numpy(np.int64)
    items = np.concatenate([targets[:, None], retrieved[:, :top - 1]], axis=1) if len(frame) else retrieved
    if hit.any():
        items[hit] = np.concatenate([targets[hit, None], np.array(hits["negatives"].tolist(), np.int64)], axis=1)
    facts = {"retrieval_hit_rate": float(hit.mean()) if len(hit) else 0.0, "reranked_cases": int(hit.sum()),
             "rerank_width": int(top)}
    return rerank_matrix(hit, hit_scores, top), items, facts
