"""Slices of the held-out cases: every leaderboard row again on parts of its cases.

Two slicings of the valid and test cases, each by integer buckets:

- `popularity`: the target item's training popularity, the number of times it occurs in the prepare stage's
  train.parquet sequences (all training interactions, repeats counted). Buckets from
  evaluate.popularity_buckets, edges [1, 5, 20, 100] -> "0" (never in training), "1-4", "5-19", "20-99", "100+".
- `history`: the length of the case's history. Buckets from evaluate.history_buckets, edges [5, 20, 50] ->
  "1-4", "5-19", "20-49", "50+" (data.min_history >= 1, so no history is empty).

Edges are strictly increasing positive integers, each the smallest value of its bucket: a value v falls in
bucket i, the number of edges <= v; the first bucket runs from the smallest possible value (0 for
popularity, 1 for history) up to edges[0] - 1 and the last is open ("100+"). A first bucket that no value can
fall in (history edges starting at 1) has no label.

The evaluate stage (stage.add_slices) computes, per leaderboard row (method x protocol), split and slice,
the row's headline metrics on the slice's cases (the sampled protocol's pooled `auc` over the slice's rows
alone: metrics.PooledAUC.subset), with a 95% bootstrap interval over them on test, and the paired difference
to the best CF model on that slice (picked on the slice's valid cases; `vs_cf_from` says "slice", or
"overall" where the CF models have fewer than stage.SLICE_MIN_VALID valid cases in it or tie for the best, as
they all do at chance on never-seen targets: then the row's own vs_cf). It writes them here, long
format, one record per (method, protocol, slicing, slice, split, metric):

    method, protocol, slicing ("popularity" | "history"), slice (its label), split ("valid" | "test"),
    cases (the method's cases in the slice), metric, value, lo, hi (95% interval; test only), vs_cf,
    vs_cf_from, diff, diff_lo, diff_hi (value minus vs_cf's on the same cases, with its 95% interval; test
    only, empty for the reference itself and for a method not scored on the reference's cases)

as slices.csv (empty cells for what is absent) and slices.json ({"slicings": {name: {"edges", "labels",
"what"}}, "cases": {split: {slicing: {label: the split's cases in it}}}, "rows": [records, null for absent]}).
Valid records carry values only: what the per-slice CF choice was made on. Nothing here loads a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import read_json, write_json, write_text
from ..errors import ArtifactError

COLUMNS = ["method", "protocol", "slicing", "slice", "split", "cases", "metric", "value", "lo", "hi", "vs_cf",
           "vs_cf_from", "diff", "diff_lo", "diff_hi"]
WHAT = {"popularity": "the target's popularity in training (times it occurs in the training sequences)",
        "history": "the case's history length"}


@dataclass(frozen=True)
class Buckets:
    """Integer buckets: `edges` the smallest value of every bucket but the first, `low` the smallest value."""

    edges: tuple[int, ...]
    low: int = 0

    def __post_init__(self) -> None:
        edges = tuple(int(e) for e in self.edges)
        if any(b <= a for a, b in zip(edges, edges[1:])) or any(e < 1 for e in edges):
            raise ValueError(f"bucket edges must be strictly increasing positive integers, got {list(self.edges)}")
        object.__setattr__(self, "edges", edges)

    def _bounds(self) -> list[tuple[int, int | None]]:
        """(first, last) value of every bucket, last None for the open one."""
        starts = [self.low, *self.edges]
        return [(a, b - 1) for a, b in zip(starts, starts[1:])] + [(starts[-1], None)]

    def _labels(self) -> list[str | None]:
        """Every bucket's label, None for a first bucket no value falls in."""
        return [None if last is not None and last < first else f"{first}+" if last is None else
                str(first) if first == last else f"{first}-{last}" for first, last in self._bounds()]

    def labels(self) -> list[str]:
        """The labels in bucket order ("0", "1-4", ..., "100+"), but of a first bucket no value falls in."""
        return [label for label in self._labels() if label is not None]

    def assign(self, values) -> np.ndarray:
        """The label of each value (an object array); a value below `low` goes to the first bucket."""
        values = np.asarray(values, dtype=np.int64)
        labels = self._labels()
        if labels[0] is None:
            labels[0] = labels[1]
        index = np.searchsorted(np.asarray(self.edges, dtype=np.int64), values, side="right")
        return np.asarray(labels, dtype=object)[index] if len(values) else np.zeros(0, dtype=object)


