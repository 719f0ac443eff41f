"""Slices of the held-out cases (evaluate/slices.py): buckets, per-slice metrics, intervals and the per-slice
best CF model, checked against values computed by hand on a tiny dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mmsrarec.configtools import InvalidValue
from mmsrarec.evaluate.casefiles import write_cases, write_scored_lists
from mmsrarec.evaluate.config import EvaluateConfig
from mmsrarec.evaluate.metrics import PooledAUC
from mmsrarec.evaluate.slices import Buckets, case_slices, read_slices, slicings, training_popularity, write_slices
from mmsrarec.evaluate import stage
from mmsrarec.evaluate.stage import add_intervals, add_slices, method_row

USERS = [1, 2, 3, 4, 5]
# item popularity in training: item 2 three times, item 3 six times, item 4 once, item 7 never
TRAIN = pd.DataFrame({"user": [10, 11, 12], "items": [[2, 3, 3], [2, 3, 3, 3], [2, 3, 4]]})
# test: popularity slices (edges [1, 5]) 0: {1}, 1-4: {2, 4}, 5+: {3, 5}; history (edges [3, 4]) 1-2: {1, 3, 5},
# 3: {2}, 4+: {4}
TEST = pd.DataFrame({"user": USERS, "history": [[2], [2, 3, 4], [3, 4], [4, 2, 3, 4], [2]],
                     "target": [7, 2, 3, 4, 3]})
# valid: popularity 0: {3}, 1-4: {2, 4, 5}, 5+: {1}; history 1-2: {1, 2, 3}, 3: {4, 5}, 4+: none
VALID = pd.DataFrame({"user": USERS, "history": [[2], [2, 3], [3], [4, 2, 3], [2, 2, 2]], "target": [3, 4, 7, 2, 2]})
DATA = {"train": TRAIN, "valid": VALID, "test": TEST}
BUCKETS = slicings([1, 5], [3, 4])

# the LLM's test scores (target first, 6 negatives): ranks 2, 7, 1, 5, 2
LLM = np.array([[0.9, 0.95, 0.1, 0.2, 0.3, 0.4, 0.5],
                [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                [0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                [0.6, 0.7, 0.8, 0.9, 0.95, 0.1, 0.2],
                [0.3, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1]])


def ranked(greater: list[int]) -> np.ndarray:
    """Scores of 1 + 6 candidates where `greater[i]` negatives score above case i's target, none tie."""
    return np.array([[0.5] + [0.9] * g + [0.1] * (6 - g) for g in greater])


def scored(folder, method: str, split: str, scores: np.ndarray, users=USERS) -> None:
    write_scored_lists(folder, method, split, users, np.tile(np.arange(7), (len(users), 1)), scores)


@pytest.fixture
def board(tmp_path, monkeypatch):
    """Rows and per-case values of two CF models (sampled and full, valid and test), an LLM ranker (sampled test,
    rerank) and a ranker scored on two test cases only. A slice's best CF model is picked on a single valid case
    here (stage.SLICE_MIN_VALID is 10 in a run: see the last test)."""
    monkeypatch.setattr(stage, "SLICE_MIN_VALID", 1)
    # sampled, valid: cfa's ndcg@5 per case [1, 0, 1, 0, 0] (0.4), cfb's [0, 1, 0, 1, 1] (0.6): cfb is best overall
    scored(tmp_path, "cfa", "valid", ranked([0, 6, 0, 6, 6]))
    scored(tmp_path, "cfb", "valid", ranked([6, 0, 6, 0, 0]))
    scored(tmp_path, "cfa", "test", ranked([0] * 5))
    scored(tmp_path, "cfb", "test", ranked([6] * 5))
    scored(tmp_path, "llm", "test", LLM)
    scored(tmp_path, "short", "test", LLM[:2], users=USERS[:2])
    # full: cfa ranks every valid target first, cfb never: cfa is the full (and rerank) reference everywhere
    for method, split, greater in [("cfa", "valid", [0] * 5), ("cfb", "valid", [50] * 5), ("cfa", "test", [0] * 5),
                                   ("cfb", "test", [3, 3, 3, 30, 30])]:
        write_cases(tmp_path, method, "full", split, USERS, greater, [0] * 5, [99] * 5)
    write_cases(tmp_path, "llm", "rerank", "test", USERS, [0, 19, 2, 19, 10], [0] * 5, [19] * 5)
    rows, per = [], {}
    for method, protocol, splits in [("cfa", "sampled", ["valid", "test"]), ("cfb", "sampled", ["valid", "test"]),
                                     ("llm", "sampled", ["test"]), ("short", "sampled", ["test"]),
                                     ("cfa", "full", ["valid", "test"]), ("cfb", "full", ["valid", "test"]),
                                     ("llm", "rerank", ["test"])]:
        facts = {"splits": splits, **({"rerank_width": 20} if protocol == "rerank" else {})}
        row, per[(method, protocol)] = method_row(method, protocol, tmp_path, facts, [5, 10])
        rows.append(row)
    add_intervals(rows, per, ["cfa", "cfb"], seed=3)
    return rows, per


