"""Similar training users: search the window index, keep each user's best window, never the query user.

A user contributes many windows (one per position), and its own windows are usually its nearest
ones, so the search fetches more windows than k and widens (doubling) for the queries that still
have fewer than k distinct other users, until the index has nothing more to give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..cf.base import CFModel
from .backends import VectorIndex
from .config import IndexConfig
from .windows import embed_histories, last_n


@dataclass
class Neighbours:
    """Per query, up to k training users, best first; -1 / nan / 0 pad the rows with fewer."""

    users: np.ndarray         # [B, k] int64, -1 = none
    similarities: np.ndarray  # [B, k] float32, nan = none
    next_items: np.ndarray    # [B, k] int64, the neighbour's item after the matched window; 0 = none
    positions: np.ndarray     # [B, k] int64, t of the matched window in the neighbour's training sequence; -1

    def columns(self) -> dict[str, list]:
        """List columns without padding, for a parquet table (one row per query)."""
        keep = self.users >= 0
        return {
            "neighbours": [u[m].tolist() for u, m in zip(self.users, keep)],
            "similarities": [s[m].astype(float).tolist() for s, m in zip(self.similarities, keep)],
            "next_items": [x[m].tolist() for x, m in zip(self.next_items, keep)],
            "neighbour_positions": [p[m].tolist() for p, m in zip(self.positions, keep)],
        }


class UserIndex:
    """A vector index over training windows plus, per row, the window's user, position and next item."""

    def __init__(self, vectors: VectorIndex, windows: pd.DataFrame, manifest: dict | None = None):
        if vectors.ntotal != len(windows):
            raise ValueError(f"the index holds {vectors.ntotal} vectors but there are {len(windows)} windows")
        self.vectors, self.manifest = vectors, manifest or {}
        self.window_users = windows["user"].to_numpy(np.int64)
        self.window_positions = windows["position"].to_numpy(np.int64)
        self.window_next = windows["next_item"].to_numpy(np.int64)

    def search(self, queries: np.ndarray, exclude_users: np.ndarray, k: int, batch_size: int = 4096) -> Neighbours:
        """The k most similar training users of each query vector, each user's best window only,
        never exclude_users[i] for query i."""
        exclude_users = np.asarray(exclude_users, dtype=np.int64)
        if len(exclude_users) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(exclude_users)} users to exclude")
        out = Neighbours(np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), np.nan, np.float32),
                         np.zeros((len(queries), k), np.int64), np.full((len(queries), k), -1, np.int64))
        for start in range(0, len(queries), batch_size):
            rows = np.arange(start, min(start + batch_size, len(queries)))
            self._search_rows(queries, exclude_users, k, rows, out)
        return out

    def _search_rows(self, queries, exclude_users, k, rows, out: Neighbours) -> None:
        fetch = min(8 * k, self.vectors.ntotal)
        while len(rows):
            sims, ids = self.vectors.search(queries[rows], fetch)
            out.users[rows], out.similarities[rows], out.next_items[rows], out.positions[rows] = -1, np.nan, 0, -1
            window = np.where(ids >= 0, ids, 0)
            users = np.where(ids >= 0, self.window_users[window], -1)
            keep = _first_per_user(users) & (ids >= 0) & (users != exclude_users[rows, None])
            rank = np.cumsum(keep, axis=1)
            keep &= rank <= k
            r, c = np.nonzero(keep)
            slot = rank[r, c] - 1
            out.users[rows[r], slot] = users[r, c]
            out.similarities[rows[r], slot] = sims[r, c]
            out.next_items[rows[r], slot] = self.window_next[window[r, c]]
            out.positions[rows[r], slot] = self.window_positions[window[r, c]]
            # widen only where fewer than k were found and the index returned all it was asked for
            short = (keep.sum(1) < k) & (ids >= 0).all(1)
            if fetch >= self.vectors.ntotal or not short.any():
                return
            rows, fetch = rows[short], min(2 * fetch, self.vectors.ntotal)


def _first_per_user(users: np.ndarray) -> np.ndarray:
    """[B, F] True at the first (= most similar) occurrence of each user in each row."""
    order = np.argsort(users, axis=1, kind="stable")
    ranked = np.take_along_axis(users, order, axis=1)
    first_sorted = np.ones_like(ranked, dtype=bool)
    first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def similar_users(index: UserIndex, model: CFModel, query_histories: list, exclude_users, cfg: IndexConfig,
                  k: int | None = None) -> Neighbours:
    """The k (default cfg.k) most similar training users for each history (cut to its last cfg.n
    items), never the history's own user; with their similarity and the item they interacted with next."""
    vectors = embed_histories(model, last_n(query_histories, cfg.n), cfg.mode, cfg.metric, cfg.batch_size)
    return index.search(vectors, np.asarray(exclude_users), k or cfg.k, cfg.batch_size)
