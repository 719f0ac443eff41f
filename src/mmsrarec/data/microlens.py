"""MicroLens-50k (Westlake University, https://github.com/westlake-repl/MicroLens): short videos, with
their titles and cover images.

data.path is the folder holding:
- `MicroLens-50k_pairs.csv`: user,item,timestamp (header line present; "userID,videoID,timestamp" too).
  Timestamps are kept as the file gives them (the order is what matters).
- `MicroLens-50k_titles.csv`: item,title (quoted CSV; the header `item,title` is optional). A row with
  unquoted commas in its title is read as item + the rest joined by commas.
- `covers/<item>.jpg`, or `MicroLens-50k_covers/<item>.jpg` as the released zip unpacks: the item's
  image. A missing cover leaves image "" and is counted ("image missing"), as does a cover that is a
  symlink pointing out of the covers folder (COVER_OUTSIDE); an unusable one is found and counted by the
  prepare stage, which runs images.validate_items_images on every source.
Items that no interaction names are dropped and counted.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterator

import pandas as pd

from ..errors import DataError
from .amazon2023 import bad_record, drop_items_without_interactions, drop_unknown_items, has_lone_surrogate
from .atomic import item_text
from .config import DataConfig
from .images import IMAGE_MISSING, inside
from .types import RawData, Skips

PAIRS_FILE = "MicroLens-50k_pairs.csv"
TITLES_FILE = "MicroLens-50k_titles.csv"
COVER_DIRS = ("covers", "MicroLens-50k_covers")
TEXT_FIELDS = ["title"]
ITEM_HEADERS = {"item", "item_id", "itemid", "video", "video_id", "videoid"}
COVER_OUTSIDE = "cover outside the covers folder"


def read_csv_rows(path: Path, skips: Skips) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty CSV row, header included. Rows that are not UTF-8 or not
    valid CSV go to skips. The line number is where the row ends (a quoted title may span lines)."""
    if not path.is_file():
        raise DataError(f"{path.name} is missing", path=str(path),
                        hint="set data.path to the MicroLens-50k folder (MicroLens-50k_pairs.csv, "
                             "MicroLens-50k_titles.csv, covers/)")
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                bad_record(skips, "not valid CSV", str(exc), path=path, line=reader.line_num)
                continue
            if not any(field.strip() for field in row):
                continue
            if any(has_lone_surrogate(field) for field in row):  # undecodable bytes, escaped
                skips.bad("not valid UTF-8", path=path, line=reader.line_num,
                          hint="re-encode the file as UTF-8, or set data.on_bad_record=skip")
                continue
            yield reader.line_num, row


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_pairs(path: Path, skips: Skips) -> tuple[pd.DataFrame, list[int]]:
    """Interactions in file order, and the line number of each."""
    users, items, times, lines = [], [], [], []
    for index, (number, row) in enumerate(read_csv_rows(path, skips)):
        if index == 0 and len(row) == 3 and _number(row[2]) is None:
            continue  # the header
        if len(row) != 3:
            bad_record(skips, "wrong number of fields", f"expected 3 (user,item,timestamp), found {len(row)}",
                       path=path, line=number)
            continue
        user, item, stamp = (field.strip() for field in row)
        if not user or not item:
            bad_record(skips, "empty user or item", "", path=path, line=number)
            continue
        ts = _number(stamp)
        if ts is None:
            bad_record(skips, "timestamp is not a number", repr(stamp), path=path, line=number)
            continue
        if not math.isfinite(ts):  # float() reads nan and inf; they would sort last, as targets
            bad_record(skips, "timestamp is not finite", repr(stamp), path=path, line=number)
            continue
        users.append(user)
        items.append(item)
        times.append(ts)
        lines.append(number)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": pd.Series(times, dtype="float64")})
    return frame, lines


def read_titles(path: Path, text_fields: list[str], max_chars: int, skips: Skips) -> pd.DataFrame:
    """One row per item: item_id, title, text (image is filled in later)."""
    records, seen = [], set()
    for index, (number, row) in enumerate(read_csv_rows(path, skips)):
        if index == 0 and row[0].strip().lower() in ITEM_HEADERS:
            continue  # the header
        if len(row) < 2 or not row[0].strip():
            bad_record(skips, "wrong number of fields", f"expected 2 (item,title), found {len(row)}", path=path,
                       line=number)
            continue
        item = row[0].strip()
        if item in seen:
            bad_record(skips, "duplicate item", f"{item!r} appeared on an earlier line", path=path, line=number)
            continue
        seen.add(item)
        title = " ".join(",".join(row[1:]).split())
        records.append({"item_id": item, "title": title, "text": item_text({"title": title}, text_fields, max_chars)})
    return pd.DataFrame.from_records(records, columns=["item_id", "title", "text"])


def cover_dir(folder: Path) -> Path | None:
    return next((folder / d for d in COVER_DIRS if (folder / d).is_dir()), None)


def attach_covers(items: pd.DataFrame, folder: Path, skips: Skips) -> pd.DataFrame:
    """image = the item's cover when the file exists; every item without one is counted as IMAGE_MISSING,
    and a cover that is a symlink out of the covers folder as COVER_OUTSIDE (not followed: see images.inside).

    Only existence is checked here: the prepare stage decodes every image of every source once
    (images.validate_items_images), and decoding 20k covers twice would double the cost."""
    covers = cover_dir(folder)
    out = items.copy()
    if covers is None:
        if len(out):
            skips.count(IMAGE_MISSING, f"no covers folder ({' or '.join(COVER_DIRS)}) in {folder}", len(out))
        out["image"] = ""
        return out
    root = covers.resolve()
    present = {p.name for p in root.iterdir()}
    images = []
    for item in out["item_id"]:
        name = f"{item}.jpg"
        real = inside(name, root) if name in present else None
        if name not in present:
            skips.count(IMAGE_MISSING, f"item {item}: {root / name}")
        elif real is None:
            skips.count(COVER_OUTSIDE, f"item {item}: {root / name} -> {os.path.realpath(root / name)}")
        images.append(str(real) if real else "")
    out["image"] = images
    return out


def load(cfg: DataConfig, skips: Skips) -> RawData:
    if not cfg.path:
        raise DataError("the microlens source needs data.path: the folder with MicroLens-50k_pairs.csv, "
                        "MicroLens-50k_titles.csv and covers/")
    unknown = [f for f in cfg.text_fields if f not in TEXT_FIELDS]
    if unknown:
        raise DataError(f"data.text_fields names {unknown}; MicroLens-50k items have only {TEXT_FIELDS}")
    folder = Path(cfg.path).expanduser()
    pairs_path, titles_path = folder / PAIRS_FILE, folder / TITLES_FILE
    interactions, lines = read_pairs(pairs_path, skips)
    items = read_titles(titles_path, cfg.text_fields or TEXT_FIELDS, cfg.max_text_chars, skips)
    interactions = drop_unknown_items(interactions, lines, set(items["item_id"]), pairs_path, titles_path, skips)
    items = drop_items_without_interactions(items, interactions, titles_path, skips)
    items = attach_covers(items, folder, skips)
    return RawData(interactions=interactions, items=items[["item_id", "title", "text", "image"]], origin=str(folder))
