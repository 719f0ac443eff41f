"""The whole pipeline on a toy dataset with tiny models: prepare -> train-cf -> summarize -> index ->
train-ranker -> evaluate, with the LLM ranker on the leaderboard beside the CF baselines."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mmsrarec.config import load_config
from mmsrarec.stages import Runner


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from mmsrarec.models.tiny import tiny_causal_lm
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def test_ranker_joins_the_leaderboard_on_the_same_lists(toy_overrides, tiny_lm, capsys):
    over = [*toy_overrides, "cf.models=[pop, sasrec]", "cf.train.epochs=2", "evaluate.methods=[pop, sasrec, mmsrarec]",
            f"summarize.model.name_or_path={tiny_lm}", "summarize.max_new_tokens=6", "rank.keywords_from=summarize",
            f"rank.model.name_or_path={tiny_lm}", "rank.sft.max_steps=2", "rank.max_examples=16",
            "rank.score_batch_size=8"]
    cfg = load_config(None, over)
    runner = Runner(cfg)
    assert runner.plan("evaluate") == ["prepare", "train-cf", "score-cf", "summarize", "index", "train-ranker",
                                       "score-ranker", "evaluate"]
    runner.run("evaluate")
    out = runner.run_dir / "evaluate"
    rows = {(r["method"], r["protocol"]): r for r in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert set(rows) == {("pop", "sampled"), ("pop", "full"), ("sasrec", "sampled"), ("sasrec", "full"),
                         ("mmsrarec", "sampled")}
    llm = rows[("mmsrarec", "sampled")]
    assert 0 <= llm["test_hr@5"] <= 1 and 0 <= llm["test_auc"] <= 1 and llm["test_s_per_user"] > 0
    llm_dir, cf_dir = runner.run_dir / "score-ranker", runner.run_dir / "score-cf"
    ours = pd.read_parquet(llm_dir / "sampled" / "mmsrarec_test.parquet")
    pop = pd.read_parquet(cf_dir / "sampled" / "pop_test.parquet")
    assert ours["candidates"].map(list).tolist() == pop["candidates"].map(list).tolist()  # identical lists
    assert "mmsrarec" in (out / "leaderboard.md").read_text()
    Runner(load_config(None, over)).run("evaluate")
    assert capsys.readouterr().err.count("up to date, skipped") == 8

    # evaluate.fuse: the ranker blended with SASRec, the weight picked on the valid scores alone
    from mmsrarec.evaluate.fusion import fuse, pick_weight
    from mmsrarec.evaluate.casefiles import read_scores
    fused = Runner(load_config(None, [*over, "evaluate.fuse=[sasrec]"]))
    fused.run("evaluate")
    out = fused.run_dir / "evaluate"
    row = next(r for r in json.loads((out / "leaderboard.json").read_text())["rows"] if r["method"] == "mmsrarec+sasrec")
    weight, curve = pick_weight(read_scores(llm_dir, "mmsrarec", "valid")[1], read_scores(cf_dir, "sasrec", "valid")[1])
    assert row["fuse_weight"] == weight and row["valid_ndcg@5"] == pytest.approx(curve[weight])
    frame, scores = read_scores(out, "mmsrarec+sasrec", "test")
    assert frame["user"].tolist() == ours["user"].tolist()
    assert scores == pytest.approx(fuse(read_scores(llm_dir, "mmsrarec", "test")[1],
                                        read_scores(cf_dir, "sasrec", "test")[1], weight))
    assert f"mmsrarec+sasrec (weight {weight:.2f})" in (out / "report.html").read_text()
