"""Training windows and their vectors.

A window is (user, t): the last n items of a training user's sequence up to and including
position t, and the item that user interacted with next, s[t+1]. Windows come from the prepare
stage's train.parquet only, so nothing a user did in the valid or test split is ever indexed.
The same windows are the ranker's training cases: case (user, t) has history s[:t+1] and target
s[t+1], and its query vector is its own window's vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..cf.base import CFModel
from .backends import normalise


@dataclass
class Windows:
    users: np.ndarray       # [W] int64
    positions: np.ndarray   # [W] t, the position of the window's last item in the user's training sequence
    next_items: np.ndarray  # [W] s[t+1]
    items: np.ndarray       # [W, n] the window's items, right-aligned, 0 before a short one

    def __len__(self) -> int:
        return len(self.users)

    def histories(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        return [row[row > 0] for row in self.items[start:stop]]

    def frame(self) -> pd.DataFrame:
        """The metadata stored beside the index: row i of the index is window i."""
        return pd.DataFrame({"user": self.users, "position": self.positions, "next_item": self.next_items})


def training_windows(train: pd.DataFrame, n: int) -> Windows:
    """Every (user, t) with a next item, from the training sequences only, in (user row, t) order."""
    users, positions, nexts, rows = [], [], [], []
    for user, seq in zip(train["user"].to_numpy(np.int64), train["items"]):
        s = np.asarray(seq, dtype=np.int64)
        if len(s) < 2:
            continue
        t = np.arange(len(s) - 1)
        users.append(np.full(len(t), user, dtype=np.int64))
        positions.append(t)
        nexts.append(s[1:])
        padded = np.concatenate([np.zeros(n - 1, dtype=np.int64), s[:-1]])  # window t = padded[t : t + n]
        rows.append(np.lib.stride_tricks.sliding_window_view(padded, n))
    if not users:
        return Windows(*(np.zeros(0, np.int64) for _ in range(3)), np.zeros((0, n), np.int64))
    return Windows(np.concatenate(users), np.concatenate(positions), np.concatenate(nexts), np.concatenate(rows))


def last_n(histories: list, n: int) -> list[np.ndarray]:
    return [np.asarray(h, dtype=np.int64)[-n:] for h in histories]


def embed_histories(model: CFModel, histories: list[np.ndarray], mode: str, metric: str,
                    batch_size: int = 4096) -> np.ndarray:
    """[B, d] search vectors of histories (already cut to the last n items), normalised for `metric`.

    user mode: the CF model's user vector of the history; item mode: the embedding of its last item.
    """
    if mode == "item":
        table = item_embeddings(model)
        last = np.array([h[-1] if len(h) else 0 for h in histories], dtype=np.int64)
        return normalise(table[last], metric)
    chunks = [np.asarray(model.user_vectors(histories[i:i + batch_size]), dtype=np.float32)
              for i in range(0, len(histories), batch_size)]
    if not chunks:
        raise ValueError("no histories to embed")
    return normalise(np.concatenate(chunks), metric)


def item_embeddings(model: CFModel) -> np.ndarray:
    """[n_items + 1, d] item vectors (row 0 = padding): the model's `item_vectors()` where it has one,
    else the input embedding table of a neural model (`model.net.items`, shared with the output
    layer in SASRec and GRU4Rec)."""
    if hasattr(model, "item_vectors"):
        return np.asarray(model.item_vectors(), dtype=np.float32)
    table = getattr(getattr(model, "net", None), "items", None)
    if not isinstance(table, torch.nn.Embedding):
        raise ValueError(f"{model.name} has no item embeddings; index.mode=item needs sasrec or gru4rec")
    return table.weight.detach().float().cpu().numpy()
