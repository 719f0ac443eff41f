"""Amazon Reviews 2023 (McAuley Lab, https://amazon-reviews-2023.github.io), one category.

data.path is the folder holding the two raw files of the category named by data.name (e.g.
"Baby_Products"; when empty, the single `meta_*.jsonl[.gz]` in the folder names it):

- `<name>.jsonl` or `<name>.jsonl.gz`: one review per line; we read `user_id`, `parent_asin` (the item)
  and `timestamp` (milliseconds since the epoch; returned in seconds, like MovieLens).
- `meta_<name>.jsonl` or `.jsonl.gz`: one item per line; `parent_asin`, `title`, and the text fields
  (default title, features, description, categories; lists are joined with " | "), and `images`, a
  list of {"thumb", "large", "hi_res", "variant"}: the item's image is the first entry's hi_res, else
  its large URL.

Images: with images.download, the URLs are fetched by `download.py` into images.cache_dir, or, when
that is empty, into `<data.path>/_images` (next to the raw files, so every run on that dataset shares
one cache). Only items inside the k-core of the raw interactions (data.user_k / data.item_k) are
fetched: a category's metadata lists far more items than a 5-core keeps, and that k-core is a superset
of the one the prepare stage computes later, so no kept item misses its image. With
images.download=false only images already in the cache are used. A cache file that is a symlink out of
the cache folder is never used (download.CACHE_OUTSIDE, counted). The URL stays in an extra
`image_url` column. Items that no review names are dropped (counted): nothing downstream can use them.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..errors import DataError
from .atomic import item_text
from .config import DataConfig
from .download import CACHE_OUTSIDE, cached_images, download_images
from .types import RawData, Skips

DEFAULT_TEXT_FIELDS = ["title", "features", "description", "categories"]
REVIEW_FIELDS = ("user_id", "parent_asin", "timestamp")
META_FIELDS = ("parent_asin", "title")
IMAGE_KEYS = ("hi_res", "large")
UNKNOWN_ITEM = "interaction with an unknown item"
SKIP_HINT = "fix or remove the line, or set data.on_bad_record=skip to skip and count such lines"


def bad_record(skips: Skips, reason: str, detail: str, *, path: Path, line: int, hint: str = SKIP_HINT) -> None:
    """skips.bad with this source's hint; the detail goes into the error only (see Skips.bad)."""
    skips.bad(reason, path=path, line=line, detail=detail, hint=hint)


# ----------------------------------------------------------------------------- files and lines

def find_file(folder: Path, stem: str) -> Path:
    """`<stem>.jsonl` or `<stem>.jsonl.gz` in folder; a DataError naming both when neither exists."""
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"neither {stem}.jsonl nor {stem}.jsonl.gz exists", path=str(folder),
                    hint="set data.path to the folder with the category's files and data.name to the category, "
                         "e.g. Baby_Products (files from https://amazon-reviews-2023.github.io)")


def category_name(cfg: DataConfig, folder: Path) -> str:
    """data.name, or the category of the only meta file in the folder."""
    if cfg.name:
        return cfg.name
    metas = sorted({p.name.split(".jsonl")[0][len("meta_"):] for p in folder.glob("meta_*.jsonl*")})
    if len(metas) != 1:
        raise DataError(f"data.name is empty and the folder holds {len(metas)} meta_<category>.jsonl files "
                        f"({', '.join(metas) or 'none'})", path=str(folder), hint="set data.name, e.g. Baby_Products")
    return metas[0]


