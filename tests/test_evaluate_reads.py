"""The evaluate stage only reads: with every other stage done it runs in seconds and imports no model code."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_evaluate_with_everything_scored_loads_no_model(toy_overrides, tmp_path):
    from mmsrarec.models.tiny import tiny_causal_lm

    lm = tiny_causal_lm(tmp_path / "lm")
    over = [*toy_overrides, "cf.models=[pop, sasrec]", "cf.train.epochs=1", "evaluate.methods=[pop, sasrec, mmsrarec]",
            "evaluate.protocols=[sampled, full, rerank]", "evaluate.rerank_top=6", "evaluate.fuse=[sasrec]",
            f"summarize.model.name_or_path={lm}", "summarize.max_new_tokens=6", "rank.keywords_from=summarize",
            f"rank.model.name_or_path={lm}", "rank.zero_shot=true", "rank.score_batch_size=8"]
    runner = Runner(load_config(None, over))
    runner.run("evaluate")
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
