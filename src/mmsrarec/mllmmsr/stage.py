"""MLLM-MSR's generation and training stages (its scoring stage is score_stage.py).

describe-items   -> descriptions.parquet (item, description, with_image, prompt, seconds), summary.json
summarize-users  -> summaries.parquet (one row per generated block chain: chain, summary, level, items,
                    previous, prompt, split, seconds), states.parquet (split, user, key, history, chain,
                    blocks, summary, summary_s), summary.json (generations and seconds per split)
train-mllmmsr    -> adapter/, train_log.csv, examples.jsonl, mllmmsr.json
Both generation stages keep finished batches in chunks/ while they run (resumable; removed at the end).
"""

from __future__ import annotations

import shutil

import pandas as pd

from .. import faults
from ..artifacts import write_json, write_parquet
from ..data.prepare import load_prepared
from ..summarize.store import ChunkStore
from .describe import describe_items as describe
from .describe import read_descriptions
from .generator import ChatGenerator, Generator
from .prompts import block_item_line, catalog
from .users import SPLITS, attach_summaries, summarize_states, user_states


def load_generator(model_cfg) -> Generator:
    """The zero-shot (M)LLM of both generation stages (tests replace this with a fake)."""
    return ChatGenerator(model_cfg)


def describe_items(ctx) -> None:
    cfg = ctx.cfg.mllm_msr
    items = pd.read_parquet(ctx.input_file("prepare", "items.parquet"))
    store = ChunkStore(ctx.out / "chunks")
    generated = describe(items, cfg.items, lambda: load_generator(cfg.model), store, ctx.log)
    table = store.merged()
    write_parquet(ctx.out / "descriptions.parquet", table)
    facts = {"items": len(table), "generations": len(table), "generation_s": round(float(table["seconds"].sum()), 3),
             "generated_this_run": generated, "with_image": int(table["with_image"].sum()),
             "mean_words": round(float(table["description"].str.split().str.len().mean()), 2),
             "empty": int((table["description"] == "").sum())}
    write_json(ctx.out / "summary.json", facts)
    shutil.rmtree(store.folder)
    ctx.summary.update(facts)
    ctx.log(f"{len(table):,} items described, {facts['mean_words']} words on average; e.g. item "
            f"{int(table['item'].iloc[0])}: {table['description'].iloc[0][:120]!r}")


def summarize_users(ctx) -> None:
    cfg, users = ctx.cfg.mllm_msr, ctx.cfg.mllm_msr.users
    data = load_prepared(ctx.input("prepare"))
    lines = catalog(data["items"], read_descriptions(ctx.input("describe-items") / "descriptions.parquet"),
                    users.description_words)
    states = user_states(data, users, ctx.cfg.seed)
    store = ChunkStore(ctx.out / "chunks", key="chain")
    generated = summarize_states(states, block_item_line(lines, users.item_format), users,
                                 lambda: load_generator(cfg.model), store, ctx.log, seed=ctx.cfg.seed)
    chains = store.merged() if store.done() else pd.DataFrame(
        {c: [] for c in ("chain", "summary", "level", "items", "previous", "prompt", "split", "seconds")})
    states = attach_summaries(states, chains)
    write_parquet(ctx.out / "summaries.parquet", chains)
    write_parquet(ctx.out / "states.parquet", states)
    facts = {"generations": len(chains), "generation_s": round(float(chains["seconds"].sum()), 3),
             "generated_this_run": generated}
    for split in SPLITS:
        part, made = states[states["split"] == split], chains[chains["split"] == split]
        facts[split] = {"states": len(part), "mean_blocks": round(float(part["blocks"].mean()), 3) if len(part) else 0,
                        "mean_summary_s": round(float(part["summary_s"].mean()), 4) if len(part) else 0,
                        "generations": len(made), "generation_s": round(float(made["seconds"].sum()), 3)}
    write_json(ctx.out / "summary.json", facts)
    shutil.rmtree(store.folder)
    ctx.summary.update({k: facts[k] for k in ("generations", "generation_s")})
    counts = ", ".join(f"{s} {facts[s]['states']:,}" for s in SPLITS)
    ctx.log(f"{len(states):,} user states ({counts}) from "
            f"{len(chains):,} summary blocks in {facts['generation_s']:.1f} s")


def read_states(folder, split: str) -> pd.DataFrame:
    states = pd.read_parquet(folder / "states.parquet")
    return states[states["split"] == split].sort_values("key").reset_index(drop=True)


def train(ctx) -> None:
    from ..llm.examples import write_examples
    from ..llm.train import CHECKPOINTS, train_ranker
    from .recommend import ranker_config, training_examples

    cfg, seed = ctx.cfg.mllm_msr, ctx.cfg.seed
    data = load_prepared(ctx.input("prepare"))
    items = catalog(data["items"], read_descriptions(ctx.input("describe-items") / "descriptions.parquet"),
                    cfg.candidate_description_words)
    states = read_states(ctx.input("summarize-users"), "train")
    examples = training_examples(states, data["train"], items, cfg, cfg.users.history_items, seed)
    ctx.log(f"SFT examples: {len(examples):,} from {len(states):,} training user states")
    write_examples(examples, ctx.out / "examples.jsonl")
    facts = train_ranker(examples, ranker_config(cfg), ctx.out, seed, log=ctx.log,
                         callbacks=faults.callbacks("train-mllmmsr"))
    faults.step("train-mllmmsr")  # the adapter and log are saved, the checkpoints still there
    shutil.rmtree(ctx.out / CHECKPOINTS, ignore_errors=True)  # the adapter is saved; resuming is over
    info = {**facts, "training_states": len(states), "model": cfg.recommender.name_or_path}
    write_json(ctx.out / "mllmmsr.json", info)
    ctx.summary.update({k: info[k] for k in ("examples", "steps", "train_time_s", "first_loss", "last_loss")})
