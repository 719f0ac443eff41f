"""Rendering retrieved neighbours as context: the keywords of the items similar users chose next.

Retrieval (the index stage) stores item ids; which words describe an item is the caller's choice:
the summarizer's keywords, or titles for the no-summarization ablation. Both arrive as one
`dict[int, list[str]]`.

Keyword table contract (written by the summarize stage): a parquet file with columns `item` (int,
the prepare stage's item index) and `keywords` (list of str).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from ..errors import DataError


def context_keywords(neighbour_items: Iterable[int], similarities: Iterable[float],
                     keywords_by_item: Mapping[int, Sequence[str]], cap: int) -> list[str]:
    """The keywords of the neighbours' next items, without duplicates (case-insensitive), ranked by
    the sum of the similarities of the neighbours whose item carries the keyword (frequency x
    similarity), then by frequency, then by first appearance; at most `cap`."""
    entries: dict[str, list] = {}  # key -> [keyword as first seen, score, count, first appearance]
    for item, sim in zip(neighbour_items, similarities):
        if item is None or int(item) <= 0 or sim is None or not math.isfinite(float(sim)):
            continue  # padding: fewer than k neighbours
        seen: set[str] = set()
        for keyword in keywords_by_item.get(int(item), ()):
            text = keyword.strip()
            key = text.casefold()
            if not key or key in seen:
                continue
            seen.add(key)
            entry = entries.setdefault(key, [text, 0.0, 0, len(entries)])
            entry[1] += float(sim)
            entry[2] += 1
    ranked = sorted(entries.values(), key=lambda e: (-e[1], -e[2], e[3]))
    return [e[0] for e in ranked[:max(cap, 0)]]


def context_string(neighbour_items: Iterable[int], similarities: Iterable[float],
                   keywords_by_item: Mapping[int, Sequence[str]], cap: int, sep: str = ", ") -> str:
    """The context keywords joined into one short string for a prompt ('' when there are none)."""
    return sep.join(context_keywords(neighbour_items, similarities, keywords_by_item, cap))


def read_keyword_table(path: str | Path) -> dict[int, list[str]]:
    """item -> keywords from a keyword table (columns item, keywords)."""
    frame = pd.read_parquet(path)
    missing = {"item", "keywords"} - set(frame.columns)
    if missing:
        raise DataError(f"a keyword table needs columns item and keywords; missing {sorted(missing)}", path=str(path))
    return keywords_from_frame(frame)


def keywords_from_frame(frame: pd.DataFrame) -> dict[int, list[str]]:
    return {int(item): [str(k) for k in (kws if kws is not None else [])]
            for item, kws in zip(frame["item"], frame["keywords"])}
