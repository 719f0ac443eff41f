"""Outside score files on the leaderboard: any model's scores of the stored candidate lists.

A score file (CSV or parquet) has the columns user, item, score and optionally split (valid or test;
without it every row is a test row), with the ids that `mmsrarec export-candidates` writes (the
dataset's original user and item ids). For every split it covers (test always) it must score each
(user, item) pair of the stored 1 + N lists exactly once and name nothing else; its scores then go
through the same per-case files and metric code as every other method (casefiles.py), so its row is
comparable with theirs. Anything else is a ScoreFileError naming the file, how many rows are
affected and up to five of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..artifacts import sha256_file
from ..configtools import InvalidValue
from ..errors import DataError

if TYPE_CHECKING:
    from ..cf.base import Cases

SPLITS = ("valid", "test")
REQUIRED = ("user", "item", "score")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_EXAMPLES = 5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # it becomes part of sampled/<name>_<split>.parquet


class ScoreFileError(DataError):
    """An outside score file is unreadable or does not match the stored candidate lists."""


@dataclass(frozen=True)
class ScoreFile:
    name: str   # the method's name on the leaderboard
    path: Path
    entry: str  # as written in evaluate.score_files


# ----------------------------------------------------------------------------- config entries

def parse_entries(entries: list[str], taken: list[str] = ()) -> list[ScoreFile]:
    """'path' or 'name=path' (the name defaults to the file's stem). `taken`: names already on the board."""
    files = []
    for entry in entries:
        name, sep, rest = entry.partition("=")
        if sep and name and not any(c in name for c in "/\\"):
            path = Path(rest)
        else:
            name, path = Path(entry).stem, Path(entry)
        if path.suffix.lower() not in FORMATS:
            raise InvalidValue("score_files", f"entry {entry!r}: a score file must end in .csv or .parquet")
        if not _NAME.match(name):
            raise InvalidValue("score_files", f"entry {entry!r}: the method name {name!r} must be letters, digits "
                                              "and _ . + - (name the row with 'name=path')")
        files.append(ScoreFile(name, path, entry))
    names = [f.name for f in files]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(taken)))
    if clash:
        raise InvalidValue("score_files", f"method name(s) {clash} used twice (or also in evaluate.methods); "
                                          "give each file its own name with 'name=path'")
    return files


def scores_override(cfg, extra: list[str]) -> str:
    """`mmsrarec evaluate --scores F`: a --set override that appends F to evaluate.score_files (JSON is YAML)."""
    return "evaluate.score_files=" + json.dumps([*cfg.evaluate.score_files, *extra])


def check_score_files(cfg) -> None:
    """Before any stage runs: every score file exists, is readable and has the needed columns."""
    for sf in parse_entries(cfg.evaluate.score_files):
        _check_columns(sf, _columns(sf))


def score_file_digests(cfg) -> dict:
    """The evaluate stage's key depends on the score files' content, not only on their names."""
    files = parse_entries(cfg.evaluate.score_files)
    if not files:
        return {}
    for sf in files:
        _exists(sf)
    return {"score_files_sha256": {sf.entry: sha256_file(sf.path) for sf in files}}


def _exists(sf: ScoreFile) -> None:
    if not sf.path.is_file():
        raise ScoreFileError(f"score file not found (evaluate.score_files entry {sf.entry!r}); relative paths are "
                             f"relative to the folder the command runs in ({Path.cwd()})", path=str(sf.path))


def _columns(sf: ScoreFile) -> list[str]:
    _exists(sf)
    try:
        if FORMATS[sf.path.suffix.lower()] == "csv":
            return [c.strip() for c in pd.read_csv(sf.path, nrows=0).columns]
        import pyarrow.parquet as pq
        return list(pq.read_schema(sf.path).names)
    except Exception as exc:  # any reader error: say which file, keep the reader's reason
        raise ScoreFileError(f"cannot read the score file: {exc}", path=str(sf.path)) from None


