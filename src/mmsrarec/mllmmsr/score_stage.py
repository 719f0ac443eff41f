"""The score-mllmmsr stage: MLLM-MSR on the stored 1 + N lists of evaluate.llm_splits (sampled protocol).

Per user it costs one LLM call per summary block plus one scoring pass (`llm_calls_per_user`); its time
per user is the summary's generation time (its blocks' shares of their batches) plus its scoring time.
Writes per-case files and methods.json (evaluate/casefiles.py); the evaluate stage reads them.
"""

from __future__ import annotations

import time

from ..artifacts import read_json
from ..cf.base import Cases
from ..data.prepare import load_prepared
from ..errors import ArtifactError
from ..evaluate.casefiles import write_methods, write_scored_lists
from ..llm.score import Scorer, load_model
from ..llm.train import ADAPTER
from .describe import read_descriptions
from .prompts import catalog
from .recommend import score_cases
from .stage import read_states


def run(ctx) -> None:
    cfg = ctx.cfg.mllm_msr
    data = load_prepared(ctx.input("prepare"))
    trained, summaries = ctx.input("train-mllmmsr"), ctx.input("summarize-users")
    items = catalog(data["items"], read_descriptions(ctx.input("describe-items") / "descriptions.parquet"),
                    cfg.candidate_description_words)
    model, processor, is_vlm = load_model(cfg.recommender, adapter=str(trained / ADAPTER))
    scorer = Scorer.from_model(model, processor, is_vlm, cfg.scoring.batch_size)
    manifest, info = read_json(trained / "manifest.json"), read_json(trained / "mllmmsr.json")
    generated = read_json(summaries / "summary.json")
    row = {"train_time_s": manifest.get("wall_time_s"), "peak_rss_mb": manifest.get("peak_rss_mb"),
           "epochs": cfg.sft.epochs if cfg.sft.max_steps < 0 else None, "sft_steps": info.get("steps"),
           "summary_generations": generated["generations"], "summary_generation_s": generated["generation_s"],
           "splits": list(ctx.cfg.evaluate.llm_splits)}
    for split in ctx.cfg.evaluate.llm_splits:
        cases = data[split]
        states = read_states(summaries, split)
        if len(states) != len(cases) or states["user"].tolist() != cases["user"].tolist():
            raise ArtifactError(f"summarize-users' {split} states do not match the prepare stage's {split} cases; "
                                "rerun `mmsrarec summarize-users --force`")
        t0 = time.perf_counter()
        scores, seconds = score_cases(scorer, items, cases, states["summary"].tolist(), cfg, log=ctx.log)
        wall = time.perf_counter() - t0
        write_scored_lists(ctx.out, cfg.name, split, cases["user"], Cases.from_frame(cases).candidates(), scores,
                           summary=states["summary"].tolist())
        per_user = states["summary_s"].to_numpy() + seconds
        row[f"{split}_llm_calls_per_user"] = round(float((states["blocks"] + 1).mean()), 3)
        row[f"{split}_summary_s_per_user"] = round(float(states["summary_s"].mean()), 4)
        row[f"{split}_score_s_per_user"] = round(float(seconds.mean()), 4)
        row[f"{split}_s_per_user"] = round(float(per_user.mean()), 4)
        row[f"{split}_eval_time_s"] = round(wall + float(states["summary_s"].sum()), 3)
        ctx.log(f"{cfg.name}: {split} {len(cases)} cases scored in {wall:.1f} s")
    shown = "test" if "test" in ctx.cfg.evaluate.llm_splits else ctx.cfg.evaluate.llm_splits[0]
    row["llm_calls_per_user"] = row[f"{shown}_llm_calls_per_user"]
    write_methods(ctx.out, {cfg.name: {"sampled": row}})