def iter_json_lines(path: Path, skips: Skips) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of a .jsonl or .jsonl.gz file. Bad lines go to
    skips; a file that cannot be read on (truncated gzip) is reported at the line where it broke."""
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                record = _parse_line(raw, path, number, skips)
                if record is not None:
                    yield number, record
    except (OSError, EOFError, zlib.error) as exc:
        bad_record(skips, "file truncated or corrupt, cannot read on", f"{type(exc).__name__}: {exc}", path=path,
                   line=number + 1,
                   hint="download the file again, or set data.on_bad_record=skip to keep the lines before it")


def _parse_line(raw: bytes, path: Path, number: int, skips: Skips) -> dict | None:
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_record(skips, "not valid UTF-8", f"{exc.reason} at byte {exc.start}", path=path, line=number)
        return None
    try:
        record = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        bad_record(skips, "malformed JSON", detail, path=path, line=number)
        return None
    if not isinstance(record, dict):
        bad_record(skips, "not a JSON object", f"found {type(record).__name__}", path=path, line=number)
        return None
    return record


def _missing(record: dict, fields: tuple[str, ...]) -> list[str]:
    return [f for f in fields if f not in record or record[f] is None]


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def has_lone_surrogate(text: str) -> bool:
    """True when `text` cannot be stored as UTF-8: JSON escapes such as \\ud800, or undecodable bytes read
    with errors='surrogateescape'. pandas' Arrow-backed strings and parquet refuse such text."""
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


# ----------------------------------------------------------------------------- reviews

def _timestamp_s(value: Any) -> float | None:
    """Milliseconds (number or numeric string) -> seconds; None when not a number. May be NaN or inf:
    JSON as Python reads it allows NaN, Infinity and 1e400."""
    if isinstance(value, bool):
        return None
    try:
        return float(value) / 1000.0
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond the float range
        return None


def read_reviews(path: Path, skips: Skips) -> tuple[pd.DataFrame, list[int]]:
    """Interactions in file order, and the line number of each (for error messages later)."""
    users, items, times, lines = [], [], [], []
    for number, rec in iter_json_lines(path, skips):
        missing = _missing(rec, REVIEW_FIELDS)
        if missing:
            bad_record(skips, f"missing field(s) {', '.join(missing)}", f"a review needs {', '.join(REVIEW_FIELDS)}",
                       path=path, line=number)
            continue
        if not (_is_id(rec["user_id"]) and _is_id(rec["parent_asin"])):
            bad_record(skips, "empty user_id or parent_asin", "both must be non-empty strings", path=path,
                       line=number)
            continue
        if has_lone_surrogate(rec["user_id"] + rec["parent_asin"]):
            bad_record(skips, "not valid UTF-8", "user_id or parent_asin holds a lone surrogate escape", path=path,
                       line=number)
            continue
        ts = _timestamp_s(rec["timestamp"])
        if ts is None:
            bad_record(skips, "timestamp is not a number", f"{rec['timestamp']!r}; expected milliseconds",
                       path=path, line=number)
            continue
        if not math.isfinite(ts):
            bad_record(skips, "timestamp is not finite", f"{rec['timestamp']!r}; expected milliseconds",
                       path=path, line=number)
            continue
        users.append(rec["user_id"].strip())
        items.append(rec["parent_asin"].strip())
        times.append(ts)
        lines.append(number)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": pd.Series(times, dtype="float64")})
    return frame, lines


# ----------------------------------------------------------------------------- metadata

def render(value: Any) -> str:
    """A metadata value as one line of text: lists joined with ' | ', dicts as 'key: value, ...'."""
    if value is None:
        return ""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, (list, tuple)):
        return " | ".join(r for r in map(render, value) if r)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {r}" for k, r in ((k, render(v)) for k, v in value.items()) if r)
    return str(value)


def _clean(text: str) -> str:
    """Free text keeps its item: lone surrogates (see has_lone_surrogate) become '?'."""
    return text.encode("utf-8", errors="replace").decode("utf-8") if has_lone_surrogate(text) else text


def image_url(images: Any) -> str:
    """The first entry's hi_res URL, else its large one, else the next entry's; "" when none."""
    for entry in images if isinstance(images, list) else []:
        if isinstance(entry, dict):
            for key in IMAGE_KEYS:
                url = entry.get(key)
                if isinstance(url, str) and url.strip():
                    return url.strip()
    return ""


