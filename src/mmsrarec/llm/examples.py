"""SFT example helpers both LLM methods use: training positions, negative sampling, TRL datasets, and
examples.jsonl (what a ranker was trained on, image paths in place of images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import write_text


def training_positions(train: pd.DataFrame, per_user: int, seed: int) -> list[tuple[int, int, np.ndarray]]:
    """(user, t, sequence) for the sampled training cases: at most `per_user` per user (0 = all)."""
    out = []
    for user, seq in zip(train["user"].to_numpy(np.int64), train["items"]):
        s = np.asarray(seq, dtype=np.int64)
        ts = np.arange(1, len(s))
        if per_user and len(ts) > per_user:
            ts = np.sort(np.random.default_rng([seed, int(user), 0]).choice(ts, per_user, replace=False))
        out.extend((int(user), int(t), s) for t in ts)
    return out


def sample_negatives(pool: np.ndarray, exclude: set[int], n: int, rng: np.random.Generator,
                     weights: np.ndarray | None = None) -> list[int]:
    """n distinct items of `pool` (sorted, unique) not in `exclude` (fewer if the pool runs out).

    weights: None = every item equally likely (the `uniform` negatives); else one non-negative weight per
    pool item (e.g. its training interaction count: the `popularity` negatives), each pick drawn in
    proportion to it among the items not yet excluded or picked; zero-weight items are never picked."""
    if weights is not None:
        return _weighted_negatives(pool, exclude, n, rng, np.asarray(weights, dtype=np.float64))
    excluded_in_pool = int(np.isin(np.fromiter(exclude, dtype=np.int64, count=len(exclude)), pool).sum())
    n = min(n, len(pool) - excluded_in_pool)
    picked: list[int] = []
    while len(picked) < n:
        for item in pool[rng.integers(0, len(pool), size=2 * n + 4)].tolist():
            if item not in exclude and item not in picked:
                picked.append(item)
                if len(picked) == n:
                    break
    return picked


def item_counts(sequences) -> tuple[np.ndarray, np.ndarray]:
    """(pool, counts): the items (> 0, sorted) of the training sequences and how often each occurs in them,
    the weights of the `popularity` negatives."""
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences] or [np.zeros(0, np.int64)])
    pool, counts = np.unique(items[items > 0], return_counts=True)
    return pool, counts


def _weighted_negatives(pool: np.ndarray, exclude: set[int], n: int, rng: np.random.Generator,
                        weights: np.ndarray) -> list[int]:
    """sample_negatives with weights: rejection sampling (draw by weight, skip excluded and picked items), and,
    when the excluded items hold most of the weight or the draws keep missing, an exact draw among what is
    left. Successive weighted draws without replacement either way."""
    if weights.shape != pool.shape or not np.all(weights >= 0) or not np.all(np.isfinite(weights)):
        raise ValueError(f"weights must be {len(pool)} finite non-negative numbers, one per pool item")
    ex = np.fromiter(exclude, dtype=np.int64, count=len(exclude))
    at = np.searchsorted(pool, ex).clip(max=max(len(pool) - 1, 0))
    hit = at[(pool[at] == ex)] if len(pool) else at[:0]
    excluded_weight = float(weights[hit].sum())
    total = float(weights.sum())
    n = min(n, int((weights > 0).sum() - (weights[hit] > 0).sum()))
    if n <= 0:
        return []
    picked: list[int] = []
    if total - excluded_weight >= 0.5 * total:  # most draws land on an allowed item
        drawable = pool[weights > 0]
        cumulative = np.cumsum(weights[weights > 0])
        for _ in range(8):
            draws = np.searchsorted(cumulative, rng.random(2 * n + 4) * cumulative[-1], side="right")
            for item in drawable[draws.clip(max=len(drawable) - 1)].tolist():
                if item not in exclude and item not in picked:
                    picked.append(item)
                    if len(picked) == n:
                        return picked
    allowed = (weights > 0) & ~np.isin(pool, ex) & ~np.isin(pool, np.asarray(picked, dtype=np.int64))
    left = pool[allowed]
    p = weights[allowed] / weights[allowed].sum()
    return picked + [int(i) for i in rng.choice(left, size=n - len(picked), replace=False, p=p)]


def to_dataset(rows: list[dict], is_vlm: bool):
    from datasets import Dataset, Image, List

    dataset = Dataset.from_list(rows)
    if is_vlm:
        dataset = dataset.cast_column("images", List(Image()))
    return dataset


def write_examples(examples, path: Path) -> None:
    columns = [c for c in examples.column_names if c != "images"]
    rows = examples.select_columns(columns).to_list()
    if "images" in examples.column_names:  # paths, not pixels
        from datasets import Image, List

        paths = examples.cast_column("images", List(Image(decode=False)))["images"]
        for row, imgs in zip(rows, paths):
            row["images"] = [img["path"] for img in imgs]
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
