"""The summarize stages: every item -> keywords, with the zero-shot or the GRPO-tuned policy.

`summarize` runs the configured model as is (the zero-shot policy); `summarize-tuned` runs it with
the LoRA adapter that `train-summarizer` wrote. Text and image are summarized separately, as in
the paper, then merged (text keywords first, duplicates removed, capped). Results go to a
resumable chunk store, then to keywords.parquet with columns item, keywords, text_keywords,
image_keywords, raw_text, raw_image.

Under several processes (torchrun / accelerate launch, or RANK / WORLD_SIZE set by hand), each
summarizes its share of the items (mmsrarec.sharding) into the same chunk store; rank 0 waits until
every item is stored, whoever wrote it, and writes keywords.parquet.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .. import faults
from ..artifacts import write_json, write_parquet
from ..errors import ArtifactError
from ..sharding import Shard, current_shard, wait_until_stored
from .config import SummarizeConfig
from .generate import chat_prompt, generate, text_prompts
from .keywords import parse_keywords
from .store import ChunkStore


def merge_keywords(text_kw: list[str], image_kw: list[str], cap: int) -> list[str]:
    return list(dict.fromkeys([*text_kw, *image_kw]))[:cap]


def load_policy(cfg: SummarizeConfig, adapter: str = "", model_path: str = ""):
    """(model, processor-or-tokenizer, is_vlm) for the summarizer policy, optionally with a LoRA adapter
    or with the weights of a fully fine-tuned copy (`model_path`)."""
    from ..models.loading import load_causal_lm, load_vlm

    model_cfg = cfg.model
    if adapter:
        model_cfg = dataclasses.replace(model_cfg, adapter=adapter)
    if model_path:
        model_cfg = dataclasses.replace(model_cfg, name_or_path=model_path, adapter="")
    if model_cfg.kind == "vlm":
        model, processor = load_vlm(model_cfg)
        return model, processor, True
    model, tokenizer = load_causal_lm(model_cfg)
    return model, tokenizer, False


def summarize_items(items: pd.DataFrame, cfg: SummarizeConfig, store: ChunkStore, adapter: str = "",
                    log=print, model_path: str = "", shard: Shard = Shard()) -> dict:
    """Summarize the items of this process's share (all of them with one process) not yet in
    `store`; returns throughput facts."""
    items = items[shard.owns(items["item"])]
    todo = items[~items["item"].isin(store.done())]
    if todo.empty:
        return {"items_generated": 0}
    if cfg.backend == "vllm":
        from .vllm_backend import load_vllm_policy
        model, processor, is_vlm = load_vllm_policy(cfg, adapter, model_path)
    else:
        model, processor, is_vlm = load_policy(cfg, adapter, model_path)
    tokenizer = processor.tokenizer if is_vlm else processor
    prompts = text_prompts(cfg, tokenizer, todo)
    todo = todo.assign(prompt=prompts, length=[len(p) for p in prompts]).sort_values(["length", "item"])
    with_images = is_vlm and cfg.use_images
    log(f"summarizing {len(todo):,} items ({len(items) - len(todo):,} already done), batch {cfg.batch_size}"
        + (", with images" if with_images else "")
        + (f", rank {shard.rank} of {shard.world}" if shard.world > 1 else ""))
    t0, n = time.perf_counter(), 0
    bar = tqdm(total=len(todo), desc="summarize" + (f" r{shard.rank}" if shard.world > 1 else ""), unit="item")
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo.iloc[start:start + cfg.batch_size]
        templated = [chat_prompt(processor, p) for p in batch["prompt"]]
        raw_text = generate(model, processor, templated, None, cfg.max_new_tokens)
        raw_image = [""] * len(batch)
        if with_images:
            raw_image = image_summaries(model, processor, batch, cfg)
        rows = []
        for item, rt, ri in zip(batch["item"], raw_text, raw_image):
            tk, ik = parse_keywords(rt, cfg.max_keywords), parse_keywords(ri, cfg.max_keywords)
            rows.append({"item": int(item), "keywords": merge_keywords(tk, ik, cfg.max_keywords),
                         "text_keywords": tk, "image_keywords": ik, "raw_text": rt, "raw_image": ri})
        store.append(pd.DataFrame(rows))
        faults.step("summarize")
        n += len(batch)
        bar.update(len(batch))
    bar.close()
    wall = time.perf_counter() - t0
    return {"items_generated": n, "generation_s": round(wall, 2), "items_per_s": round(n / max(wall, 1e-9), 3)}


def image_summaries(model, processor, batch: pd.DataFrame, cfg: SummarizeConfig) -> list[str]:
    """Image keywords for the items of a batch that have a usable image ('' for the others)."""
    from ..data.images import load_image

    out = [""] * len(batch)
    pics = [(i, load_image(path)) for i, path in enumerate(batch["image"]) if path]
    pics = [(i, img) for i, img in pics if img is not None]
    if not pics:
        return out
    prompt = chat_prompt(processor, cfg.image_prompt.format(text="", title="", max_keywords=cfg.max_keywords),
                         with_image=True)
    answers = generate(model, processor, [prompt] * len(pics), [[img] for _, img in pics], cfg.max_new_tokens)
    for (i, _), answer in zip(pics, answers):
        out[i] = answer
    return out


def _items(ctx) -> pd.DataFrame:
    items = pd.read_parquet(ctx.input_file("prepare", "items.parquet"))
    limit = ctx.cfg.summarize.max_items
    return items.head(limit) if limit else items


def _finish(ctx, store: ChunkStore, facts: dict) -> None:
    table = store.merged()
    write_parquet(ctx.out / "keywords.parquet", table)
    lengths = table["keywords"].map(len)
    facts.update({"items": len(table), "mean_keywords": round(float(lengths.mean()), 3),
                  "items_without_keywords": int((lengths == 0).sum())})
    write_json(ctx.out / "summary.json", facts)
    shutil.rmtree(store.folder)  # merged into keywords.parquet
    ctx.summary.update(facts)
    ctx.log(f"{len(table):,} items, {facts['mean_keywords']:.2f} keywords on average; e.g. item "
            f"{int(table['item'].iloc[0])}: {', '.join(table['keywords'].iloc[0])}")


def _summarize_all(ctx, adapter: str = "", model_path: str = "") -> None:
    """This process's share into the chunk store; then, on rank 0, once every item is stored, the table."""
    shard = current_shard()
    items = _items(ctx)
    store = ChunkStore(ctx.out / "chunks", writer=shard.tag)
    facts = summarize_items(items, ctx.cfg.summarize, store, adapter=adapter, log=ctx.log, model_path=model_path,
                            shard=shard)
    if shard.rank != 0:  # rank 0 merges; the pipeline finishes the stage on rank 0 only
        ctx.log(f"rank {shard.rank}: share done ({facts})")
        return
    wait_until_stored(store, items["item"].tolist(), log=ctx.log)
    if shard.world > 1:
        facts.update({"processes": shard.world, "items_per_writer": store.rows_per_writer()})
    _finish(ctx, store, facts)


def run(ctx) -> None:
    """Zero-shot policy."""
    _summarize_all(ctx)


def tuned_policy_path(folder: Path) -> tuple[str, str]:
    """(adapter, model) for the policy train-summarizer wrote in `folder`: its LoRA adapter/, or the
    model/ of a full fine-tuning; exactly one of the two is non-empty."""
    if (folder / "adapter" / "adapter_config.json").is_file():
        return str(folder / "adapter"), ""
    if (folder / "model" / "config.json").is_file():
        return "", str(folder / "model")
    raise ArtifactError(f"{folder} holds neither adapter/ (LoRA) nor model/ (full fine-tuning); "
                        "rerun `mmsrarec train-summarizer --force`")


def run_tuned(ctx) -> None:
    """The policy tuned by train-summarizer (its LoRA adapter, or its fully fine-tuned weights)."""
    adapter, model_path = tuned_policy_path(ctx.input("train-summarizer"))
    _summarize_all(ctx, adapter=adapter, model_path=model_path)
