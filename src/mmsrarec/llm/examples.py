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


def sample_negatives(pool: np.ndarray, exclude: set[int], n: int, rng: np.random.Generator) -> list[int]:
    """n distinct items of `pool` (sorted, unique) not in `exclude` (fewer if the pool runs out)."""
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
