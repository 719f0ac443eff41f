"""Deduplicate, order, k-core filter and remap a RawData into dense integer IDs.

Item index 0 is reserved for padding, so items are 1..n_items; users are 0..n_users-1.
Order: by timestamp within a user; ties keep the order of the source file (a stable sort on the
file position), so the same input always gives the same sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import DataError
from .types import RawData, Skips


@dataclass
class Prepared:
    interactions: pd.DataFrame  # user, item, timestamp: sorted by user, then time, then file order
    items: pd.DataFrame         # item (1..n), item_id, title, text, image
    users: pd.DataFrame         # user (0..m-1), user_id
    stats: dict


def _natural_key(ids: pd.Series) -> pd.Series:
    """Sort numeric IDs numerically ('2' < '10'), others as strings, deterministically."""
    numeric = pd.to_numeric(ids, errors="coerce")
    if numeric.notna().all():
        return numeric
    return ids.astype(str)


def deduplicate(inter: pd.DataFrame, skips: Skips) -> pd.DataFrame:
    """Keep the earliest interaction of each (user, item) pair; count the rest."""
    dup = inter.duplicated(["user_id", "item_id"], keep="first")
    if dup.any():
        row = inter[dup].iloc[0]
        skips.count("duplicate (user, item) interaction", f"user {row.user_id!r}, item {row.item_id!r}", int(dup.sum()))
    return inter[~dup]


def kcore(inter: pd.DataFrame, user_k: int, item_k: int, skips: Skips) -> pd.DataFrame:
    """Drop users with < user_k and items with < item_k interactions, repeated until nothing changes."""
    if user_k <= 1 and item_k <= 1:
        return inter
    rounds = 0
    while True:
        rounds += 1
        users = inter["user_id"].map(inter["user_id"].value_counts())
        items = inter["item_id"].map(inter["item_id"].value_counts())
        keep = (users >= user_k) & (items >= item_k)
        if keep.all():
            break
        skips.count("removed by k-core filtering", n=int((~keep).sum()))
        inter = inter[keep]
    skips.count(f"k-core rounds to fixed point: {rounds}", n=0)
    return inter


def preprocess(raw: RawData, user_k: int, item_k: int, skips: Skips) -> Prepared:
    inter = raw.interactions.copy()
    n_raw = {"users": int(inter["user_id"].nunique()), "items": int(raw.items["item_id"].nunique()),
             "interactions": len(inter)}
    inter["pos"] = np.arange(len(inter))  # file order, the documented tie-break
    inter = inter.sort_values(["user_id", "timestamp", "pos"], kind="stable")
    inter = deduplicate(inter, skips)
    inter = kcore(inter, user_k, item_k, skips)
    if inter.empty:
        raise DataError(f"no interactions left after filtering (user_k={user_k}, item_k={item_k})",
                        path=raw.origin, hint="lower data.user_k / data.item_k")

    item_ids = pd.Series(pd.unique(inter["item_id"]))
    item_ids = item_ids.iloc[np.argsort(_natural_key(item_ids).to_numpy(), kind="stable")].reset_index(drop=True)
    user_ids = pd.Series(pd.unique(inter["user_id"]))
    user_ids = user_ids.iloc[np.argsort(_natural_key(user_ids).to_numpy(), kind="stable")].reset_index(drop=True)
    item_index = pd.Series(np.arange(1, len(item_ids) + 1), index=item_ids.values)
    user_index = pd.Series(np.arange(len(user_ids)), index=user_ids.values)

    out = pd.DataFrame({
        "user": inter["user_id"].map(user_index).to_numpy(np.int64),
        "item": inter["item_id"].map(item_index).to_numpy(np.int64),
        "timestamp": inter["timestamp"].to_numpy(np.float64),
        "pos": inter["pos"].to_numpy(np.int64),
    })
    out = out.sort_values(["user", "timestamp", "pos"], kind="stable").drop(columns="pos").reset_index(drop=True)

    meta = raw.items.drop_duplicates("item_id").set_index("item_id")
    items = pd.DataFrame({"item": np.arange(1, len(item_ids) + 1, dtype=np.int64), "item_id": item_ids.values})
    for col in ("title", "text", "image"):
        items[col] = meta[col].reindex(item_ids.values).fillna("").astype(str).to_numpy()
    users = pd.DataFrame({"user": np.arange(len(user_ids), dtype=np.int64), "user_id": user_ids.values})

    lengths = out.groupby("user").size()
    stats = {
        "raw": n_raw,
        "users": len(users), "items": len(items), "interactions": len(out),
        "avg_sequence_length": round(float(lengths.mean()), 3),
        "median_sequence_length": float(lengths.median()),
        "density": round(len(out) / (len(users) * len(items)), 6),
        "items_with_image": int((items["image"] != "").sum()),
        "items_with_text": int((items["text"] != "").sum()),
    }
    return Prepared(interactions=out, items=items, users=users, stats=stats)