def slicings(popularity_edges, history_edges) -> dict[str, Buckets]:
    return {"popularity": Buckets(tuple(popularity_edges), 0), "history": Buckets(tuple(history_edges), 1)}


def training_popularity(train: pd.DataFrame) -> np.ndarray:
    """[item] how often each item occurs in the training sequences (train.parquet's `items` lists)."""
    seqs = [np.asarray(s, dtype=np.int64) for s in train["items"]]
    items = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    return np.bincount(items, minlength=1)


def case_slices(data: dict, buckets: dict[str, Buckets], splits=("valid", "test")) -> dict[str, pd.DataFrame]:
    """{split: one row per case (index: user, one case per user and split), its target's training popularity
    (`target_popularity`), its history length (`history_length`) and its label under every slicing}."""
    counts = training_popularity(data["train"])
    out = {}
    for split in splits:
        frame = data[split]
        targets = frame["target"].to_numpy(np.int64)
        table = pd.DataFrame({
            "target_popularity": np.where(targets < len(counts), counts[np.minimum(targets, len(counts) - 1)], 0),
            "history_length": np.array([len(h) for h in frame["history"]], dtype=np.int64)},
            index=pd.Index(frame["user"].to_numpy(np.int64), name="user"))
        table["popularity"] = buckets["popularity"].assign(table["target_popularity"])
        table["history"] = buckets["history"].assign(table["history_length"])
        out[split] = table
    return out


def labels_of(table: pd.DataFrame, slicing: str, users, where: str) -> np.ndarray:
    """The `slicing` label of each case of a case file, by its users; `where` names the file for the error."""
    labels = table[slicing].reindex(np.asarray(users, dtype=np.int64))
    if labels.isna().any():
        unknown = labels.index[labels.isna()].tolist()
        raise ArtifactError(f"{where}: {len(unknown)} case(s) of users that are not cases of this split in the "
                            f"prepare stage (e.g. {unknown[:5]}); rerun its scoring stage with --force")
    return labels.to_numpy(dtype=object)


def _plain(value):
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_slices(records: list[dict], out: Path, buckets: dict[str, Buckets], cases: dict[str, pd.DataFrame]
                 ) -> pd.DataFrame:
    """slices.csv and slices.json (module doc); returns the table."""
    table = pd.DataFrame(records, columns=COLUMNS)
    write_text(Path(out) / "slices.csv", table.to_csv(index=False, float_format="%.6f"))
    counts = {split: {name: {label: int((frame[name] == label).sum()) for label in b.labels()}
                      for name, b in buckets.items()} for split, frame in cases.items()}
    write_json(Path(out) / "slices.json", {
        "slicings": {name: {"edges": list(b.edges), "labels": b.labels(), "what": WHAT[name]}
                     for name, b in buckets.items()},
        "cases": counts,
        "rows": [{k: _plain(v) for k, v in r.items()} for r in table.to_dict(orient="records")]})
    return table


def read_slices(folder: Path) -> tuple[pd.DataFrame, dict]:
    """(the table, the rest of slices.json) of an evaluate folder."""
    doc = read_json(Path(folder) / "slices.json")
    return pd.DataFrame(doc.pop("rows"), columns=COLUMNS), doc


def panel(table: pd.DataFrame, protocol: str, slicing: str, metric: str, order: list[str] | None = None
          ) -> tuple[list[str], list[str], dict]:
    """(slice labels, in `order` (bucket order) where given, methods in row order, {(slice, method): its test
    record}) of one protocol, slicing and metric: what a table or chart of slices shows."""
    part = table[(table["protocol"] == protocol) & (table["slicing"] == slicing) & (table["split"] == "test")
                 & (table["metric"] == metric)]
    labels = list(dict.fromkeys(part["slice"]))
    if order is not None:
        labels = [label for label in order if label in labels]
    return labels, list(dict.fromkeys(part["method"])), {(r["slice"], r["method"]): r for r in
                                                         part.to_dict(orient="records")}


def shown_metric(table: pd.DataFrame, protocol: str) -> str | None:
    """The metric slice tables and charts show for a protocol: HR@5 (sampled), HR@10 (full, rerank), or the
    first metric its test records have."""
    part = table[(table["protocol"] == protocol) & (table["split"] == "test")]
    have = list(dict.fromkeys(part["metric"]))
    preferred = "hr@5" if protocol == "sampled" else "hr@10"
    return preferred if preferred in have else (have[0] if have else None)
