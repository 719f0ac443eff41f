"""Ranker scoring speed: seconds per user to score 1 + 20 candidates, three ways.

  naive          21 separate full forwards with full logits (what plain HF does)
  batched        the 21 full prompts in one right-padded batch, answer-position logits only
  shared_prefix  the user's prefix once, its KV cache shared by the 21 candidate suffixes in one batch

Prompts are the ranker's real main-task prompts (rank/prompts.py): 10 history items with keywords
plus retrieved keywords (~300-token prefix) and keyword candidates (~40-token suffixes), with
synthetic keywords sized to those lengths under the tokenizer in use. Reports medians over --users
users (after a warm-up of every method on --warmup users' first 3 candidates; the order of the
methods rotates from user to user), the speedups, and the largest score difference between them.

    python benchmarks/rank_speed.py                                  # SmolLM2-135M (embedded), CPU, float32
    python benchmarks/rank_speed.py --device cuda --shape qwen2.5-vl-7b   # random weights of Qwen2.5-VL-7B's shape, bf16
    python benchmarks/rank_speed.py --shape tiny                     # tiny Qwen2.5-VL (the code path of the above, on CPU)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmsrarec.rank.prompts import Catalog, RankPrompt, rank_prompt, tokenizer_of
from mmsrarec.llm.score import Scorer, score_batched, score_naive, score_shared_prefix, score_shared_prefix_many

METHODS = {"naive": score_naive, "batched": score_batched, "shared_prefix": score_shared_prefix}
WORDS = ("acoustic adventure animated baby bamboo blanket bottle bright classic comedy compact console cotton "
         "cozy crime diaper documentary drama durable family fantasy foldable gentle horror indie kids kitchen "
         "lightweight musical mystery nursery organic outdoor pastel plush portable puzzle racing retro romance "
         "rpg sci-fi shooter soft sports stealth stroller teether thriller toddler travel vintage war western "
         "wooden").split()

# Qwen2.5-VL-7B-Instruct's language model (config.json of the hub repo); the vision tower is tiny,
# since candidates are keywords and the prefix carries no image here.
QWEN25_VL_7B_TEXT = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                         intermediate_size=18944, vocab_size=152064, max_position_embeddings=128000,
                         rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})


# Qwen2.5-VL's own ids of its vision tokens, used with a real (text) tokenizer that lacks them
QWEN25_VL_VISION_IDS = {"vision_start_token_id": 151652, "vision_end_token_id": 151653,
                        "image_token_id": 151655, "video_token_id": 151656}


def build_model(shape: str, device: str, dtype: torch.dtype, tokenizer_path: str | None = None):
    """(model, tokenizer) on `device`: the embedded SmolLM2, or random weights of a named shape. With
    `tokenizer_path` (a folder holding a Hugging Face tokenizer, e.g. the converted SmolLM2's), prompts
    are tokenized by it instead of the tiny stand-in, whose 1,024-token vocabulary makes prompts ~1.7x
    longer than a real BPE tokenizer would."""
    if shape == "smollm2":
        from mmsrarec.models import ModelConfig, load_causal_lm

        name = str(dtype).removeprefix("torch.")
        return load_causal_lm(ModelConfig(device=device, dtype=name))
    from transformers import AutoConfig, AutoModelForImageTextToText

    from mmsrarec.models.tiny import HEADS, HIDDEN, LAYERS, QWEN_VL_SPECIALS, _qwen_vl_parts, _text_config, tiny_tokenizer

    tokenizer = tiny_tokenizer(QWEN_VL_SPECIALS, "<|vision_start|><|image_pad|><|vision_end|>")
    parts = _qwen_vl_parts(tokenizer)
    tiny_rope = parts.pop("rope")
    if tokenizer_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        parts.update(QWEN25_VL_VISION_IDS)  # text-only prompts: these ids never occur
    text = {**_text_config(tokenizer, "qwen2_5_vl_text"), "rope_parameters": tiny_rope}
    if tokenizer_path:
        text["vocab_size"] = max(len(tokenizer), max(QWEN25_VL_VISION_IDS.values()) + 1)
    vision = dict(depth=LAYERS, num_heads=HEADS, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                  out_hidden_size=HIDDEN, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[LAYERS - 1])
    if shape == "qwen2.5-vl-7b":
        text.update(QWEN25_VL_7B_TEXT)
        vision.update(depth=1, out_hidden_size=QWEN25_VL_7B_TEXT["hidden_size"], fullatt_block_indexes=[0])
    config = AutoConfig.for_model("qwen2_5_vl", text_config=text, vision_config=vision, **parts)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), tokenizer


def synthetic_catalog(tokenizer, n_items: int, candidate_tokens: int, history_keywords: int,
                      rng: np.random.Generator) -> Catalog:
    """Items whose 'title: keywords' line is about `candidate_tokens` tokens under this tokenizer."""
    titles, keywords = {}, {}
    for item in range(1, n_items + 1):
        titles[item] = f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()} {item}"
        kws: list[str] = []
        while len(tokenizer(f"{titles[item]}: {', '.join(kws)}", add_special_tokens=False)["input_ids"]) \
                < candidate_tokens:
            kws.append(" ".join(rng.choice(WORDS, size=int(rng.integers(1, 3)))))
        keywords[item] = kws
    items = pd.DataFrame({"item": list(titles), "title": list(titles.values())})
    return Catalog.build(items, keywords, use_keywords=True, max_keywords=10**6, history_keywords=history_keywords)


def user_prompts(processor, catalog: Catalog, n_users: int, n_candidates: int, history_len: int,
                 prefix_tokens: int, rng: np.random.Generator) -> list[RankPrompt]:
    tok = tokenizer_of(processor)
    n_items = len(catalog.titles)
    prompts = []
    for _ in range(n_users):
        picked = rng.choice(np.arange(1, n_items + 1), size=history_len + n_candidates, replace=False).tolist()
        history, candidates = picked[:history_len], picked[history_len:]
        context: list[str] = []
        while True:  # retrieved keywords until the prefix reaches its length
            prompt = rank_prompt(processor, catalog, history, ", ".join(context), candidates, history_len)
            if len(tok(prompt.prefix, add_special_tokens=False)["input_ids"]) >= prefix_tokens or len(context) > 200:
                break
            context.append(str(rng.choice(WORDS)))
        prompts.append(prompt)
    return prompts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", choices=["smollm2", "tiny", "qwen2.5-vl-7b"], default="smollm2")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=21)
    ap.add_argument("--prefix-tokens", type=int, default=300)
    ap.add_argument("--candidate-tokens", type=int, default=36, help="tokens of a candidate's 'title: keywords' "
                    "line; the end of the user turn and the assistant header add ~5")
    ap.add_argument("--history-keywords", type=int, default=5, help="keywords per history item (rank.history_keywords)")
    ap.add_argument("--batch-size", type=int, default=32, help="candidates per forward (batched, shared_prefix)")
    ap.add_argument("--tokenizer", default=None, help="random-weight shapes: a folder with a real tokenizer for "
                    "realistic prompt lengths (e.g. ~/.cache/mmsrarec/smollm2-135m-instruct); default: tiny stand-in")
    ap.add_argument("--users-per-batch", type=int, default=1, help="> 1: also time shared_prefix over this many "
                    "users at once (score_shared_prefix_many; per-user time = group time / users)")
    ap.add_argument("--profile", type=int, default=0, help="after timing, profile shared_prefix on this many users "
                    "(torch.profiler) and write <out>_profile.txt: where the time goes, kernel launches")
    ap.add_argument("--also-dtype", default=None, help="e.g. bfloat16: also time shared_prefix on a copy of the "
                    "model in this dtype, in the same rotation (its score difference is against the first method's)")
    ap.add_argument("--methods", default="naive,batched,shared_prefix")
    ap.add_argument("--note", default="", help="a sentence about the conditions, written into the report")
    ap.add_argument("--out", type=Path, default=None, help="results stem (default benchmarks/results/rank_speed"
                    "[_<shape>_<device>])")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    methods = args.methods.split(",")

    t0 = time.perf_counter()
    model, tokenizer = build_model(args.shape, args.device, dtype, args.tokenizer)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    catalog = synthetic_catalog(tokenizer, 400, args.candidate_tokens, args.history_keywords, rng)
    prompts = user_prompts(tokenizer, catalog, args.warmup + args.users, args.candidates, 10, args.prefix_tokens, rng)
    scorer = Scorer.from_model(model, tokenizer, is_vlm=False, batch_size=args.batch_size)
    scorers = {m: scorer for m in methods}
    run = dict(METHODS)
    if args.also_dtype:  # the same weights in another dtype, timed in the same rotation
        other = f"shared_prefix_{args.also_dtype}"
        scorers[other] = Scorer.from_model(copy.deepcopy(model).to(getattr(torch, args.also_dtype)), tokenizer,
                                           is_vlm=False, batch_size=args.batch_size)
        run[other] = METHODS["shared_prefix"]
        methods.append(other)
    prefix_len = [len(tokenizer(p.prefix, add_special_tokens=False)["input_ids"]) for p in prompts]
    suffix_len = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) for p in prompts for s in p.suffixes]

    for prompt in prompts[:args.warmup]:  # warm-up: every method on a few candidates
        short = RankPrompt(prompt.prefix, prompt.suffixes[:3])
        for m in methods:
            run[m](scorers[m], short)
    times: dict[str, list[float]] = {m: [] for m in methods}
    scores: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for u, prompt in enumerate(prompts[args.warmup:]):
        for m in methods[u % len(methods):] + methods[:u % len(methods)]:  # rotate the order: load drifts
            sync(args.device)
            start = time.perf_counter()
            out = run[m](scorers[m], prompt)
            sync(args.device)
            times[m].append(time.perf_counter() - start)
            scores[m].append(out)
        print(f"user {u + 1}/{args.users}: " + ", ".join(f"{m} {times[m][-1]:.3f} s" for m in methods), flush=True)

    if args.users_per_batch > 1 and "shared_prefix" in methods:  # several users per forward (score_many)
        timed = prompts[args.warmup:]
        score_shared_prefix_many(scorer, [RankPrompt(p.prefix, p.suffixes[:3]) for p in timed[:2]])  # warm-up
        groups = [timed[i:i + args.users_per_batch] for i in range(0, len(timed), args.users_per_batch)]
        many, got = [], []
        for group in groups:
            sync(args.device)
            start = time.perf_counter()
            got += score_shared_prefix_many(scorer, group)
            sync(args.device)
            many += [(time.perf_counter() - start) / len(group)] * len(group)
        times[f"shared_prefix_x{args.users_per_batch}"] = many
        scores[f"shared_prefix_x{args.users_per_batch}"] = got
        methods = [*methods, f"shared_prefix_x{args.users_per_batch}"]
    medians = {m: statistics.median(v) for m, v in times.items()}
    ref = methods[0]
    diff = {m: float(max(np.abs(a - b).max() for a, b in zip(scores[m], scores[ref]))) for m in methods}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {
        "shape": args.shape, "device": args.device, "device_name": device_name, "dtype": str(dtype).removeprefix("torch."),
        "threads": args.threads, "users": args.users, "warmup_users": args.warmup, "candidates": args.candidates,
        "prefix_tokens_median": statistics.median(prefix_len), "suffix_tokens_median": statistics.median(suffix_len),
        "suffix_tokens_range": [min(suffix_len), max(suffix_len)], "batch_size": args.batch_size,
        "seconds_per_user_median": {m: round(v, 4) for m, v in medians.items()},
        "seconds_per_user_all": {m: [round(x, 4) for x in v] for m, v in times.items()},
        "speedup_vs_naive": {m: round(medians["naive"] / v, 2) for m, v in medians.items()} if "naive" in medians else {},
        "max_abs_score_diff_vs_" + ref: diff, "model_load_s": round(load_s, 2),
        "note": args.note, "torch": torch.__version__, "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
    }
    stem = args.out or Path("benchmarks/results") / (
        "rank_speed" if (args.shape, args.device) == ("smollm2", "cpu") else f"rank_speed_{args.shape}_{args.device}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    if args.profile and "shared_prefix" in methods:
        result["profile"] = profile_shared_prefix(scorer, prompts[args.warmup:args.warmup + args.profile], args.device,
                                                  stem.parent / (stem.name + "_profile.txt"))
    # not with_suffix: a stem such as rank_speed_qwen2.5-vl-7b_cuda has a dot of its own
    stem.parent.joinpath(stem.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.parent.joinpath(stem.name + ".md").write_text(markdown(result))
    print(markdown(result))


def profile_shared_prefix(scorer, prompts: list[RankPrompt], device: str, path: Path) -> dict:
    """torch.profiler over shared-prefix scoring of `prompts`: the ops that take the time (self time on
    the device, or on the CPU without one), and how many kernels were launched per user."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for prompt in prompts:
            score_shared_prefix(scorer, prompt)
        sync(device)
    wall = (time.perf_counter() - start) / max(len(prompts), 1)
    events = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    device_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events) if cuda else 0
    facts = {"users": len(prompts), "wall_s_per_user_profiled": round(wall, 4),
             "kernel_launches_per_user": round(launches / max(len(prompts), 1), 1),
             "device_busy_s_per_user": round(device_us / 1e6 / max(len(prompts), 1), 4)}
    path.write_text(json.dumps(facts, indent=1) + "\n\n" + events.table(sort_by=sort, row_limit=30) + "\n")
    print(f"profile: {facts} -> {path}")
    return facts