def read_meta(path: Path, text_fields: list[str], max_chars: int, skips: Skips) -> pd.DataFrame:
    """One row per item: item_id, title, text, image_url (image is filled in later)."""
    records, seen, present = [], set(), set()
    for number, rec in iter_json_lines(path, skips):
        missing = _missing(rec, META_FIELDS)
        if missing or not _is_id(rec["parent_asin"]):
            bad_record(skips, f"missing field(s) {', '.join(missing or ['parent_asin'])}",
                       f"an item needs {', '.join(META_FIELDS)}", path=path, line=number)
            continue
        if has_lone_surrogate(rec["parent_asin"]):
            bad_record(skips, "not valid UTF-8", "parent_asin holds a lone surrogate escape", path=path, line=number)
            continue
        asin = rec["parent_asin"].strip()
        if asin in seen:
            bad_record(skips, "duplicate parent_asin", f"{asin!r} appeared on an earlier line", path=path, line=number)
            continue
        if rec.get("images") is not None and not isinstance(rec["images"], list):
            bad_record(skips, "field images is not a list", f"found {type(rec['images']).__name__}", path=path,
                       line=number)
            continue
        seen.add(asin)
        present.update(f for f in text_fields if f in rec)
        fields = {f: render(rec.get(f)) for f in text_fields}
        records.append({"item_id": asin, "title": _clean(render(rec["title"])),
                        "text": _clean(item_text(fields, text_fields, max_chars)),
                        "image_url": _clean(image_url(rec.get("images")))})
    absent = [f for f in text_fields if f not in present]
    if records and absent:
        raise DataError(f"data.text_fields names {absent}, which no item in this file has", path=str(path),
                        hint=f"use fields of the metadata, e.g. {DEFAULT_TEXT_FIELDS} or main_category, store, details")
    return pd.DataFrame.from_records(records, columns=["item_id", "title", "text", "image_url"])


# ----------------------------------------------------------------------------- joining

def drop_unknown_items(interactions: pd.DataFrame, lines: list[int], known: set[str], reviews_path: Path,
                       meta_path: Path, skips: Skips) -> pd.DataFrame:
    """Interactions naming items the item file lacks: an error naming the first such line (policy
    'error'), or counted and dropped (policy 'skip'). Shared with the microlens source."""
    unknown = ~interactions["item_id"].isin(known)
    if not unknown.any():
        return interactions
    first = int(unknown.to_numpy().argmax())
    item, n = interactions["item_id"].iat[first], int(unknown.sum())
    if skips.policy == "error":
        raise DataError(f"item {item!r} is not in {meta_path.name} ({n} interaction(s) name unknown items)",
                        path=str(reviews_path), line=lines[first],
                        hint=f"use the item file that belongs to {reviews_path.name}, "
                             "or set data.on_bad_record=skip to drop such interactions")
    skips.count(UNKNOWN_ITEM, f"{reviews_path}, line {lines[first]}: item {item!r}", n)
    return interactions[~unknown].reset_index(drop=True)


def drop_items_without_interactions(items: pd.DataFrame, interactions: pd.DataFrame, meta_path: Path,
                               skips: Skips) -> pd.DataFrame:
    """Items no interaction names can never be a history item or a target: drop and count them."""
    used = items["item_id"].isin(set(interactions["item_id"]))
    if not used.all():
        example = items.loc[~used, "item_id"].iat[0]
        skips.count("item without interactions", f"{meta_path}: parent_asin {example!r}", int((~used).sum()))
    return items[used].reset_index(drop=True)


def kcore_items(interactions: pd.DataFrame, user_k: int, item_k: int) -> set[str]:
    """Items of the (user_k, item_k)-core of these interactions, iterated to a fixed point."""
    frame = interactions[["user_id", "item_id"]]
    while user_k > 1 or item_k > 1:
        users = frame["user_id"].map(frame["user_id"].value_counts()) >= max(user_k, 1)
        items = frame["item_id"].map(frame["item_id"].value_counts()) >= max(item_k, 1)
        keep = users & items
        if keep.all():
            break
        frame = frame[keep]
    return set(frame["item_id"])


