"""The prepare stage: dataset source -> filtered, remapped interactions -> splits -> candidate lists.

Writes (under runs/<name>/prepare/): items.parquet, users.parquet, interactions.parquet,
train.parquet (user, items), valid.parquet and test.parquet (user, history, target, negatives),
stats.json and skipped.json; with split=cold also cold_items.json (the cold items, how they were picked).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..artifacts import write_json, write_parquet
from ..errors import DataError
from . import get_source
from .preprocess import preprocess
from .splits import draw_negatives, pick_cold, sequences, split_cold, split_loo, split_users, subsample
from .types import Skips

COLD_ITEMS = "cold_items.json"


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

    pools: dict[str, np.ndarray | None] = {"valid": None, "test": None}  # where negatives come from: every item
    cold = None
    if cfg.split == "loo":
        train, cases, short = split_loo(seqs, cfg.min_history)
    elif cfg.split == "users":
        train, cases, short = split_users(seqs, cfg.user_fractions, cfg.min_history, seed)
    else:
        try:
            cold = pick_cold(prepared.interactions, n_items, cfg.cold_share, cfg.cold_pick, seed)
        except ValueError as exc:
            raise DataError(str(exc), path=raw.origin) from None
        train, cases, short, cold_facts = split_cold(seqs, cold, n_items, cfg.min_history, cfg.num_negatives)
        pools = {"valid": np.setdiff1d(np.arange(1, n_items + 1), cold), "test": cold}
    popularity = np.bincount(np.concatenate([np.asarray(s, dtype=np.int64) for s in train["items"]] or [[0]]),
                             minlength=n_items + 1)
    for split in ("valid", "test"):
        frame = subsample(cases[split], cfg.max_cases, seed, split)
        if frame.empty:
            raise DataError(f"the {split} split is empty (split={cfg.split}, {len(seqs)} users)", path=raw.origin,
                            hint="use more data, lower data.min_history, or " + (
                                "raise data.cold_share" if cold is not None else "change data.user_fractions"))
        try:
            frame["negatives"] = draw_negatives(frame, seqs, n_items, cfg.num_negatives, cfg.negative_sampling,
                                                popularity, seed, split, pools[split])
        except ValueError as exc:
            if cold is not None and split == "test":
                raise DataError(f"split=cold draws test negatives from the {len(cold)} cold items: {exc}",
                                path=raw.origin, hint="raise data.cold_share or lower data.num_negatives") from None
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
    if cold is not None:
        stats["cold"] = {"items": len(cold), "share": cfg.cold_share, "pick": cfg.cold_pick,
                         "test_cases": len(cases["test"]), **cold_facts}
    write_parquet(ctx.out / "items.parquet", prepared.items)
    write_parquet(ctx.out / "users.parquet", prepared.users)
    write_parquet(ctx.out / "interactions.parquet", prepared.interactions)
    write_parquet(ctx.out / "train.parquet", train)
    for split in ("valid", "test"):
        write_parquet(ctx.out / f"{split}.parquet", cases[split])
    if cold is not None:
        write_json(ctx.out / COLD_ITEMS, {"pick": cfg.cold_pick, "share": cfg.cold_share, "items": cold.tolist()})
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
    cold = stats.get("cold")
    if cold:
        lines.append(f"  cold items: {cold['items']:,} ({cold['pick']}, share {cold['share']:g}), never in training "
                     f"({cold['cold_interactions']:,} interactions left out); {cold['test_cases']:,} test cases from "
                     f"{cold['users_with_cold_interaction']:,} users with a cold interaction"
                     + (f", {cold['users_too_short_for_a_test_case']:,} of them too short for one"
                        if cold['users_too_short_for_a_test_case'] else "")
                     + (f", {cold['users_without_enough_cold_negatives']:,} with fewer than "
                        f"{stats['negatives_per_case']} unseen cold items left for negatives"
                        if cold.get('users_without_enough_cold_negatives') else "")
                     + (f"; {cold['users_without_enough_warm_negatives']:,} users with fewer than "
                        f"{stats['negatives_per_case']} unseen warm items left have no valid case"
                        if cold.get('users_without_enough_warm_negatives') else ""))
    if stats["users_too_short_for_a_case"]:
        held_out = "valid case" if cold else "held-out case"
        lines.append(f"  {stats['users_too_short_for_a_case']} users too short for a {held_out}")
    for reason, n in stats["skipped"].items():
        lines.append(f"  skipped/dropped: {n:,} x {reason}")
    return "\n".join(lines)


def load_prepared(folder) -> dict[str, pd.DataFrame]:
    """Read the prepare stage's tables (used by later stages); "stats" is stats.json, "cold_items" the sorted
    cold items of split=cold (an empty array with another split)."""
    out = {name: pd.read_parquet(folder / f"{name}.parquet")
           for name in ("items", "users", "train", "valid", "test")}
    out["stats"] = json.loads((folder / "stats.json").read_text())
    out["cold_items"] = load_cold_items(folder)
    return out


def load_cold_items(folder) -> np.ndarray:
    """The sorted cold items of a prepare folder (split=cold), or an empty array when it has none."""
    path = folder / COLD_ITEMS
    if not path.is_file():
        return np.zeros(0, dtype=np.int64)
    return np.asarray(json.loads(path.read_text())["items"], dtype=np.int64)
