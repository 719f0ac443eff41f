"""Ranking metrics for one positive per case, with ties handled explicitly.

Every case has one positive (the held-out item) and N others (sampled negatives, or all items not
in the history). From the scores we count, per case, g = others scored strictly higher than the
positive, t = others scored exactly the same, and l = others scored lower.

Ties: the positive's rank is taken to be uniformly random among the t + 1 tied positions
g+1 .. g+t+1, and every metric is its *expected value* under that random tie-break. This is
deterministic, needs no random numbers, and is fair: a model that gives every item the same score
gets HR@K = K / (N + 1), exactly what random guessing gets, never HR@1 = 1 (as "ties go to the
positive" would give) nor 0 (as "ties go against it" would).

- HR@K   = P(rank <= K)
- NDCG@K = E[1/log2(rank + 1) if rank <= K]   (one relevant item, so IDCG = 1)
- MRR@K  = E[1/rank if rank <= K];  MRR (no K) is MRR@(N+1)
- AUC    = (l + t/2) / N, the positive against its N others, as MLLM-MSR computes it per case.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch

METRICS: dict[str, Callable[..., np.ndarray]] = {}


def register(name: str):
    def wrap(fn):
        METRICS[name] = fn
        return fn
    return wrap


def count_ranks(pos: torch.Tensor, others: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pos: [B] scores of the positives; others: [B, N]; mask: [B, N] True where an 'other' counts.

    Returns (greater, ties, n_others) as int64 arrays of length B. NaN scores are an error.
    """
    if torch.isnan(pos).any() or torch.isnan(others).any():
        raise ValueError("scores contain NaN; a model must give every candidate a number")
    p = pos.unsqueeze(1)
    if mask is None:
        mask = torch.ones_like(others, dtype=torch.bool)
    greater = ((others > p) & mask).sum(1)
    ties = ((others == p) & mask).sum(1)
    n = mask.sum(1)
    return greater.cpu().numpy().astype(np.int64), ties.cpu().numpy().astype(np.int64), n.cpu().numpy().astype(np.int64)


@lru_cache(maxsize=8)
def _prefix(kind: str, size: int) -> np.ndarray:
    """prefix[r] = sum_{j=1..r} gain(j), prefix[0] = 0, for ranks up to `size`."""
    ranks = np.arange(1, size + 1, dtype=np.float64)
    gain = 1.0 / np.log2(ranks + 1) if kind == "dcg" else (1.0 / ranks if kind == "rr" else np.ones_like(ranks))
    return np.concatenate([[0.0], np.cumsum(gain)])


def _expected_gain(kind: str, greater: np.ndarray, ties: np.ndarray, k: int) -> np.ndarray:
    """Mean of gain(r) * [r <= k] over r = g+1 .. g+t+1."""
    top = np.minimum(greater + ties + 1, k)
    size = int(max(int(top.max(initial=0)), 1))
    prefix = _prefix(kind, size)
    lo = np.minimum(greater, size)
    hi = np.maximum(top, lo)
    return (prefix[hi] - prefix[lo]) / (ties + 1)


@register("hr")
def hit_rate(greater: np.ndarray, ties: np.ndarray, n: np.ndarray, k: int) -> np.ndarray:
    return _expected_gain("hit", greater, ties, k)


@register("ndcg")
def ndcg(greater: np.ndarray, ties: np.ndarray, n: np.ndarray, k: int) -> np.ndarray:
    return _expected_gain("dcg", greater, ties, k)


@register("mrr")
def mrr(greater: np.ndarray, ties: np.ndarray, n: np.ndarray, k: int | None = None) -> np.ndarray:
    return _expected_gain("rr", greater, ties, int(n.max(initial=0)) + 1 if k is None else k)


@register("auc")
def auc(greater: np.ndarray, ties: np.ndarray, n: np.ndarray, k: int | None = None) -> np.ndarray:
    lower = n - greater - ties
    return np.where(n > 0, (lower + 0.5 * ties) / np.maximum(n, 1), 0.5)


def parse_metric(name: str) -> tuple[str, int | None]:
    """'ndcg@10' -> ('ndcg', 10); 'auc' -> ('auc', None)."""
    base, _, k = name.lower().partition("@")
    if base not in METRICS:
        raise ValueError(f"unknown metric {name!r}; metrics are {', '.join(METRICS)} (with @K for hr/ndcg/mrr)")
    return base, (int(k) if k else None)


def per_case(names: list[str], greater: np.ndarray, ties: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        base, k = parse_metric(name)
        out[name] = METRICS[base](greater, ties, n, k) if k is not None or base in ("mrr", "auc") else \
            METRICS[base](greater, ties, n, int(n.max(initial=0)) + 1)
    return out


def metric_names(ks: list[int], protocol: str) -> list[str]:
    names = [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in ks]
    return names + (["mrr", "auc"] if protocol == "sampled" else ["mrr"])
