"""`mmsrarec export-candidates`: what an outside model needs to join the leaderboard, without leakage.

Writes (default runs/<name>/export/), all with the dataset's original user and item ids:
- candidates.csv (split, user, item): the stored 1 + N lists of every valid and test case, each list in
  item order, so nothing marks the target;
- train.csv (user, item, timestamp): the training interactions only, never a valid or test target;
- histories.csv (split, user, item, timestamp): each case's input history, as the project's own models
  see it when they score the case;
- README.txt and export.json (the prepare stage's digest, counts).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..artifacts import write_json, write_text
from ..cf.base import Cases
from ..data.prepare import load_prepared
from ..errors import ArtifactError
from .outside import SPLITS, stored_pairs

README = """Candidate lists of run {name!r} (prepare outputs {digest:.12}), for scoring a model outside mmsrarec.

ids: the dataset's ORIGINAL user and item ids (prepare's users.parquet user_id, items.parquet item_id).

candidates.csv  split, user, item: every stored 1 + {negatives} candidate list (valid and test cases), each
                list in item order; which item is the held-out target is not marked.
train.csv       user, item, timestamp: the training interactions only; no valid or test target is in it.
histories.csv   split, user, item, timestamp: each case's input history, oldest first, as the project's own
                models see it when they score that case. With split=loo the test history ends with the
                valid target: do not train on test histories if you tune on valid.

Scoring: write user, item, score (higher = more likely; optional split column valid/test, rows without
it are test) for every row of candidates.csv of the splits you score (test at least), then
    mmsrarec evaluate --config CONFIG --scores NAME=FILE.csv
"""


def export_candidates(cfg, out: str | Path | None = None) -> Path:
    """Run prepare if needed, then write the export folder; returns it."""
    from ..errors import ConfigError
    from ..stages import Runner

    if cfg.data.split == "cold":
        raise ConfigError("export-candidates writes each user's training sequence and histories as the leading "
                          "interactions of the user's sequence, and data.split=cold's leave the cold items out of "
                          "them (docs/protocols.md): export a loo or users split, or score the cold lists inside "
                          "mmsrarec")

    runner = Runner(cfg)
    manifest = runner.run("prepare")
    folder = runner.run_dir / "prepare"
    out = Path(out) if out else runner.run_dir / "export"
    data = load_prepared(folder)
    interactions = pd.read_parquet(folder / "interactions.parquet")
    cases = {split: Cases.from_frame(data[split]) for split in SPLITS}
    user_ids = data["users"].set_index("user")["user_id"]
    item_ids = data["items"].set_index("item")["item_id"]

    def original(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(user=frame["user"].map(user_ids).to_numpy(), item=frame["item"].map(item_ids).to_numpy())

    stored = stored_pairs(data["users"], data["items"], cases).sort_values(["split", "case", "item_index"],
                                                                          key=_split_order, kind="stable")
    train = original(leading_interactions(interactions, data["train"], "items", folder))
    histories = pd.concat([original(leading_interactions(interactions, data[s], "history", folder)).assign(split=s)
                           for s in SPLITS], ignore_index=True)
    write_text(out / "candidates.csv", stored[["split", "user", "item"]].to_csv(index=False))
    write_text(out / "train.csv", train[["user", "item", "timestamp"]].to_csv(index=False))
    write_text(out / "histories.csv", histories[["split", "user", "item", "timestamp"]].to_csv(index=False))
    write_text(out / "README.txt", README.format(name=cfg.name, digest=manifest["outputs_digest"],
                                                 negatives=data["stats"]["negatives_per_case"]))
    write_json(out / "export.json", {
        "run": cfg.name, "prepare_outputs_digest": manifest["outputs_digest"], "ids": "original",
        "candidate_rows": len(stored), "train_rows": len(train), "history_rows": len(histories),
        "cases": {s: len(c) for s, c in cases.items()}})
    return out


def _split_order(column: pd.Series) -> pd.Series:
    return column.map({s: i for i, s in enumerate(SPLITS)}) if column.name == "split" else column


def leading_interactions(interactions: pd.DataFrame, table: pd.DataFrame, column: str, folder: Path) -> pd.DataFrame:
    """Each user's first len(table[column]) interactions (with timestamps): the training part of a sequence or a
    case's history, both prefixes of the user's chronological sequence. Checked item by item against `table`."""
    lengths = table.set_index("user")[column].map(len)
    position = interactions.groupby("user").cumcount()
    part = interactions[position < interactions["user"].map(lengths).fillna(0)]
    expected = [item for items in table.sort_values("user")[column] for item in items]
    if part["item"].tolist() != expected:
        raise ArtifactError(f"{folder}: the {column} lists do not match the leading interactions of "
                            "interactions.parquet; rerun `mmsrarec prepare --force`")
    return part.reset_index(drop=True)
