"""Dataset sources, preprocessing, splits and candidate lists (the `prepare` stage).

A source is one module with `load(cfg: DataConfig, skips: Skips) -> RawData`, registered below by
name. Adding a dataset = one new file + one line here.
"""

from __future__ import annotations

import importlib
from typing import Callable

from .types import RawData, Skips

SOURCES: dict[str, str] = {
    "movielens100k": "mmsrarec.data.movielens",
    "atomic": "mmsrarec.data.atomic",
    "amazon2023": "mmsrarec.data.amazon2023",
    "microlens": "mmsrarec.data.microlens",
}


def get_source(name: str) -> Callable[..., RawData]:
    return importlib.import_module(SOURCES[name]).load


__all__ = ["SOURCES", "RawData", "Skips", "get_source"]
