"""What every dataset source returns, before filtering and ID remapping."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "text", "image"]


class Skips:
    """Counts every record a source or a filter drops, with a few examples of each reason.

    With policy "error" the first bad record raises a DataError instead; nothing is dropped silently.
    """

    def __init__(self, policy: str = "error", max_examples: int = 5):
        self.policy = policy
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def bad(self, reason: str, *, path: str | Path, line: int | None = None, record: str | None = None,
            detail: str = "", hint: str | None = None) -> None:
        """A malformed record: raise (policy 'error') or count it (policy 'skip'). The detail (the value,
        the parser's message) goes into the error only, so that skipped records are counted in a few
        groups by reason rather than one group per distinct value."""
        if self.policy == "error":
            raise DataError(f"{reason} ({detail})" if detail else reason, path=str(path), line=line,
                            record=record, hint=hint or "fix the record, or set data.on_bad_record=skip to skip and count such records")
        where = f"{path}" + (f", line {line}" if line is not None else "") + (f", record {record}" if record else "")
        self.count(reason, where)

    def count(self, reason: str, example: str = "", n: int = 1) -> None:
        """A record dropped on purpose (duplicate, k-core, missing image): always counted."""
        self.counts[reason] += n
        if example:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < self.max_examples:
                ex.append(example)

    def as_dict(self) -> dict:
        return {reason: {"count": n, "examples": self.examples.get(reason, [])}
                for reason, n in sorted(self.counts.items())}


@dataclass
class RawData:
    """interactions: user_id (str), item_id (str), timestamp (float), in file order.
    items: item_id (str), title (str), text (str), image (str: absolute path, or "" when none)."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    origin: str
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, frame, cols in (("interactions", self.interactions, INTERACTION_COLUMNS),
                                  ("items", self.items, ITEM_COLUMNS)):
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise DataError(f"source returned {name} without columns {missing}", path=self.origin)
        # A NaN or infinite timestamp sorts last and would silently become a user's valid or test target.
        # Every source refuses them line by line (Skips.bad); this catches a source that forgets to.
        times = pd.to_numeric(self.interactions["timestamp"], errors="coerce").to_numpy(dtype="float64")
        bad = ~np.isfinite(times)
        if bad.any():
            row = self.interactions.iloc[int(bad.argmax())]
            raise DataError(f"{int(bad.sum())} interaction(s) have a timestamp that is not a finite number, e.g. "
                            f"user {row.user_id!r}, item {row.item_id!r}, timestamp {row.timestamp!r}",
                            path=self.origin, hint="the source's reader should have refused these lines: "
                                                   "fix the timestamps in the data, and report the reader as a bug")
