"""Train/valid/test splits and the stored 1+N candidate lists.

Two schemes:
- loo (RecBole's default for sequential models): per user, chronologically, the last item is the
  test target, the second-to-last the valid target, the rest is training. The test history
  includes the valid item (it is known by test time), never the test item.
- users (the MLLM-MSR / MMSRARec papers): users are split randomly train/valid/test; training
  users' whole sequences are training data; a held-out user's last item is the target and the
  items before it are the history.
A user too short to give a case with `min_history` history items keeps all its items in training
(and is counted in the statistics).

Negatives for the sampled protocol are drawn from items the user never interacted with (in any
split), from a generator seeded by (seed, split, user), so they do not depend on the order of
processing and are identical across runs and methods.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_IDS = {"valid": 1, "test": 2}


def sequences(interactions: pd.DataFrame) -> dict[int, np.ndarray]:
    """user -> items in chronological order (interactions must be sorted already)."""
    grouped = interactions.groupby("user", sort=True)["item"]
    return {int(u): s.to_numpy(np.int64) for u, s in grouped}


def split_loo(seqs: dict[int, np.ndarray], min_history: int) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], int]:
    train, valid, test, short = [], [], [], 0
    for user, s in seqs.items():
        if len(s) < min_history + 2:
            train.append((user, s))
            short += 1
            continue
        train.append((user, s[:-2]))
        valid.append((user, s[:-2], int(s[-2])))
        test.append((user, s[:-1], int(s[-1])))
    return _train_frame(train), {"valid": _case_frame(valid), "test": _case_frame(test)}, short


def split_users(seqs: dict[int, np.ndarray], fractions: list[float], min_history: int,
                seed: int) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], int]:
    users = np.array(sorted(seqs), dtype=np.int64)
    order = np.random.default_rng([seed, 7]).permutation(len(users))
    n_train = int(round(fractions[0] * len(users)))
    n_valid = int(round(fractions[1] * len(users)))
    part = {int(u): ("train" if i < n_train else "valid" if i < n_train + n_valid else "test")
            for i, u in enumerate(users[order])}
    train, cases, short = [], {"valid": [], "test": []}, 0
    for user in users:
        s = seqs[int(user)]
        which = part[int(user)]
        if which == "train":
            train.append((int(user), s))
        elif len(s) < min_history + 1:
            short += 1  # too short to evaluate; its items stay out of training too (held-out user)
        else:
            cases[which].append((int(user), s[:-1], int(s[-1])))
    return _train_frame(train), {k: _case_frame(v) for k, v in cases.items()}, short


def _train_frame(rows: list[tuple[int, np.ndarray]]) -> pd.DataFrame:
    return pd.DataFrame({"user": np.array([r[0] for r in rows], dtype=np.int64),
                         "items": [r[1].tolist() for r in rows]})


def _case_frame(rows: list[tuple[int, np.ndarray, int]]) -> pd.DataFrame:
    return pd.DataFrame({"user": np.array([r[0] for r in rows], dtype=np.int64),
                         "history": [r[1].tolist() for r in rows],
                         "target": np.array([r[2] for r in rows], dtype=np.int64)})


def subsample(cases: pd.DataFrame, max_cases: int, seed: int, split: str) -> pd.DataFrame:
    if not max_cases or len(cases) <= max_cases:
        return cases
    rng = np.random.default_rng([seed, SPLIT_IDS[split], 11])
    keep = np.sort(rng.choice(len(cases), size=max_cases, replace=False))
    return cases.iloc[keep].reset_index(drop=True)


def draw_negatives(cases: pd.DataFrame, seqs: dict[int, np.ndarray], n_items: int, n: int, how: str,
                   popularity: np.ndarray, seed: int, split: str) -> list[list[int]]:
    """n distinct items per case that the user never interacted with (items are 1..n_items)."""
    if how == "popularity":
        weights = popularity[1:].astype(np.float64)
    out = []
    for user in cases["user"].to_numpy():
        seen = set(seqs[int(user)].tolist())
        allowed = n_items - len(seen)
        if allowed < n:
            raise ValueError(f"user {user} has interacted with {len(seen)} of {n_items} items: fewer than "
                             f"{n} negatives remain; lower data.num_negatives")
        rng = np.random.default_rng([seed, SPLIT_IDS[split], int(user)])
        if how == "uniform":
            picked: list[int] = []
            chosen: set[int] = set()
            while len(picked) < n:
                for item in rng.integers(1, n_items + 1, size=2 * n).tolist():
                    if item not in seen and item not in chosen:
                        chosen.add(item)
                        picked.append(item)
                        if len(picked) == n:
                            break
        else:
            w = weights.copy()
            w[np.fromiter(seen, dtype=np.int64) - 1] = 0.0
            if np.count_nonzero(w) < n:
                raise ValueError(f"user {user}: fewer than {n} unseen items have training popularity > 0")
            picked = (rng.choice(n_items, size=n, replace=False, p=w / w.sum()) + 1).tolist()
        out.append(picked)
    return out
