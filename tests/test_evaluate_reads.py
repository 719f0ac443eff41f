"""The evaluate stage only reads: with every other stage done it runs in seconds and imports no model code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmsrarec.config import load_config
from mmsrarec.stages import Runner

MODEL_CODE = ("transformers", "peft", "trl", "sentence_transformers", "faiss", "accelerate", "mmsrarec.llm.score", "mmsrarec.llm.train",
              "mmsrarec.rank.stage", "mmsrarec.rank.score_stage", "mmsrarec.index.store", "mmsrarec.cf.stage",
              "mmsrarec.cf.score_stage", "mmsrarec.mllmmsr.score_stage")

PROBE = """
import json, sys
from mmsrarec.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'transformers', 'peft', 'trl', 'sentence_transformers',
                'faiss', 'accelerate'} or m.startswith('mmsrarec.'))
print(json.dumps({'code': code, 'modules': loaded}))
"""


def zero_shot_run(toy_overrides, tmp_path, extra: list[str]):
    """(the evaluated Runner, its overrides): Pop, SASRec, the zero-shot LLM ranker on a tiny LM and its blend with
    SASRec, with the `extra` overrides."""
    from mmsrarec.models.tiny import tiny_causal_lm

    lm = tiny_causal_lm(tmp_path / "lm")
    over = [*toy_overrides, "cf.models=[pop, sasrec]", "cf.train.epochs=1", "evaluate.methods=[pop, sasrec, mmsrarec]",
            "evaluate.fuse=[sasrec]", f"summarize.model.name_or_path={lm}", "summarize.max_new_tokens=6",
            "rank.keywords_from=summarize", f"rank.model.name_or_path={lm}", "rank.zero_shot=true",
            "rank.score_batch_size=8", *extra]
    runner = Runner(load_config(None, over))
    runner.run("evaluate")
    return runner, over


def test_evaluate_with_everything_scored_loads_no_model(toy_overrides, tmp_path):
    runner, over = zero_shot_run(toy_overrides, tmp_path, ["evaluate.protocols=[sampled, full, rerank]",
                                                           "evaluate.rerank_top=6"])
    first = json.loads((runner.run_dir / "evaluate" / "leaderboard.json").read_text())["rows"]

    # a setting only evaluate reads: every other stage stands, evaluate alone runs, in a fresh process
    args = ["evaluate", *(a for o in [*over, "evaluate.report_users=3"] for a in ("--set", o))]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["code"] == 0
    assert done.stderr.count("up to date, skipped") == len(runner.plan("evaluate")) - 1, done.stderr[-2000:]
    assert not [m for m in probe["modules"] if m.startswith(MODEL_CODE)]
    manifest = json.loads((runner.run_dir / "evaluate" / "manifest.json").read_text())
    assert manifest["wall_time_s"] < 20  # seconds, not a model's load and scoring (it reads files)
    again = json.loads((runner.run_dir / "evaluate" / "leaderboard.json").read_text())["rows"]
    assert [(r["method"], r["protocol"], r["test_ndcg@5"]) for r in again] == \
        [(r["method"], r["protocol"], r["test_ndcg@5"]) for r in first]


def test_the_leaderboard_has_the_pooled_auc_and_the_mean_per_case_gauc(toy_overrides, tmp_path):
    """Every sampled row (CF models, the LLM ranker, its blend; an outside score file: test_outside_scores.py) gets
    `auc`, the ROC AUC of all its rows pooled, recomputed from the scores its case files hold, and `gauc`, the mean
    per-case AUC, each with a bootstrap interval and a paired difference to the best CF model; every file shows
    both."""
    import numpy as np
    import pandas as pd

    from mmsrarec.evaluate.casefiles import read_cases, score_matrix
    from mmsrarec.evaluate.metrics import pooled_auc
    runner, _ = zero_shot_run(toy_overrides, tmp_path, ["evaluate.protocols=[sampled, full]", "evaluate.report_users=1"])
    out = runner.run_dir / "evaluate"
    rows = {(r["method"], r["protocol"]): r for r in json.loads((out / "metrics.json").read_text())}
    sampled = [k for k in rows if k[1] == "sampled"]
    assert {m for m, _ in sampled} == {"pop", "sasrec", "mmsrarec", "mmsrarec+sasrec"}
    for method, protocol in sampled:
        row = rows[(method, protocol)]
        for split in ("valid", "test"):
            folder = out if "+" in method else runner.run_dir / ("score-ranker" if method == "mmsrarec" else "score-cf")
            frame = read_cases(folder, method, "sampled", split)
            assert row[f"{split}_auc"] == pytest.approx(pooled_auc(score_matrix(frame)), abs=1e-12)
            per_case = (frame["n"] - frame["greater"] - frame["ties"] + 0.5 * frame["ties"]) / frame["n"]
            assert row[f"{split}_gauc"] == pytest.approx(float(per_case.mean()), abs=1e-12)
        assert row["test_auc_lo"] <= round(row["test_auc"], 4) <= row["test_auc_hi"]
        assert row["test_gauc_lo"] <= round(row["test_gauc"], 4) <= row["test_gauc_hi"]
        if row.get("vs_cf"):  # paired with the best CF model by valid (every row but that model's)
            assert {"test_auc_diff", "test_auc_diff_lo", "test_gauc_diff"} <= set(row), method
            best = rows[(row["vs_cf"], "sampled")]
            assert row["test_auc_diff"] == round(row["test_auc"] - best["test_auc"], 4)
    assert sum(bool(rows[k].get("vs_cf")) for k in sampled) == 3
    assert not any("auc" in k for (m, p), r in rows.items() if p == "full" for k in r)
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"valid_auc", "test_auc", "valid_gauc", "test_gauc", "test_auc_lo", "test_gauc_hi"} <= set(board.columns)
    assert json.loads((out / "leaderboard.json").read_text())["rows"][0].keys() >= {"test_auc", "test_gauc"}
    md = (out / "leaderboard.md").read_text()
    assert "| test auc | test gauc |" in md.replace("test mrr | ", "")
    assert "`auc` is one ROC AUC pooled over all test rows" in md and "as in the papers" in md
    assert "`gauc` is the mean of per-case AUCs" in md and "auc (95%) | gauc (95%)" in md
    page = (out / "report.html").read_text()
    assert "<th>test auc</th><th>test gauc</th>" in page and "mean of per-case AUCs" in page
    assert np.isfinite(board.loc[board.protocol == "sampled", "test_auc"]).all()
    assert board.loc[board.protocol == "full", "test_auc"].isna().all()


def test_the_verdict_is_written_and_printed_by_run_with_the_leaderboards_interval(toy_overrides, tmp_path, capsys):
    from mmsrarec.cli import main

    runner, over = zero_shot_run(toy_overrides, tmp_path, ["evaluate.protocols=[sampled]", "evaluate.report_users=0"])
    out = runner.run_dir / "evaluate"
    verdict = (out / "verdict.md").read_text()
    assert "## mmsrarec, test" in verdict and "sasrec" in verdict
    row = next(r for r in json.loads((out / "metrics.json").read_text())
               if (r["method"], r["protocol"]) == ("mmsrarec", "sampled"))
    line = next(line for line in verdict.splitlines() if line.startswith("- all cases"))
    if row.get("vs_cf") == "sasrec":  # the same comparison as the leaderboard's, with the same interval
        assert (f"): {row['test_ndcg@5_diff']:+.3f} [{row['test_ndcg@5_diff_lo']:+.3f}, "
                f"{row['test_ndcg@5_diff_hi']:+.3f}]") in line.split("; ")[1]
    capsys.readouterr()
    assert main(["run", *(a for o in over for a in ("--set", o)), "--set", "evaluate.protocols=[sampled]",
                 "--set", "evaluate.report_users=0"]) == 0
    assert capsys.readouterr().out == verdict
    # without 5 in evaluate.ks the verdict compares at the smallest cut-off
    assert main(["run", *(a for o in over for a in ("--set", o)), "--set", "evaluate.protocols=[sampled]",
                 "--set", "evaluate.report_users=0", "--set", "evaluate.ks=[10, 20]",
                 "--set", "evaluate.fuse_metric=ndcg@10"]) == 0
    assert "NDCG@10" in capsys.readouterr().out


def test_a_sampled_case_file_without_scores_gets_no_pooled_auc_and_says_why(tmp_path):
    """Every scoring stage writes the scores (casefiles.write_scored_lists); a file with only the counts (written
    some other way) still gets every per-case metric, and NaN, not a number of something else, for `auc`."""
    import math

    from mmsrarec.evaluate.casefiles import write_cases, write_scored_lists
    from mmsrarec.evaluate.stage import method_row

    scores = [[0.2, 0.1, 0.0], [0.9, 0.8, 0.95]]
    write_scored_lists(tmp_path, "scored", "test", [1, 2], [[5, 6, 7], [5, 6, 7]], scores)
    write_cases(tmp_path, "counted", "sampled", "test", [1, 2], [0, 1], [0, 0], [2, 2])
    row, per = method_row("scored", "sampled", tmp_path, {"splits": ["test"]}, [1])
    assert row["test_auc"] == 5 / 8 and row["test_gauc"] == 0.75 and "auc_missing" not in row  # 2 + 3 of 8 pairs
    row, per = method_row("counted", "sampled", tmp_path, {"splits": ["test"]}, [1])
    assert math.isnan(row["test_auc"]) and row["test_gauc"] == 0.75 and "auc" not in per["test"]
    assert "hold no scores" in row["auc_missing"]



def test_a_case_file_with_broken_scores_names_the_file_and_says_to_rescore(tmp_path):
    """A NaN (or a ragged list) in a sampled case file's scores stops the evaluate stage with the file to redo."""
    import re

    import pandas as pd

    from mmsrarec.errors import ArtifactError
    from mmsrarec.evaluate.casefiles import case_path, write_scored_lists
    from mmsrarec.evaluate.stage import method_row

    write_scored_lists(tmp_path, "broken", "test", [1, 2], [[5, 6, 7], [5, 6, 7]], [[0.2, 0.1, 0.0], [0.9, 0.8, 0.95]])
    frame = pd.read_parquet(path := case_path(tmp_path, "broken", "sampled", "test"))
    frame["scores"] = [[0.2, float("nan"), 0.0], [0.9, 0.8, 0.95]]
    frame.to_parquet(path)
    with pytest.raises(ArtifactError, match=rf"{re.escape(str(path))}.*NaN.*rerun it with --force"):
        method_row("broken", "sampled", tmp_path, {"splits": ["test"]}, [1])
