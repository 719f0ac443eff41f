"""Per-case results, the one format every scoring stage writes and the evaluate stage reads.

A scoring stage (score-cf, score-ranker, rerank-ranker, score-mllmmsr) writes, for each method, protocol
and split it scored, `<protocol>/<method>_<split>.parquet` with one row per case: the user, and the target's
standing among the items it competed with, `greater` (scored higher), `ties` (scored the same) and `n` (how
many competed). Every metric of evaluate/metrics.py but one is a function of those three numbers. Files of
the stored candidate lists also keep `candidates` (target first) and `scores`, so any number can be traced
and blended, and the sampled protocol's pooled `auc` (the one that is not) is computed from them; every
sampled file is written by write_scored_lists, so all have them (CF models, LLM rankers, MLLM-MSR, outside
score files, evaluate.fuse blends). An LLM's keep what its prompts showed (`context`, `notes`). Beside them,
`methods.json` holds each method's facts per protocol (training and scoring time, calls per user, ...),
which become leaderboard columns. Nothing here loads a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import read_json, write_json, write_parquet
from ..errors import ArtifactError
from .protocols import sampled_counts

METHODS_FILE = "methods.json"
CASE_METRICS = "cases.parquet"  # evaluate's per-case metrics (write_case_metrics)
USERS = "users"  # in evaluate's per-case values, beside each split's metrics: its cases' users


def case_path(folder: Path, method: str, protocol: str, split: str) -> Path:
    return Path(folder) / protocol / f"{method}_{split}.parquet"


def write_cases(folder: Path, method: str, protocol: str, split: str, users, greater, ties, n,
                **columns) -> Path:
    """One row per case: user, greater, ties, n, and any extra per-case columns (lists or scalars)."""
    frame = pd.DataFrame({"user": np.asarray(users, dtype=np.int64), "greater": np.asarray(greater, np.int64),
                          "ties": np.asarray(ties, np.int64), "n": np.asarray(n, np.int64)})
    for name, values in columns.items():
        frame[name] = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
    path = case_path(folder, method, protocol, split)
    write_parquet(path, frame)
    return path


def write_scored_lists(folder: Path, method: str, split: str, users, candidates: np.ndarray, scores: np.ndarray,
                       **columns) -> Path:
    """A method's scores of the stored 1 + N lists (sampled protocol): the counts and the scores themselves."""
    greater, ties, n = sampled_counts(scores)
    return write_cases(folder, method, "sampled", split, users, greater, ties, n,
                       candidates=list(np.asarray(candidates)), scores=list(np.asarray(scores, np.float64)),
                       **columns)


def read_cases(folder: Path, method: str, protocol: str, split: str) -> pd.DataFrame:
    path = case_path(folder, method, protocol, split)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the scoring stage in {folder} did not score {method} ({protocol}, "
                            f"{split}); rerun it with --force")
    return pd.read_parquet(path)


def score_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The [n_cases, 1 + N] scores of a sampled case file (target first)."""
    return np.array(frame["scores"].tolist(), dtype=np.float64)


def read_scores(folder: Path, method: str, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A method's sampled case file in a stage folder and its [n_cases, 1 + N] score matrix."""
    frame = read_cases(folder, method, "sampled", split)
    return frame, score_matrix(frame)


def write_methods(folder: Path, facts: dict[str, dict[str, dict]]) -> None:
    """methods.json: {method: {protocol: {"splits": [...], fact: value, ...}}}."""
    write_json(Path(folder) / METHODS_FILE, facts)


def read_methods(folder: Path) -> dict[str, dict[str, dict]]:
    path = Path(folder) / METHODS_FILE
    return read_json(path) if path.is_file() else {}


def write_case_metrics(folder: Path, per: dict) -> Path:
    """evaluate's `cases.parquet`: the per-case value of every metric that is a mean over cases (not the pooled
    `auc`, which has none), one row per method, protocol, split and case (its `user`), NaN where a protocol
    lacks the metric. `per` is {(method, protocol): {split: {USERS: users, metric: values}}}, as evaluate
    computed them. The experiment board pairs runs case by case from it; a user can test with it too."""
    frames = []
    for (method, protocol), splits in per.items():
        for split, values in splits.items():
            metrics = {name: np.asarray(v, np.float64) for name, v in values.items()
                       if name != USERS and not hasattr(v, "resampled")}  # a PooledAUC resamples, has no cases
            frames.append(pd.DataFrame({"method": method, "protocol": protocol, "split": split,
                                        "user": np.asarray(values[USERS], np.int64), **metrics}))
    path = Path(folder) / CASE_METRICS
    write_parquet(path, pd.concat(frames, ignore_index=True) if frames else
                  pd.DataFrame(columns=["method", "protocol", "split", "user"]))
    return path


def read_case_metrics(folder: Path) -> pd.DataFrame | None:
    """An evaluate folder's cases.parquet (write_case_metrics), None for a folder evaluated before it existed."""
    path = Path(folder) / CASE_METRICS
    return pd.read_parquet(path) if path.is_file() else None