def record(table: pd.DataFrame, method, protocol, slicing, label, split, metric) -> dict:
    got = table[(table.method == method) & (table.protocol == protocol) & (table.slicing == slicing)
                & (table.slice == label) & (table.split == split) & (table.metric == metric)]
    assert len(got) == 1, (method, protocol, slicing, label, split, metric, len(got))
    return got.iloc[0].to_dict()


def test_bucket_labels_and_edges():
    default = slicings([1, 5, 20, 100], [5, 20, 50])
    assert default["popularity"].labels() == ["0", "1-4", "5-19", "20-99", "100+"]
    assert default["history"].labels() == ["1-4", "5-19", "20-49", "50+"]
    assert list(default["popularity"].assign([0, 1, 4, 5, 19, 20, 99, 100, 5000])) == \
        ["0", "1-4", "1-4", "5-19", "5-19", "20-99", "20-99", "100+", "100+"]  # the top bucket is open
    assert list(default["history"].assign([1, 4, 5, 49, 50, 51])) == ["1-4", "1-4", "5-19", "20-49", "50+", "50+"]
    assert Buckets((3,), 0).labels() == ["0-2", "3+"] and Buckets((2, 3), 1).labels() == ["1", "2", "3+"]
    # a history edge at 1 leaves no first bucket: nothing is shorter than 1
    assert Buckets((1, 5), 1).labels() == ["1-4", "5+"] and list(Buckets((1, 5), 1).assign([1, 5])) == ["1-4", "5+"]
    with pytest.raises(ValueError, match="strictly increasing"):
        Buckets((5, 5))


def test_the_bucket_keys_are_validated():
    assert EvaluateConfig().popularity_buckets == [1, 5, 20, 100] and EvaluateConfig().history_buckets == [5, 20, 50]
    for key, bad in [("popularity_buckets", [5, 5]), ("popularity_buckets", [0, 3]), ("history_buckets", [20, 5]),
                     ("history_buckets", [])]:
        with pytest.raises(InvalidValue, match=key):
            EvaluateConfig(**{key: bad}).validate()


def test_cases_are_sliced_by_training_popularity_and_history_length():
    assert training_popularity(TRAIN).tolist() == [0, 0, 3, 6, 1]
    cases = case_slices(DATA, BUCKETS)
    test = cases["test"]
    assert test["target_popularity"].tolist() == [0, 3, 6, 1, 6]  # item 7 is beyond every training item: 0
    assert test["popularity"].tolist() == ["0", "1-4", "5+", "1-4", "5+"]
    assert test["history_length"].tolist() == [1, 3, 2, 4, 1]
    assert test["history"].tolist() == ["1-2", "3", "1-2", "4+", "1-2"]
    assert cases["valid"]["popularity"].tolist() == ["5+", "1-4", "0", "1-4", "1-4"]
    assert cases["valid"]["history"].tolist() == ["1-2", "1-2", "1-2", "3", "3"]


