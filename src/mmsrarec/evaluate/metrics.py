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
- GAUC   = (l + t/2) / N, the positive against its own N others; the leaderboard's `gauc` is its mean over
           cases (a per-case, "grouped" AUC).

Those are means of per-case values. One metric is not: `auc`, the sampled protocol's ROC AUC of all test rows
pooled (every case's positive labelled 1, all its sampled negatives 0; ties count 1/2: Mann-Whitney with
average ranks, what sklearn's roc_auc_score gives), as the MMSRARec and MLLM-MSR papers (and MLLM-MSR's
evaluation script) report it. It compares one case's positive with every other case's negatives too, so it
means something only when a method's scores are on one scale across cases (a probability, say); a CF model's
raw dot products or a blend of per-case z-scores are not calibrated across users, and their `auc` says less
than their `gauc`. It needs the scores themselves (PooledAUC), not the per-case counts.
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


@register("gauc")
def gauc(greater: np.ndarray, ties: np.ndarray, n: np.ndarray, k: int | None = None) -> np.ndarray:
    """Each case's AUC of its positive against its own N others (not the pooled `auc`; see the module doc)."""
    lower = n - greater - ties
    return np.where(n > 0, (lower + 0.5 * ties) / np.maximum(n, 1), 0.5)


# metrics of all cases' rows at once, not means of per-case values: from a score matrix (PooledAUC)
POOLED = ("auc",)


