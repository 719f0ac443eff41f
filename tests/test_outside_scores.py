"""Outside score files on the leaderboard (evaluate.score_files) and `mmsrarec export-candidates`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_atomic
from mmsrarec.cli import main
from mmsrarec.config import load_config
from mmsrarec.errors import ConfigError, DataError
from mmsrarec.evaluate.export import export_candidates
from mmsrarec.evaluate.outside import (ScoreFile, ScoreFileError, check_score_files, match_scores, read_score_file,
                                       stored_pairs)
from mmsrarec.stages import STAGES, Runner

SPLITS = ("valid", "test")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A toy run with Pop evaluated on the sampled protocol, and its export."""
    root = tmp_path_factory.mktemp("outside")
    over = [f"runs_dir={root / 'runs'}", "name=toy", "data.source=atomic", f"data.path={write_atomic(root / 'toy')}",
            "data.name=toy", "data.num_negatives=5", "cf.models=[pop]", "evaluate.methods=[pop]",
            "evaluate.protocols=[sampled]"]
    cfg = load_config(None, over)
    export = export_candidates(cfg)
    Runner(cfg).run("evaluate")
    return {"over": over, "root": root, "run_dir": Runner(cfg).run_dir, "export": export}


def sets(over: list[str]) -> list[str]:
    return [a for o in over for a in ("--set", o)]


def board(run_dir: Path) -> dict:
    rows = json.loads((run_dir / "evaluate" / "leaderboard.json").read_text())["rows"]
    return {(r["method"], r["protocol"]): r for r in rows}


def original_ids(run_dir: Path) -> tuple[dict, dict]:
    prep = run_dir / "prepare"
    users = pd.read_parquet(prep / "users.parquet").set_index("user")["user_id"].to_dict()
    items = pd.read_parquet(prep / "items.parquet").set_index("item")["item_id"].to_dict()
    return users, items


def pop_rows(run_dir: Path, splits=SPLITS) -> pd.DataFrame:
    """Pop's stored per-case scores, one row per (split, user, item) in the dataset's original ids."""
    users, items = original_ids(run_dir)
    frames = []
    for split in splits:
        s = pd.read_parquet(run_dir / "score-cf" / "sampled" / f"pop_{split}.parquet")
        s = s.explode(["candidates", "scores"])
        frames.append(pd.DataFrame({"split": split, "user": s["user"].map(users).to_numpy(),
                                    "item": s["candidates"].astype(int).map(items).to_numpy(),
                                    "score": s["scores"].astype(float).to_numpy()}))
    return pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=0)  # order must not matter


# ----------------------------------------------------------------------------- same lists, same metric code

def test_a_file_with_pops_scores_gets_exactly_pops_metrics(run, tmp_path):
    both = tmp_path / "pop_copy.parquet"
    pop_rows(run["run_dir"]).to_parquet(both, index=False)
    test_only = tmp_path / "pop_test_only.csv"  # no split column: every row is a test row
    pop_rows(run["run_dir"], ["test"]).drop(columns="split").to_csv(test_only, index=False)
    Runner(load_config(None, [*run["over"], f"evaluate.score_files=[{both}, again={test_only}]"])).run("evaluate")
    rows = board(run["run_dir"])
    pop, copy, again = rows[("pop", "sampled")], rows[("pop_copy", "sampled")], rows[("again", "sampled")]
    metrics = [k for k in pop if k.startswith(("test_", "valid_")) and not k.endswith(("_time_s", "_s_per_user"))
               and "_diff" not in k]
    assert len(metrics) > 10 and all(copy[k] == pop[k] for k in metrics)  # exact, ties included (Pop has ties)
    assert copy["test_ndcg@5_lo"] < copy["test_ndcg@5"] < copy["test_ndcg@5_hi"]  # its bootstrap interval
    assert copy["vs_cf"] == "pop" and pd.isna(pop.get("vs_cf"))  # the best (only) CF model is not paired with itself
    # paired with pop case by case: no difference, however the cases are drawn
    assert [copy[f"test_ndcg@5_diff{e}"] for e in ("", "_lo", "_hi")] == [0.0, 0.0, 0.0]
    assert all(again[k] == pop[k] for k in metrics if k.startswith("test_"))
    assert again["valid_cases"] == 0 and pd.isna(again.get("valid_hr@5"))
    mine, pops = run["run_dir"] / "evaluate" / "sampled", run["run_dir"] / "score-cf" / "sampled"
    assert pd.read_parquet(mine / "pop_copy_test.parquet").equals(pd.read_parquet(pops / "pop_test.parquet"))


