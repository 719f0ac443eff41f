"""Configuration of the prepare stage: which dataset, how to filter it, how to split it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..configtools import InvalidValue, field


@dataclass
class ImagesConfig:
    download: bool = field(True, help="download image URLs (amazon2023) into the cache folder")
    cache_dir: str = field("", help="image cache folder; empty = <data.path>/_images")
    workers: int = field(8, help="concurrent downloads")
    timeout_s: float = field(10.0, help="per-request timeout in seconds")
    retries: int = field(2, help="retries after a failed request (network errors and 5xx only)")
    max_bytes: int = field(5_000_000, help="largest image accepted, in bytes")
    max_pixels: int = field(40_000_000, help="largest image accepted, in pixels (decompression-bomb guard)")

    def validate(self) -> None:
        for key in ("workers", "max_bytes", "max_pixels"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        if self.timeout_s <= 0:
            raise InvalidValue("timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise InvalidValue("retries", f"must be >= 0, got {self.retries}")


@dataclass
class DataConfig:
    source: str = field("movielens100k", help="dataset source: movielens100k | atomic | amazon2023 | microlens")
    path: str = field("", help="dataset folder; empty = the source's embedded default (movielens100k only)")
    name: str = field("", help="atomic: dataset name (<name>.inter, <name>.item); amazon2023: category, e.g. Baby_Products")
    text_fields: list[str] = field(default_factory=list,
                                   help="item fields joined into the item text; empty = the source's default")
    on_bad_record: Literal["error", "skip"] = field(
        "error", help="a malformed line, unknown item or undecodable text: stop with an error, or skip and count it")
    max_text_chars: int = field(2000, help="item text is cut to this many characters")
    user_k: int = field(0, help="k-core: drop users with fewer interactions (iterated with item_k to a fixed point)")
    item_k: int = field(0, help="k-core: drop items with fewer interactions")
    split: Literal["loo", "users", "cold"] = field(
        "loo", help="loo: chronological leave-one-out per user; users: users split train/valid/test, last item held "
                    "out; cold: a share of the items (data.cold_share) never reaches training, each user's last "
                    "interaction with one of them is the test case (docs/protocols.md)")
    user_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1],
                                        help="split=users: train/valid/test fractions of users")
    cold_share: float = field(0.1, neutral=True, help=(
        "split=cold only (refused with another split): the share of the catalogue held out as cold items, "
        "0 < x < 1 (rounded to a count of at least 1 item, leaving at least 1 warm item)"))
    cold_pick: Literal["random", "newest"] = field("random", neutral=True, help=(
        "split=cold only (refused with another split): random = a draw seeded by the data seed; newest = the "
        "items whose first interaction (earliest timestamp over all users) is latest"))
    min_history: int = field(1, help="a held-out case needs at least this many history items")
    num_negatives: int = field(20, help="sampled protocol: negatives per case")
    negative_sampling: Literal["uniform", "popularity"] = field("uniform", help="how negatives are drawn")
    max_cases: int = field(0, help="keep at most this many valid and test cases each (0 = all); seeded subsample")
    seed: int = field(-1, help="seed of the split, the negatives and the case subsample (-1 = the run's seed); "
                               "pin it to keep the candidate lists fixed while the run seed varies")
    images: ImagesConfig = field(default_factory=ImagesConfig)

    def validate(self) -> None:
        from . import SOURCES  # the registry; imported late to keep config import light

        if self.source not in SOURCES:
            raise InvalidValue("source", f"must be one of {', '.join(sorted(SOURCES))}, got {self.source!r}")
        if self.seed < -1:
            raise InvalidValue("seed", f"must be -1 (the run's seed) or >= 0, got {self.seed}")
        for key in ("user_k", "item_k", "num_negatives", "max_cases"):
            if getattr(self, key) < 0:
                raise InvalidValue(key, f"must be >= 0, got {getattr(self, key)}")
        if self.min_history < 1:
            raise InvalidValue("min_history", f"must be >= 1, got {self.min_history}")
        if self.max_text_chars < 1:
            raise InvalidValue("max_text_chars", f"must be >= 1, got {self.max_text_chars}")
        if not 0.0 < self.cold_share < 1.0:
            raise InvalidValue("cold_share", f"must be strictly between 0 and 1, got {self.cold_share}")
        changed = [k for k in ("cold_share", "cold_pick") if getattr(self, k) != getattr(type(self), k)]
        if self.split != "cold" and changed:
            raise InvalidValue(changed[0],
                               f"applies to data.split=cold only, and data.split is {self.split!r}; drop it or "
                               f"set data.split=cold")
        if self.split == "cold" and self.negative_sampling == "popularity":
            raise InvalidValue("negative_sampling", "popularity draws by training popularity, and no cold item is "
                               "ever in training (data.split=cold draws test negatives from the cold items); use "
                               "uniform")
        fr = self.user_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise InvalidValue("user_fractions", f"must be three non-negative numbers summing to 1, got {fr}")