class PooledAUC:
    """The ROC AUC of a sampled protocol's score matrix [n_cases, 1 + N] (target in column 0), all rows pooled:
    the share of (positive, negative) pairs over all cases where the positive scores higher, ties 1/2.

    `value` is the AUC of these cases: two searches of the positives in the sorted negatives (O(n N log(n N))
    time, O(n N) memory). `resampled(counts)` gives the AUC of bootstrap samples of the cases, each given by how
    often it draws every case (counts [draws, n_cases]): a case drawn k times adds its positive and its N
    negatives k times. Both are exact (integer pair counts). A sample's 2 x (weighted negatives below positive i)
    + (weighted ties with it) is a cumulative sum, over the positives in score order, of counts @ D, where
    D[k, c] counts case c's negatives that first count for the k-th positive in score order (once when below
    it, once more when below or tied). D has at most 2 n N entries, so it is kept sparse (about 16 bytes an
    entry: ~13 MB for 20,000 cases of 20 negatives), built by the first `resampled` (never for `value` alone),
    and a sample costs O(n N), where a dense [case, positive] table would take n^2 memory and time.
    """

    BLOCK = 1 << 22  # draws x cases handled at once by resampled: [cases, draws] arrays of ~16-32 MB

    def __init__(self, scores: np.ndarray):
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2:
            if scores.size:
                raise ValueError(f"expected a [n_cases, 1 + N] score matrix, got shape {scores.shape}")
            scores = np.zeros((0, 2))
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or infinity; a model must give every candidate a number")
        self.n_cases, self.n_negatives = n, m = scores.shape[0], scores.shape[1] - 1
        self._scores = scores  # for subset()
        negatives = scores[:, 1:].ravel()
        order = np.argsort(negatives, kind="stable")
        ranked = negatives[order]
        self._case = (order // max(m, 1)).astype(np.intp)  # the case of each negative, in score order
        # 2 x (negatives below the positive) + (negatives tied with it) = lo + hi, places in the sorted negatives
        self._lo = np.searchsorted(ranked, scores[:, 0], side="left")
        self._hi = np.searchsorted(ranked, scores[:, 0], side="right")
        pairs = n * len(negatives)
        self.value = float((self._lo + self._hi).sum() / (2 * pairs)) if pairs else float("nan")
        self._table = self._rank = None  # D and each positive's place in score order: _sparse(), on first use

    def __len__(self) -> int:
        return self.n_cases

    def subset(self, rows) -> "PooledAUC":
        """The pooled AUC of these cases alone (their rows pooled with each other only: a slice of the cases,
        evaluate/slices.py), a statistic of its own that resamples its own cases."""
        return PooledAUC(self._scores[np.asarray(rows, dtype=np.intp)])

    def _sparse(self):
        """(D: CSR [k-th positive in score order, case], each positive's k), built once."""
        if self._table is None:
            from scipy import sparse  # installed with scikit-learn / sentence-transformers

            n = self.n_cases
            # lo + hi orders the positives by score (equal sums: equal lo and hi), so both are nondecreasing
            by_score = np.argsort(self._lo + self._hi, kind="stable")
            rank = np.empty(n, dtype=np.intp)
            rank[by_score] = np.arange(n)
            places = np.arange(len(self._case))
            # the negative at place p is below the k-th positive iff p < lo[k], i.e. k >= first[p]; not above: hi
            first = np.concatenate([np.searchsorted(self._lo[by_score], places, side="right"),
                                    np.searchsorted(self._hi[by_score], places, side="right")])
            cases = np.concatenate([self._case, self._case])
            kept = first < n  # a negative above every positive counts for none
            self._table = sparse.csr_matrix((np.ones(int(kept.sum()), dtype=np.float32), (first[kept], cases[kept])),
                                            shape=(n, n))  # duplicates summed: integers up to 2N, exact in float32
            self._rank = rank
        return self._table, self._rank

    def twice_below(self, w: np.ndarray, exact32: bool) -> np.ndarray:
        """[case i, draw d] 2 x (negatives below positive i) + (negatives tied with it), every case c's counted
        w[d, c] times (w [draws, cases]); float32 when every partial sum is an integer below 2^24, else float64."""
        table, rank = self._sparse()
        dtype = np.float32 if exact32 else np.float64
        twice = table.astype(dtype, copy=False) @ np.ascontiguousarray(w.T, dtype=dtype)  # [k, draws]
        np.cumsum(twice, axis=0, out=twice)
        return twice[rank]

    def minus(self, other: "PooledAUC") -> "PooledDifference | None":
        """self - other of the same cases as one statistic (a paired difference: each sample's integer numerators
        subtracted, then divided once), when the lists are as wide; else None."""
        if (self.n_cases, self.n_negatives) != (other.n_cases, other.n_negatives):
            return None
        return PooledDifference(self, other)

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        """[draws] AUCs of the samples whose cases are drawn counts[d, case] times."""
        return _resampled(self, counts, lambda w, exact32: self.twice_below(w, exact32))


class PooledDifference:
    """PooledAUC.minus: mine - theirs, a sample's value its numerators' (exact) difference over its pairs."""

    def __init__(self, mine: PooledAUC, theirs: PooledAUC):
        self.n_cases, self.n_negatives = mine.n_cases, mine.n_negatives
        self.value = mine.value - theirs.value
        self._pair = mine, theirs

    def __len__(self) -> int:
        return self.n_cases

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        mine, theirs = self._pair
        return _resampled(self, counts, lambda w, exact32: mine.twice_below(w, exact32).astype(np.float64)
                          - theirs.twice_below(w, exact32))


def _resampled(stat, counts: np.ndarray, twice_below: Callable[[np.ndarray, bool], np.ndarray]) -> np.ndarray:
    """[draws] values of a pooled statistic whose sample numerators twice_below gives (PooledAUC.resampled)."""
    counts = np.asarray(counts, dtype=np.int64)
    if not stat.n_cases or not stat.n_negatives:
        return np.full(len(counts), np.nan)
    out = np.empty(len(counts))
    step = max(1, PooledAUC.BLOCK // stat.n_cases)
    for start in range(0, len(counts), step):
        w = counts[start:start + step]
        drawn = w.sum(1)
        twice = twice_below(w, 2 * stat.n_negatives * int(drawn.max(initial=0)) < 1 << 24)  # partial sums <= 2N drawn
        out[start:start + step] = (w.T * twice.astype(np.float64)).sum(0) / (2.0 * drawn * drawn * stat.n_negatives)
    return out


def pooled_auc(scores: np.ndarray) -> float:
    """The ROC AUC of all rows of a [n_cases, 1 + N] score matrix pooled (see PooledAUC; NaN with no rows)."""
    return PooledAUC(scores).value


def parse_metric(name: str) -> tuple[str, int | None]:
    """'ndcg@10' -> ('ndcg', 10); 'gauc' -> ('gauc', None); 'auc' (pooled) -> ('auc', None)."""
    base, _, k = name.lower().partition("@")
    if base not in METRICS and base not in POOLED:
        raise ValueError(f"unknown metric {name!r}; metrics are {', '.join([*METRICS, *POOLED])} (with @K for "
                         "hr/ndcg/mrr)")
    return base, (int(k) if k else None)


def per_case(names: list[str], greater: np.ndarray, ties: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        base, k = parse_metric(name)
        if base in POOLED:
            raise ValueError(f"{name!r} is the ROC AUC of all cases' rows pooled, not a mean of per-case values: "
                             "compute it from the score matrix (pooled_auc, PooledAUC); the per-case AUC is 'gauc'")
        out[name] = METRICS[base](greater, ties, n, k) if k is not None or base in ("mrr", "gauc") else \
            METRICS[base](greater, ties, n, int(n.max(initial=0)) + 1)
    return out


def metric_names(ks: list[int], protocol: str) -> list[str]:
    """The leaderboard's metrics of a protocol; the sampled protocol's pooled `auc` is not per case (POOLED)."""
    names = [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in ks]
    return names + (["mrr", "gauc", "auc"] if protocol == "sampled" else ["mrr"])