# ----------------------------------------------------------------------------- images

def image_cache_dir(cfg: DataConfig, folder: Path) -> Path:
    """images.cache_dir, or <data.path>/_images when it is empty."""
    return Path(cfg.images.cache_dir).expanduser() if cfg.images.cache_dir else folder / "_images"


def attach_images(items: pd.DataFrame, wanted: set[str], cfg: DataConfig, folder: Path,
                  skips: Skips) -> tuple[pd.DataFrame, dict]:
    """Fill items.image with cached files for the items in `wanted`; count every item left without one."""
    has_url = items["image_url"] != ""
    no_url = items.loc[~has_url & items["item_id"].isin(wanted), "item_id"]
    if len(no_url):
        skips.count("item without image url", f"item {no_url.iat[0]}", len(no_url))
    urls = {i: u for i, u in zip(items.loc[has_url, "item_id"], items.loc[has_url, "image_url"]) if i in wanted}
    cache = image_cache_dir(cfg, folder)
    if cfg.images.download and urls:
        paths, summary = _download(urls, cache, cfg, skips)
    else:
        paths, summary = _from_cache(urls, cache, cfg, skips)
    summary["not_fetched_outside_kcore"] = int((has_url & ~items["item_id"].isin(wanted)).sum())
    out = items.copy()
    out["image"] = [paths.get(i, "") for i in out["item_id"]]
    return out, summary


def _download(urls: dict[str, str], cache: Path, cfg: DataConfig, skips: Skips) -> tuple[dict[str, str], dict]:
    paths, summary = download_images(urls, cache, cfg.images)
    for item_id, reason in summary.pop("item_failures").items():
        reason = reason if reason == CACHE_OUTSIDE else f"image download: {reason}"  # a refused link is no download
        skips.count(reason, f"item {item_id}: {urls[item_id]}")
    return paths, summary


def _from_cache(urls: dict[str, str], cache: Path, cfg: DataConfig, skips: Skips) -> tuple[dict[str, str], dict]:
    paths, refused = cached_images(urls, cache)
    for item_id, detail in refused.items():
        skips.count(CACHE_OUTSIDE, f"item {item_id}: {detail}")
    missing = [i for i in urls if i not in paths and i not in refused]
    if missing:
        skips.count("image not in cache (images.download=false)", f"item {missing[0]}: {urls[missing[0]]}",
                    len(missing))
    return paths, {"cache_dir": str(cache), "download": cfg.images.download, "cached": len(paths)}


def load(cfg: DataConfig, skips: Skips) -> RawData:
    if not cfg.path:
        raise DataError("the amazon2023 source needs data.path (the folder with <Category>.jsonl[.gz] and "
                        "meta_<Category>.jsonl[.gz]) and data.name (the category, e.g. Baby_Products)")
    folder = Path(cfg.path).expanduser()
    name = category_name(cfg, folder)
    reviews_path, meta_path = find_file(folder, name), find_file(folder, f"meta_{name}")
    interactions, lines = read_reviews(reviews_path, skips)
    items = read_meta(meta_path, cfg.text_fields or DEFAULT_TEXT_FIELDS, cfg.max_text_chars, skips)
    interactions = drop_unknown_items(interactions, lines, set(items["item_id"]), reviews_path, meta_path, skips)
    items = drop_items_without_interactions(items, interactions, meta_path, skips)
    wanted = kcore_items(interactions, cfg.user_k, cfg.item_k)
    items, image_summary = attach_images(items, wanted, cfg, folder, skips)
    items = items[["item_id", "title", "text", "image", "image_url"]]
    return RawData(interactions=interactions, items=items, origin=str(folder),
                   notes={"category": name, "images": image_summary})