def test_slice_metrics_intervals_and_the_best_cf_model_per_slice(board):
    rows, per = board
    table = pd.DataFrame(add_slices(rows, per, case_slices(DATA, BUCKETS), ["cfa", "cfb"], seed=3))
    # the LLM on popularity 1-4 (cases 2 and 4: ranks 7 and 5)
    hr = record(table, "llm", "sampled", "popularity", "1-4", "test", "hr@5")
    assert hr["cases"] == 2 and hr["value"] == 0.5
    ndcg = record(table, "llm", "sampled", "popularity", "1-4", "test", "ndcg@5")
    assert ndcg["value"] == pytest.approx((0 + 1 / math.log2(6)) / 2, abs=1e-12)
    assert hr["lo"] == 0.0 and hr["hi"] == 1.0 and ndcg["lo"] == 0.0 and ndcg["hi"] == round(1 / math.log2(6), 4)
    # pooled auc of cases 2 and 4 alone: 0.2 is above 0.1 and ties 0.2 (1.5 pairs), 0.6 is above 0.3, 0.4, 0.5, 0.1,
    # 0.2 and ties 0.6 (5.5 pairs): 7 of 2 x 12 pairs
    assert record(table, "llm", "sampled", "popularity", "1-4", "test", "auc")["value"] == pytest.approx(7 / 24)
    # cases 3 and 5: 0.5 above all 12 negatives, 0.3 above all but 0.4
    assert record(table, "llm", "sampled", "popularity", "5+", "test", "auc")["value"] == pytest.approx(23 / 24)
    assert record(table, "llm", "sampled", "popularity", "5+", "test", "gauc")["value"] == pytest.approx(
        (1 + 5 / 6) / 2)
    assert PooledAUC(LLM).subset([1, 3]).value == pytest.approx(7 / 24)
    # history 1-2: cases 1, 3, 5 (ranks 2, 1, 2)
    got = record(table, "llm", "sampled", "history", "1-2", "test", "ndcg@5")
    assert got["cases"] == 3 and got["value"] == pytest.approx((2 / math.log2(3) + 1) / 3)

    # the best CF model per slice, by valid ndcg@5 on the slice's valid cases (cfb is the best overall)
    def paired(label, slicing="popularity", method="llm", protocol="sampled"):
        r = record(table, method, protocol, slicing, label, "test", "hr@5" if protocol == "sampled" else "hr@10")
        return r["vs_cf"], r["vs_cf_from"]

    assert paired("0") == ("cfa", "slice")  # valid case 3: cfa ranks it first, cfb last
    assert paired("1-4") == ("cfb", "slice")  # valid cases 2, 4, 5
    assert paired("5+") == ("cfa", "slice")  # valid case 1
    assert paired("1-2", "history") == ("cfa", "slice")  # valid cases 1-3: cfa 2 of 3 first
    assert paired("3", "history") == ("cfb", "slice")
    assert paired("4+", "history") == ("cfb", "overall")  # no valid case has 4+ history items: the best overall
    assert {r["vs_cf"] for r in rows if r["protocol"] == "sampled" and isinstance(r.get("vs_cf"), str)} == {"cfb"}
    # paired differences, case by case on the slice: llm - cfb on 1-4 (cfb ranks every test target last)
    diff = record(table, "llm", "sampled", "popularity", "1-4", "test", "hr@5")
    assert diff["diff"] == 0.5 and diff["diff_lo"] == 0.0 and diff["diff_hi"] == 1.0
    # llm - cfa on 5+: both hit, cfa at rank 1
    diff = record(table, "llm", "sampled", "popularity", "5+", "test", "ndcg@5")
    assert diff["diff"] == round((1 + 1 / math.log2(3)) / 2 - 1, 4)
    auc = record(table, "llm", "sampled", "popularity", "5+", "test", "auc")  # cfa's 5+ auc: 24 of 24
    assert auc["diff"] == round(23 / 24 - 1, 4)
    # the reference has no difference to itself; the other CF model has one
    assert pd.isna(record(table, "cfa", "sampled", "popularity", "0", "test", "hr@5")["diff"])
    assert record(table, "cfb", "sampled", "popularity", "0", "test", "hr@5")["diff"] == -1.0
    # rerank pairs with the full protocol's best on the slice (cfa everywhere), on the full protocol's cases
    assert paired("1-4", protocol="rerank") == ("cfa", "slice")
    rr = record(table, "llm", "rerank", "popularity", "1-4", "test", "hr@10")
    assert rr["value"] == 0.0 and rr["diff"] == -1.0  # ranks 20 and 20 after cfa's 1 and 1
    assert record(table, "llm", "rerank", "history", "1-2", "test", "hr@10")["value"] == pytest.approx(2 / 3)
    # a ranker scored on cases 1 and 2 only: its slices hold those, and nothing is paired
    short = table[(table.method == "short") & (table.metric == "hr@5")]
    assert short.set_index(["slicing", "slice"])["cases"].to_dict() == {
        ("popularity", "0"): 1, ("popularity", "1-4"): 1, ("history", "1-2"): 1, ("history", "3"): 1}
    assert short["diff"].isna().all() and short["vs_cf"].isna().all()
    # no valid split, no valid slices; valid records carry the values the CF model was picked on, no interval
    assert not len(table[(table.method == "llm") & (table.split == "valid")])
    valid = record(table, "cfa", "sampled", "history", "1-2", "valid", "ndcg@5")
    assert valid["cases"] == 3 and valid["value"] == pytest.approx(2 / 3) and pd.isna(valid["lo"])
    # draws depend on the seed and the slice only: the same again, and intervals hold their values
    again = pd.DataFrame(add_slices(rows, per, case_slices(DATA, BUCKETS), ["cfa", "cfb"], seed=3))
    pd.testing.assert_frame_equal(table, again)
    test = table[table.split == "test"]
    assert ((test["lo"] <= test["value"].round(4)) & (test["value"].round(4) <= test["hi"])).all()


