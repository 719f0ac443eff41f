"""RecBole atomic files: `<name>.inter` (user_id:token item_id:token timestamp:float ...) and an
optional `<name>.item` (item_id:token plus text fields, optionally image:token with paths relative
to the dataset folder). https://recbole.io/docs/user_guide/data/atomic_files.html

An image path that leads out of the dataset folder (`..`, an absolute path elsewhere, a symlink pointing
out) is a bad record: an error naming the .item line, or with data.on_bad_record=skip counted as
IMAGE_OUTSIDE while the item stays, without its image (the text and interactions are not at fault).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .config import DataConfig
from .images import inside
from .types import RawData, Skips

TITLE_FIELDS = ("title", "movie_title", "name", "item_name")
IMAGE_OUTSIDE = "image path outside the dataset folder"


def read_atomic_table(path: Path, required: list[str], skips: Skips) -> tuple[list[str], list[list[str]], list[int]]:
    """Parse a tab-separated atomic file. Returns (field names without types, rows, line numbers)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read: {exc}", path=str(path)) from None
    lines = raw.split(b"\n")
    if not lines or not lines[0].strip():
        raise DataError("empty file; expected a header line such as 'user_id:token\\titem_id:token\\ttimestamp:float'",
                        path=str(path), line=1)
    header = lines[0].decode("utf-8", errors="replace").rstrip("\r").split("\t")
    names = [h.split(":", 1)[0].strip() for h in header]
    missing = [r for r in required if r not in names]
    if missing:
        raise DataError(f"missing column(s) {missing}; the header has {header}", path=str(path), line=1,
                        hint="atomic headers are 'name:type' separated by tabs")
    rows, numbers = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            skips.bad(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path=path, line=number,
                      hint="re-encode the file as UTF-8, or set data.on_bad_record=skip")
            continue
        values = text.split("\t")
        if len(values) != len(names):
            skips.bad(f"expected {len(names)} tab-separated fields, found {len(values)}", path=path, line=number)
            continue
        rows.append(values)
        numbers.append(number)
    return names, rows, numbers


def interactions_from_rows(path: Path, names: list[str], rows: list[list[str]], numbers: list[int],
                           skips: Skips) -> pd.DataFrame:
    iu, ii, it = names.index("user_id"), names.index("item_id"), names.index("timestamp")
    users, items, times = [], [], []
    for values, number in zip(rows, numbers):
        try:
            ts = float(values[it])
        except ValueError:
            skips.bad(f"timestamp {values[it]!r} is not a number", path=path, line=number)
            continue
        if not math.isfinite(ts):  # float() reads nan and inf; they would sort last, as targets
            skips.bad(f"timestamp {values[it]!r} is not finite", path=path, line=number)
            continue
        if not values[iu].strip() or not values[ii].strip():
            skips.bad("empty user_id or item_id", path=path, line=number)
            continue
        users.append(values[iu].strip())
        items.append(values[ii].strip())
        times.append(ts)
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": pd.Series(times, dtype="float64")})


def item_text(fields: dict[str, str], text_fields: list[str], max_chars: int) -> str:
    """'field: value; field: value' over the configured fields that are non-empty."""
    parts = [f"{name.replace('_', ' ')}: {fields[name].strip()}" for name in text_fields if fields.get(name, "").strip()]
    return "; ".join(parts)[:max_chars]


def load_atomic(folder: Path, name: str, cfg: DataConfig, skips: Skips) -> RawData:
    inter_path = folder / f"{name}.inter"
    if not inter_path.is_file():
        raise DataError(f"no interaction file {inter_path.name} in {folder}", path=str(inter_path),
                        hint="set data.path to the dataset folder and data.name to the file stem")
    names, rows, numbers = read_atomic_table(inter_path, ["user_id", "item_id", "timestamp"], skips)
    interactions = interactions_from_rows(inter_path, names, rows, numbers, skips)

    item_path = folder / f"{name}.item"
    records = []
    if item_path.is_file():
        names, rows, numbers = read_atomic_table(item_path, ["item_id"], skips)
        text_fields = cfg.text_fields or [n for n in names if n not in ("item_id", "image")]
        unknown = [f for f in text_fields if f not in names]
        if unknown:
            raise DataError(f"data.text_fields names {unknown}, which the file does not have (it has {names})",
                            path=str(item_path), line=1)
        title_field = next((f for f in TITLE_FIELDS if f in names), text_fields[0] if text_fields else None)
        seen = set()
        for values, number in zip(rows, numbers):
            fields = dict(zip(names, values))
            item_id = fields["item_id"].strip()
            if item_id in seen:
                skips.bad(f"item_id {item_id!r} appears twice", path=item_path, line=number)
                continue
            seen.add(item_id)
            image = fields.get("image", "").strip()
            real = inside(image, folder) if image else None
            if image and real is None:
                skips.bad(IMAGE_OUTSIDE, path=item_path, line=number, record=item_id,
                          detail=f"{image!r}, symlinks followed, is not inside {os.path.realpath(folder)}",
                          hint="move the image into the dataset folder and give its path relative to that folder, "
                               "or set data.on_bad_record=skip to keep such items without their image")
            records.append({
                "item_id": item_id,
                "title": fields.get(title_field, "").strip() if title_field else "",
                "text": item_text(fields, text_fields, cfg.max_text_chars),
                "image": str(real) if real else "",
            })
        known = set(seen)
        unknown_mask = ~interactions["item_id"].isin(known)
        if unknown_mask.any():
            first = interactions[unknown_mask].iloc[0]
            if skips.policy == "error":
                raise DataError(f"{int(unknown_mask.sum())} interaction(s) name items that {item_path.name} lacks, "
                                f"e.g. item {first.item_id!r} of user {first.user_id!r}", path=str(inter_path),
                                hint="add the items, or set data.on_bad_record=skip to drop those interactions")
            skips.count("interaction with an unknown item", f"{inter_path}: item {first.item_id!r}", int(unknown_mask.sum()))
            interactions = interactions[~unknown_mask].reset_index(drop=True)
    else:
        ids = pd.unique(interactions["item_id"])
        records = [{"item_id": i, "title": "", "text": "", "image": ""} for i in ids]
    items = pd.DataFrame.from_records(records, columns=["item_id", "title", "text", "image"])
    return RawData(interactions=interactions, items=items, origin=str(folder))


def load(cfg: DataConfig, skips: Skips) -> RawData:
    if not cfg.path:
        raise DataError("the atomic source needs data.path (the dataset folder) and data.name (the file stem)")
    folder = Path(cfg.path).expanduser()
    name = cfg.name or folder.name
    return load_atomic(folder, name, cfg, skips)
