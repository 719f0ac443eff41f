"""The two evaluation protocols, over any scorer.

- sampled: each case's stored candidate list (the target + N negatives drawn at prepare time);
  every method ranks exactly the same lists.
- full: all items, except the items in the case's history (never the target), as RecBole ranks
  for general recommenders; the valid item is in a LOO test case's history, so it is excluded too.
  With exclude_history=False only padding is excluded, as RecBole 1.2.1 ranks for sequential models.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cf.base import Cases
from .metrics import count_ranks, per_case

CandidateScorer = Callable[[list[np.ndarray], np.ndarray], np.ndarray]  # histories, [B, C] -> [B, C]
FullScorer = Callable[[list[np.ndarray]], torch.Tensor]                  # histories -> [B, n_items + 1]


def _batches(n: int, size: int, desc: str, progress: bool):
    starts = range(0, n, size)
    return tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress or len(starts) < 4)


def sampled_scores(score: CandidateScorer, cases: Cases, batch_size: int = 256,
                   progress: bool = True) -> np.ndarray:
    """The [n_cases, 1 + N] score matrix of the stored lists (target in column 0)."""
    candidates = cases.candidates()
    scores = np.empty(candidates.shape, dtype=np.float64)
    for start in _batches(len(cases), batch_size, "sampled", progress):
        stop = start + batch_size
        scores[start:stop] = score(cases.histories[start:stop], candidates[start:stop])
    return scores


def evaluate_sampled(score: CandidateScorer, cases: Cases, names: list[str], batch_size: int = 256,
                     progress: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-case metrics and the [n_cases, 1 + N] score matrix (target in column 0)."""
    scores = sampled_scores(score, cases, batch_size, progress)
    return sampled_metrics(scores, names), scores


def sampled_counts(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per case (greater, ties, n) of the target in a [n_cases, 1 + N] score matrix whose column 0 is the target."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"a scorer returned a non-finite score (case {bad[0]}, candidate {bad[1]})")
    if scores.ndim != 2 or not len(scores):
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    s = torch.from_numpy(scores)
    return count_ranks(s[:, 0], s[:, 1:])


def sampled_metrics(scores: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Per-case metrics of a [n_cases, 1 + N] score matrix whose column 0 is the target."""
    return per_case(names, *sampled_counts(scores))


def full_mask(histories: list[np.ndarray], targets: np.ndarray, n_items: int, device,
              exclude_history: bool = True) -> torch.Tensor:
    """[B, n_items + 1] True where an item competes with the target: not padding, not the target, and
    (with exclude_history) not in the case's history."""
    mask = torch.ones(len(histories), n_items + 1, dtype=torch.bool, device=device)
    mask[:, 0] = False
    if not exclude_history:
        histories = [h[:0] for h in histories]
    rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(histories)]) if histories else np.array([])
    cols = np.concatenate(histories) if histories else np.array([])
    if len(rows):
        mask[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = False
    mask[torch.arange(len(targets), device=device), torch.as_tensor(np.array(targets), device=device)] = False
    return mask


def full_counts(full_scores: FullScorer, cases: Cases, n_items: int, batch_size: int = 256,
                progress: bool = True, exclude_history: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per case (greater, ties, n) of the target when every item competes (but the history's, unless
    exclude_history=False, as RecBole 1.2.1 ranks for sequential models: it masks only padding)."""
    greater, ties, n = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in _batches(len(cases), batch_size, "full", progress):
        hist = cases.histories[start:start + batch_size]
        targets = cases.targets[start:start + batch_size]
        with torch.no_grad():
            scores = full_scores(hist).float()
        mask = full_mask(hist, targets, n_items, scores.device, exclude_history)
        pos = scores[torch.arange(len(targets), device=scores.device), torch.tensor(targets, device=scores.device)]
        g, t, c = count_ranks(pos, scores, mask)
        greater.append(g), ties.append(t), n.append(c)
    return np.concatenate(greater), np.concatenate(ties), np.concatenate(n)


def evaluate_full(full_scores: FullScorer, cases: Cases, n_items: int, names: list[str], batch_size: int = 256,
                  progress: bool = True, exclude_history: bool = True) -> dict[str, np.ndarray]:
    """Per-case metrics when every item competes (see full_counts)."""
    return per_case(names, *full_counts(full_scores, cases, n_items, batch_size, progress, exclude_history))


def summarize(per: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per.items()}
