"""Train/valid/test splits and the stored 1+N candidate lists.

Three schemes:
- loo (RecBole's default for sequential models): per user, chronologically, the last item is the
  test target, the second-to-last the valid target, the rest is training. The test history
  includes the valid item (it is known by test time), never the test item.
- users (the MLLM-MSR / MMSRARec papers): users are split randomly train/valid/test; training
  users' whole sequences are training data; a held-out user's last item is the target and the
  items before it are the history.
- cold (the cold-item protocol, docs/protocols.md): a set C of items (data.cold_share of the
  catalogue; data.cold_pick: a draw seeded by the data seed, or the items whose first interaction is
  latest) never reaches training: every interaction with an item of C leaves it. A user's warm items
  (those not in C), in chronological order, minus the last one are its training sequence; that last
  warm item is the valid target, its history the warm items before it (warm leave-one-out, so CF models
  early-stop and are selected as under loo). The test target is the user's last interaction with an
  item of C, its history the user's warm items before it in time; cold items are never in a training
  sequence or a history. Users without a cold interaction have no test case, nor have users who
  interacted with so many cold items that fewer than data.num_negatives remain for their list; a user
  who saw so many warm items that fewer than data.num_negatives remain has no valid case (both counted).
A user too short to give a case with `min_history` history items keeps all its items in training
(and is counted in the statistics); with split=cold that holds for the valid case, and a user whose
last cold interaction has fewer than `min_history` warm items before it has no test case (counted too).

Negatives for the sampled protocol are drawn from items the user never interacted with (in any
split), from a generator seeded by (seed, split, user), so they do not depend on the order of
processing and are identical across runs and methods. They are drawn from a pool: every item, except
with split=cold, where valid negatives come from the warm items and test negatives from C (the pool of
the test target), so that no method can win a test case by telling cold from warm.
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


def pick_cold(interactions: pd.DataFrame, n_items: int, share: float, how: str, seed: int) -> np.ndarray:
    """The sorted cold items (1..n_items): round(share * n_items) of them, at least 1 and at most n_items - 1.
    random: a draw seeded by `seed`; newest: the items whose first interaction (the earliest timestamp over
    all users) is latest, ties broken by the larger item index."""
    if n_items < 2:
        raise ValueError(f"the catalogue has {n_items} item(s): split=cold needs at least one cold and one warm item")
    n_cold = min(max(int(round(share * n_items)), 1), n_items - 1)
    if how == "random":
        picked = np.random.default_rng([seed, 13]).choice(np.arange(1, n_items + 1), size=n_cold, replace=False)
    elif how == "newest":
        first = interactions.groupby("item")["timestamp"].min()
        items = first.index.to_numpy(np.int64)
        order = np.lexsort((items, first.to_numpy(np.float64)))  # by first timestamp, then item index
        picked = items[order][-n_cold:]
    else:
        raise ValueError(f"unknown cold pick {how!r}")
    return np.sort(picked.astype(np.int64))


def split_cold(seqs: dict[int, np.ndarray], cold: np.ndarray, n_items: int, min_history: int, num_negatives: int = 0
               ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], int, dict]:
    """The cold-item split (module docstring): (train, {valid, test}, users too short for a valid case,
    facts: users with a cold interaction, users too short for a test case, users who interacted with so many
    cold items that fewer than `num_negatives` are left to draw their test negatives from (no test case: their
    list could only be filled with warm items), users who saw so many warm items that fewer than `num_negatives`
    are left for their valid negatives (no valid case; all their warm items train), interactions kept out of
    training)."""
    is_cold = np.zeros(n_items + 1, dtype=bool)
    is_cold[cold] = True
    train, valid, test, short = [], [], [], 0
    facts = {"users_with_cold_interaction": 0, "users_too_short_for_a_test_case": 0,
             "users_without_enough_cold_negatives": 0, "users_without_enough_warm_negatives": 0,
             "cold_interactions": 0}
    n_warm = n_items - len(cold)
    for user, s in seqs.items():
        flags = is_cold[s]
        warm = s[~flags]
        if len(warm) >= min_history + 1 and n_warm - len(np.unique(warm)) >= num_negatives:
            train.append((user, warm[:-1]))
            valid.append((user, warm[:-1], int(warm[-1])))
        else:  # too short, or so many warm items seen that too few are left for the valid negatives
            short += len(warm) < min_history + 1
            facts["users_without_enough_warm_negatives"] += len(warm) >= min_history + 1
            if len(warm):
                train.append((user, warm))
        where = np.flatnonzero(flags)
        facts["cold_interactions"] += len(where)
        if not len(where):
            continue
        facts["users_with_cold_interaction"] += 1
        last = int(where[-1])
        history = s[:last][~flags[:last]]
        if len(cold) - len(np.unique(s[where])) < num_negatives:
            facts["users_without_enough_cold_negatives"] += 1
        elif len(history) >= min_history:
            test.append((user, history, int(s[last])))
        else:
            facts["users_too_short_for_a_test_case"] += 1
    return _train_frame(train), {"valid": _case_frame(valid), "test": _case_frame(test)}, short, facts


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
                   popularity: np.ndarray, seed: int, split: str, pool: np.ndarray | None = None) -> list[list[int]]:
    """n distinct items per case that the user never interacted with (items are 1..n_items), drawn from
    `pool` (sorted distinct item indices; None = every item, the draw of the loo and users splits)."""
    members = None if pool is None else np.asarray(pool, dtype=np.int64)
    size = n_items if members is None else len(members)
    what = f"{n_items} items" if members is None else f"{size} items of the pool"
    if how == "popularity":
        weights = popularity[1:].astype(np.float64)
        if members is not None:
            inside = np.zeros(n_items, dtype=bool)
            inside[members - 1] = True
            weights[~inside] = 0.0
    out = []
    for user in cases["user"].to_numpy():
        seen = set(seqs[int(user)].tolist())
        n_seen = len(seen) if members is None else int(np.isin(members, list(seen)).sum())
        if size - n_seen < n:
            raise ValueError(f"user {user} has interacted with {n_seen} of the {what}: fewer than "
                             f"{n} negatives remain; lower data.num_negatives")
        rng = np.random.default_rng([seed, SPLIT_IDS[split], int(user)])
        if how == "uniform":
            picked: list[int] = []
            chosen: set[int] = set()
            while len(picked) < n:
                draw = rng.integers(1, n_items + 1, size=2 * n) if members is None else \
                    members[rng.integers(0, size, size=2 * n)]
                for item in draw.tolist():
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