def test_the_stage_key_follows_the_score_files_content(run, tmp_path):
    path = tmp_path / "mine.csv"
    pop_rows(run["run_dir"], ["test"]).to_csv(path, index=False)
    cfg = load_config(None, [*run["over"], f"evaluate.score_files=[{path}]"])
    section = STAGES["evaluate"].section
    before = json.dumps(section(cfg), default=str)
    path.write_text(path.read_text().replace("test,", "test, ", 1))
    assert json.dumps(section(cfg), default=str) != before
    path.unlink()
    with pytest.raises(ScoreFileError, match="score file not found"):
        check_score_files(cfg)


def test_config_entries_are_checked(run):
    with pytest.raises(ConfigError, match="must end in .csv or .parquet"):
        load_config(None, [*run["over"], "evaluate.score_files=[scores.txt]"])
    with pytest.raises(ConfigError, match=r"\['pop'\] used twice"):
        load_config(None, [*run["over"], "evaluate.score_files=[elsewhere/pop.csv]"])


# ----------------------------------------------------------------------------- validation

def good_rows(run) -> pd.DataFrame:
    candidates = pd.read_csv(run["export"] / "candidates.csv", dtype=str)
    return candidates.assign(score=np.arange(len(candidates), dtype=np.float64))


def unknown_user(f: pd.DataFrame) -> pd.DataFrame:
    extra = f.head(7).assign(user=[f"stranger{i}" for i in range(7)])
    return pd.concat([f, extra])


