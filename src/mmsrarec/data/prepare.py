"""The prepare stage: dataset source -> filtered, remapped interactions -> splits -> candidate lists.

Writes (under runs/<name>/prepare/): items.parquet, users.parquet, interactions.parquet,
train.parquet (user, items), valid.parquet and test.parquet (user, history, target, negatives),
stats.json and skipped.json.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..artifacts import write_json, write_parquet
from ..errors import DataError
from . import get_source
from .preprocess import preprocess
from .splits import draw_negatives, sequences, split_loo, split_users, subsample
from .types import Skips


def run(ctx) -> None:
    cfg, seed = ctx.cfg.data, ctx.cfg.data_seed
    skips = Skips(cfg.on_bad_record)
    ctx.log(f"reading source {cfg.source!r}" + (f" from {cfg.path}" if cfg.path else " (embedded)"))
    raw = get_source(cfg.source)(cfg, skips)
    if (raw.items["image"] != "").any():
        from .images import validate_items_images
        raw.items = validate_items_images(raw.items, cfg.images, skips)
    prepared = preprocess(raw, cfg.user_k, cfg.item_k, skips)
    seqs = sequences(prepared.interactions)
    n_items = len(prepared.items)

    if cfg.split == "loo":
        train, cases, short = split_loo(seqs, cfg.min_history)
    else:
        train, cases, short = split_users(seqs, cfg.user_fractions, cfg.min_history, seed)
    popularity = np.bincount(np.concatenate([np.asarray(s, dtype=np.int64) for s in train["items"]] or [[0]]),
                             minlength=n_items + 1)
    for split in ("valid", "test"):
        frame = subsample(cases[split], cfg.max_cases, seed, split)
        if frame.empty:
            raise DataError(f"the {split} split is empty (split={cfg.split}, {len(seqs)} users)", path=raw.origin,
                            hint="use more data, lower data.min_history, or change data.user_fractions")
        try:
            frame["negatives"] = draw_negatives(frame, seqs, n_items, cfg.num_negatives, cfg.negative_sampling,
                                                popularity, seed, split)
        except ValueError as exc:
            raise DataError(str(exc), path=raw.origin) from None
        cases[split] = frame

    stats = dict(prepared.stats)
    stats.update({
        "split": cfg.split, "train_sequences": len(train),
        "train_interactions": int(sum(len(s) for s in train["items"])),
        "valid_cases": len(cases["valid"]), "test_cases": len(cases["test"]),
        "users_too_short_for_a_case": short, "negatives_per_case": cfg.num_negatives,
        "skipped": {k: v["count"] for k, v in skips.as_dict().items()},
    })
    write_parquet(ctx.out / "items.parquet", prepared.items)
    write_parquet(ctx.out / "users.parquet", prepared.users)
    write_parquet(ctx.out / "interactions.parquet", prepared.interactions)
    write_parquet(ctx.out / "train.parquet", train)
    for split in ("valid", "test"):
        write_parquet(ctx.out / f"{split}.parquet", cases[split])
    write_json(ctx.out / "stats.json", stats)
    write_json(ctx.out / "skipped.json", skips.as_dict())
    ctx.summary.update({k: stats[k] for k in ("users", "items", "interactions", "valid_cases", "test_cases")})
    ctx.log("statistics:\n" + format_stats(stats))


def format_stats(stats: dict) -> str:
    raw = stats["raw"]
    lines = [
        f"  raw:      {raw['users']:,} users, {raw['items']:,} items, {raw['interactions']:,} interactions",
        f"  filtered: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions",
        f"  average sequence length {stats['avg_sequence_length']:.2f} (median {stats['median_sequence_length']:g}),"
        f" density {stats['density']:.4%}",
        f"  split {stats['split']}: {stats['train_sequences']:,} training sequences "
        f"({stats['train_interactions']:,} interactions), {stats['valid_cases']:,} valid / "
        f"{stats['test_cases']:,} test cases, {stats['negatives_per_case']} negatives each",
    ]
    if stats["users_too_short_for_a_case"]:
        lines.append(f"  {stats['users_too_short_for_a_case']} users too short for a held-out case")
    for reason, n in stats["skipped"].items():
        lines.append(f"  skipped/dropped: {n:,} x {reason}")
    return "\n".join(lines)


def load_prepared(folder) -> dict[str, pd.DataFrame]:
    """Read the prepare stage's tables (used by later stages)."""
    out = {name: pd.read_parquet(folder / f"{name}.parquet")
           for name in ("items", "users", "train", "valid", "test")}
    out["stats"] = json.loads((folder / "stats.json").read_text())
    return out