def markdown(r: dict) -> str:
    lines = [
        f"# Ranker scoring speed: {r['shape']} on {r['device']} ({r['device_name']}), {r['dtype']}, "
        f"{r['threads']} torch threads",
        "",
        f"{r['candidates']} candidates per user; prefix {r['prefix_tokens_median']:.0f} tokens (median), candidate "
        f"suffix {r['suffix_tokens_median']:.0f} tokens (median; {r['suffix_tokens_range'][0]}-"
        f"{r['suffix_tokens_range'][1]}); median over {r['users']} users (after a warm-up); "
        f"machine load average at the end {r['load_average_1_5_15min']} (1/5/15 min).",
        "",
    ]
    ref, diffs = next((k.removeprefix("max_abs_score_diff_vs_"), v) for k, v in r.items()
                      if k.startswith("max_abs_score_diff"))
    lines += [f"| method | s / user (median) | speedup vs naive | max abs score diff vs {ref} |", "|---|---:|---:|---:|"]
    for m, s in r["seconds_per_user_median"].items():
        speedup = r["speedup_vs_naive"].get(m)
        lines.append(f"| {m} | {s:.4f} | {f'{speedup:.2f}x' if speedup else '–'} | {diffs[m]:.2e} |")
    if r.get("note"):
        lines += ["", r["note"]]
    lines += ["", "naive: one full forward per candidate with full logits; batched: the full prompts in one batch, "
              "logits at the answer positions only; shared_prefix: the prefix once, its KV cache shared by all "
              "candidate suffixes in one batch.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