def unknown_item(f: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([f, f.head(3).assign(item="i9999")])


CASES = {  # mutation of a correct file -> (message fragment, rows affected)
    "missing pairs": (lambda f: f.iloc[7:], "pair(s) of the stored candidate lists have no score", 7),
    "duplicate pairs": (lambda f: pd.concat([f, f.head(2)]), "repeat a (split, user, item) pair", 4),
    "unknown users": (unknown_user, "name a user who has no case in that split", 7),
    "unknown items": (unknown_item, "name an item that is not in that user's stored candidate list", 3),
    "NaN scores": (lambda f: f.assign(score=np.where(np.arange(len(f)) < 6, np.nan, f["score"])),
                   "a score that is NaN, empty or not a number", 6),
    "infinite scores": (lambda f: f.assign(score=np.where(np.arange(len(f)) % 50 == 1, np.inf, f["score"])),
                        "an infinite score", None),
    "wrong split": (lambda f: f.assign(split=np.where(np.arange(len(f)) < 2, "train", f["split"])),
                    "have a split other than 'valid' or 'test'", 2),
}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_named_with_its_count_and_examples(run, tmp_path, case, fmt):
    mutate, fragment, count = CASES[case]
    rows = mutate(good_rows(run))
    count = count if count is not None else int(np.isinf(rows["score"]).sum())
    path = tmp_path / f"bad.{fmt}"
    rows.to_csv(path, index=False) if fmt == "csv" else rows.to_parquet(path, index=False)
    with pytest.raises(ScoreFileError) as info:
        check(run, path)
    message = str(info.value)
    assert isinstance(info.value, DataError) and message.startswith(str(path))
    line = next(x for x in message.splitlines() if fragment in x)
    assert line.strip().startswith(f"- {count} ")
    examples = line.split("e.g. ", 1)[1].split("; ")
    assert len(examples) == min(count, 5)
    if case != "missing pairs":
        assert examples[0].startswith("line " if fmt == "csv" else "index ")


def check(run, path: Path) -> dict:
    from mmsrarec.cf.base import Cases
    from mmsrarec.data.prepare import load_prepared

    data = load_prepared(run["run_dir"] / "prepare")
    stored = stored_pairs(data["users"], data["items"], {s: Cases.from_frame(data[s]) for s in SPLITS})
    return match_scores(read_score_file(ScoreFile("x", path, str(path))), stored, path)


def test_a_correct_file_passes_and_missing_columns_are_named(run, tmp_path):
    path = tmp_path / "ok.csv"
    good_rows(run).to_csv(path, index=False)
    matrices = check(run, path)
    assert set(matrices) == set(SPLITS) and all(np.isfinite(m).all() for m in matrices.values())
    good_rows(run).drop(columns="score").to_csv(path, index=False)
    with pytest.raises(ScoreFileError, match=r"ok.csv: missing column\(s\) score"):
        check(run, path)


def test_the_cli_reports_a_bad_file_before_scoring_anything(run, tmp_path, capsys):
    path = tmp_path / "bad.csv"
    good_rows(run).iloc[3:].to_csv(path, index=False)
    assert main(["evaluate", "--scores", f"bad={path}", *sets(run["over"])]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: 1 problem(s)" in err and "- 3 (split, user, item) pair(s)" in err
    assert "[evaluate] pop" not in err  # nothing scored before the check


# ----------------------------------------------------------------------------- export-candidates

def test_export_round_trip_through_the_cli(run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export-candidates", "--out", str(out), *sets(run["over"])]) == 0
    candidates = pd.read_csv(out / "candidates.csv", dtype=str)
    assert list(candidates.columns) == ["split", "user", "item"]
    assert candidates["user"].str.startswith("u").all() and candidates["item"].str.startswith("i").all()  # original
    assert "ORIGINAL user and item ids" in (out / "README.txt").read_text()
    # an outside model: scores from a hash of the ids (no ties), for both splits
    scored = candidates.assign(score=[(hash((u, i)) % 100003) / 7.0 for u, i in zip(candidates.user, candidates.item)])
    path = tmp_path / "mine.csv"
    scored.to_csv(path, index=False)
    assert main(["evaluate", "--scores", f"mine={path}", *sets(run["over"])]) == 0
    capsys.readouterr()
    row = board(run["run_dir"])[("mine", "sampled")]
    users, items = original_ids(run["run_dir"])
    for split in SPLITS:  # HR@1 by hand: the target scored above all its list
        cases = pd.read_parquet(run["run_dir"] / "prepare" / f"{split}.parquet")
        part = scored[scored["split"] == split].set_index(["user", "item"])["score"]
        hits = [part[(users[u], items[t])] > max(part[(users[u], items[n])] for n in negs)
                for u, t, negs in zip(cases["user"], cases["target"], cases["negatives"])]
        assert row[f"{split}_hr@1"] == pytest.approx(np.mean(hits)) and row[f"{split}_cases"] == len(cases)
    assert "mine" in (run["run_dir"] / "evaluate" / "leaderboard.md").read_text()


def test_candidate_lists_are_the_stored_ones_and_do_not_mark_the_target(run):
    candidates = pd.read_csv(run["export"] / "candidates.csv", dtype=str)
    users, items = original_ids(run["run_dir"])
    item_index = {v: k for k, v in items.items()}
    for split in SPLITS:
        cases = pd.read_parquet(run["run_dir"] / "prepare" / f"{split}.parquet")
        got = candidates[candidates["split"] == split].groupby("user", sort=False)["item"].agg(list)
        firsts = 0
        for u, t, negs in zip(cases["user"], cases["target"], cases["negatives"]):
            listed = got[users[u]]
            assert sorted(listed) == sorted(items[i] for i in [t, *negs])
            assert [item_index[i] for i in listed] == sorted(item_index[i] for i in listed)  # item order
            firsts += listed[0] == items[t]
        assert firsts < len(cases)  # the target is not always first


@pytest.mark.parametrize("split", ["loo", "users"])
def test_exported_training_interactions_hold_no_valid_or_test_target(run, split, tmp_path):
    if split == "loo":
        out, run_dir = run["export"], run["run_dir"]
    else:
        cfg = load_config(None, [*run["over"], "name=toy_users", "data.split=users"])
        out, run_dir = export_candidates(cfg, tmp_path / "export"), Runner(cfg).run_dir
    train = pd.read_csv(out / "train.csv", dtype={"user": str, "item": str})
    assert list(train.columns) == ["user", "item", "timestamp"]
    stats = json.loads((run_dir / "prepare" / "stats.json").read_text())
    assert len(train) == stats["train_interactions"]
    users, items = original_ids(run_dir)
    pairs = set(zip(train["user"], train["item"]))
    for s in SPLITS:
        cases = pd.read_parquet(run_dir / "prepare" / f"{s}.parquet")
        targets = {(users[u], items[t]) for u, t in zip(cases["user"], cases["target"])}
        assert targets and not targets & pairs
    histories = pd.read_csv(out / "histories.csv", dtype={"user": str, "item": str})
    test_cases = pd.read_parquet(run_dir / "prepare" / "test.parquet")
    assert len(histories[histories["split"] == "test"]) == sum(len(h) for h in test_cases["history"])