def test_the_files_the_markdown_the_chart_and_the_report_show_the_slices(board, tmp_path):
    from mmsrarec.evaluate.leaderboard import write_leaderboard
    from mmsrarec.evaluate.report import slices_section

    rows, per = board
    cases = case_slices(DATA, BUCKETS)
    out = tmp_path / "evaluate"
    out.mkdir()
    table = write_slices(add_slices(rows, per, cases, ["cfa", "cfb"], seed=3), out, BUCKETS, cases)
    write_leaderboard(pd.DataFrame(rows), out, "toy", slices=(table, {k: b.labels() for k, b in BUCKETS.items()}))
    csv = pd.read_csv(out / "slices.csv")
    assert list(csv.columns) == ["method", "protocol", "slicing", "slice", "split", "cases", "metric", "value", "lo",
                                 "hi", "vs_cf", "vs_cf_from", "diff", "diff_lo", "diff_hi"]
    assert len(csv) == len(table)
    doc = json.loads((out / "slices.json").read_text())
    assert doc["slicings"]["popularity"] == {"edges": [1, 5], "labels": ["0", "1-4", "5+"],
                                             "what": doc["slicings"]["popularity"]["what"]}
    assert doc["cases"]["test"]["history"] == {"1-2": 3, "3": 1, "4+": 1}
    assert doc["cases"]["valid"]["history"] == {"1-2": 3, "3": 2, "4+": 0}
    assert any(r["diff"] is None for r in doc["rows"])  # strict JSON: null, not NaN
    back, meta = read_slices(out)
    assert len(back) == len(table) and meta["slicings"]["history"]["labels"] == ["1-2", "3", "4+"]
    md = (out / "leaderboard.md").read_text()
    assert "## Slices" in md and "### sampled: test hr@5 by the target's popularity in training" in md
    assert "### rerank: test hr@10 by the case's history length" in md
    assert "| slice | cases | cfa | cfb | llm | short |" in md
    assert "| 1-4 | 2 | 1.0000 [1.0000, 1.0000] | 0.0000 [0.0000, 0.0000] | 0.5000 [0.0000, 1.0000] | " \
           "0.0000 [0.0000, 0.0000] (n=1) |" in md
    assert "| 4+ | cfb* |" in md and "| 1-4 | cfb | " in md and "+0.5000 [+0.0000, +1.0000]" in md
    assert (out / "slices.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    notes: list[str] = []
    page = slices_section(out, notes)
    assert not notes and 'id="slices"' in page and 'data-slicing="popularity"' in page
    assert "<td>0.5000 [0.0000, 1.0000]</td>" in page and "data:image/png;base64," in page
    assert slices_section(tmp_path, notes) == ""  # an evaluate folder of an earlier version: no section


def test_an_evaluate_run_writes_the_slices(toy_overrides):
    """The evaluate stage of a run of Pop: slices of the prepared cases, in every file and in the report."""
    from mmsrarec.config import load_config
    from mmsrarec.data.prepare import load_prepared
    from mmsrarec.stages import Runner

    runner = Runner(load_config(None, [*toy_overrides, "cf.models=[pop]", "evaluate.methods=[pop]",
                                       "evaluate.report_users=0", "evaluate.history_buckets=[9, 10]"]))
    runner.run("evaluate")
    out, data = runner.run_dir / "evaluate", load_prepared(runner.run_dir / "prepare")
    doc = json.loads((out / "slices.json").read_text())
    seen = np.bincount(np.concatenate([np.asarray(s) for s in data["train"]["items"]]))
    popularity = [int(seen[t]) if t < len(seen) else 0 for t in data["test"]["target"]]
    want = pd.Series(slicings([1, 5, 20, 100], [9, 10])["popularity"].assign(popularity)).value_counts()
    assert {k: v for k, v in doc["cases"]["test"]["popularity"].items() if v} == want.to_dict()
    assert sum(doc["cases"]["test"]["history"].values()) == len(data["test"])
    rows = pd.DataFrame(doc["rows"])
    assert set(rows["protocol"]) == {"sampled", "full"} and set(rows["slicing"]) == {"popularity", "history"}
    test = rows[(rows.split == "test") & (rows.metric == "hr@5") & (rows.slicing == "history")]
    assert test["cases"].sum() == len(data["test"])
    md = (out / "leaderboard.md").read_text()
    assert "## Slices" in md and (out / "slices.png").is_file() and (out / "slices.csv").is_file()
    # every row's per-case metrics (evaluate/casefiles.write_case_metrics): their means are the row's
    cases, metrics = pd.read_parquet(out / "cases.parquet"), json.loads((out / "metrics.json").read_text())
    for row in metrics:
        for split in ("valid", "test"):
            part = cases[(cases.method == row["method"]) & (cases.protocol == row["protocol"]) & (cases.split == split)]
            assert len(part) == row[f"{split}_cases"] and part["user"].tolist() == data[split]["user"].tolist()
            key = "hr@5" if row["protocol"] == "sampled" else "ndcg@10"
            assert part[key].mean() == pytest.approx(row[f"{split}_{key}"])
    assert "auc" not in cases  # the pooled auc has no per-case values
    assert 'id="slices"' in (out / "report.html").read_text()


def test_a_slice_with_few_valid_cases_or_a_tie_pairs_with_the_overall_best():
    """On a slice, a CF model needs SLICE_MIN_VALID valid cases to be picked, and a tie for the best (every CF
    model at chance on never-seen targets) picks none: the caller pairs with the overall best."""
    users = np.arange(12)
    better, worse, same = np.ones(12), np.zeros(12), np.full(12, 0.5)
    per = {("cfa", "sampled"): {"valid": {"ndcg@5": better, stage.USERS: users}},
           ("cfb", "sampled"): {"valid": {"ndcg@5": worse, stage.USERS: users}}}

    def rows(n):  # the slice: the first n valid cases
        return lambda model, protocol, users: np.arange(n)

    assert stage.best_cf(per, ["cfa", "cfb"], rows(stage.SLICE_MIN_VALID))["sampled"] == "cfa"
    assert stage.best_cf(per, ["cfa", "cfb"], rows(stage.SLICE_MIN_VALID - 1))["sampled"] is None
    per[("cfa", "sampled")]["valid"]["ndcg@5"] = per[("cfb", "sampled")]["valid"]["ndcg@5"] = same
    assert stage.best_cf(per, ["cfa", "cfb"], rows(12))["sampled"] is None
    assert stage.best_cf(per, ["cfa", "cfb"])["sampled"] == "cfb"  # overall: the tie goes by name, as before