def _check_columns(sf: ScoreFile, columns: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ScoreFileError(f"missing column(s) {', '.join(missing)}; the file has {columns}", path=str(sf.path),
                             hint="a score file has the columns user, item, score and optionally split (valid/test)")


# ----------------------------------------------------------------------------- reading and matching

def read_score_file(sf: ScoreFile) -> pd.DataFrame:
    """The file's rows as split, user, item (ids as text), score (float, NaN where not a number), raw_score,
    where ('line N' of a CSV, 'index N' of a parquet table)."""
    _check_columns(sf, _columns(sf))
    try:
        if FORMATS[sf.path.suffix.lower()] == "csv":
            frame = pd.read_csv(sf.path, dtype=str, keep_default_na=False)
            frame.columns = [c.strip() for c in frame.columns]
            where = [f"line {i + 2}" for i in range(len(frame))]
        else:
            frame = pd.read_parquet(sf.path)
            where = [f"index {i}" for i in range(len(frame))]
    except Exception as exc:
        raise ScoreFileError(f"cannot read the score file: {exc}", path=str(sf.path)) from None
    return pd.DataFrame({
        "split": frame["split"].astype(str).to_numpy() if "split" in frame else np.full(len(frame), "test"),
        "user": frame["user"].astype(str).to_numpy(), "item": frame["item"].astype(str).to_numpy(),
        "score": pd.to_numeric(frame["score"], errors="coerce").astype(np.float64).to_numpy(),
        "raw_score": frame["score"].astype(str).to_numpy(), "where": where})


def stored_pairs(users: pd.DataFrame, items: pd.DataFrame, cases: dict[str, "Cases"]) -> pd.DataFrame:
    """Every (split, user, item) of the stored candidate lists in original ids, with the case's row and the
    candidate's column in Cases.candidates() (column 0 is the target) and the internal item index."""
    user_ids = users.sort_values("user")["user_id"].astype(str).to_numpy()
    item_ids = np.concatenate([[""], items.sort_values("item")["item_id"].astype(str).to_numpy()])
    frames = []
    for split in SPLITS:
        cand = cases[split].candidates()
        rows, cols = np.indices(cand.shape)
        frames.append(pd.DataFrame({
            "split": split, "user": user_ids[np.repeat(cases[split].users, cand.shape[1])],
            "item": item_ids[cand.ravel()], "case": rows.ravel(), "col": cols.ravel(), "item_index": cand.ravel()}))
    return pd.concat(frames, ignore_index=True)


def match_scores(rows: pd.DataFrame, stored: pd.DataFrame, path: Path) -> dict[str, np.ndarray]:
    """Check `rows` against the stored lists; return {split: [n_cases, 1 + N] scores} for each covered split."""
    key = ["split", "user", "item"]
    problems: list[str] = []

    def problem(mask: np.ndarray, what: str) -> None:
        if mask.any():
            bad = rows[mask].head(MAX_EXAMPLES)
            examples = "; ".join(f"{r.where}: split={r.split!r} user={r.user!r} item={r.item!r} score={r.raw_score!r}"
                                 for r in bad.itertuples())
            problems.append(f"{int(mask.sum())} row(s) {what}, e.g. {examples}")

    split_ok = rows["split"].isin(SPLITS).to_numpy()
    problem(~split_ok, f"have a split other than {' or '.join(map(repr, SPLITS))}")
    problem(rows["score"].isna().to_numpy(), "have a score that is NaN, empty or not a number")
    problem(np.isinf(rows["score"].to_numpy()), "have an infinite score")
    problem(split_ok & rows.duplicated(key, keep=False).to_numpy(), "repeat a (split, user, item) pair")
    known_user = rows.set_index(["split", "user"]).index.isin(stored.set_index(["split", "user"]).index)
    problem(split_ok & ~known_user, "name a user who has no case in that split (not in the stored candidate lists)")
    in_lists = rows.set_index(key).index.isin(stored.set_index(key).index)
    problem(split_ok & known_user & ~in_lists, "name an item that is not in that user's stored candidate list")

    covered = ["test"] + [s for s in SPLITS if s != "test" and (rows["split"] == s).any()]
    wanted = stored[stored["split"].isin(covered)]
    missing = ~wanted.set_index(key).index.isin(rows.set_index(key).index)
    if missing.any():
        # in item order, not the stored order (target first), so the examples do not reveal the target
        shown = wanted[missing].sort_values(["split", "case", "item_index"], kind="stable")
        examples = "; ".join(f"split={r.split!r} user={r.user!r} item={r.item!r}"
                             for r in shown.head(MAX_EXAMPLES).itertuples())
        problems.append(f"{int(missing.sum())} (split, user, item) pair(s) of the stored candidate lists have no "
                        f"score, e.g. {examples}")
    if problems:
        raise ScoreFileError(
            f"{len(problems)} problem(s) in this score file ({len(rows)} rows):\n  - " + "\n  - ".join(problems),
            path=str(path), hint="score every (user, item) pair of the split's lists in candidates.csv from "
                                 "`mmsrarec export-candidates` exactly once, and nothing else")
    merged = wanted.merge(rows[key + ["score"]], on=key, how="left", validate="one_to_one")
    out = {}
    for split, part in merged.groupby("split", sort=False):
        matrix = np.empty((int(part["case"].max()) + 1, int(part["col"].max()) + 1), dtype=np.float64)
        matrix[part["case"].to_numpy(), part["col"].to_numpy()] = part["score"].to_numpy()
        out[str(split)] = matrix
    return out


# ----------------------------------------------------------------------------- the evaluate stage's input

def outside_scores(ctx, data: dict, cases: dict[str, "Cases"]) -> dict[str, dict[str, dict]]:
    """Every evaluate.score_files entry, checked against the stored lists (all of them before any is
    written), written as sampled per-case files into the evaluate stage's folder. Returns
    {name: {"sampled": facts}} as a scoring stage's methods.json holds them (evaluate/casefiles.py)."""
    from .casefiles import write_scored_lists

    files = parse_entries(ctx.cfg.evaluate.score_files)
    if not files:
        return {}
    stored = stored_pairs(data["users"], data["items"], cases)
    matrices = {sf.name: match_scores(read_score_file(sf), stored, sf.path) for sf in files}  # all checked first
    out = {}
    for sf in files:
        facts = {"score_file": str(sf.path), "score_file_sha256": sha256_file(sf.path), "splits": []}
        for split, c in cases.items():
            scores = matrices[sf.name].get(split)
            if scores is None:
                facts[f"{split}_cases"] = 0  # the file has no rows of this split (valid is optional)
                continue
            write_scored_lists(ctx.out, sf.name, split, c.users, c.candidates(), scores)
            facts["splits"].append(split)
        ctx.log(f"{sf.name}: {', '.join(facts['splits'])} scores read from {sf.path}")
        out[sf.name] = {"sampled": facts}
    return out
