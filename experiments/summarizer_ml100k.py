"""GRPO keyword summarizer on MovieLens-100K with the embedded SmolLM2-135M: zero-shot vs tuned on
held-out items, reward curves, and summarization throughput.

    python experiments/summarizer_ml100k.py                     # ~30 min on 2 busy CPU cores
    python experiments/summarizer_ml100k.py --steps 4 --eval-items 16 --throughput-items 16   # smoke

(a) runs the real train-summarizer stage (runs/<name>/train-summarizer) on a seeded subsample of the
    training items (LoRA, GRPO); (b) reads its eval.json: each reward's mean (R_len, R_info, R_recon
    = -log PPL, R_disc) and the combined reward for the zero-shot and the tuned policy on held-out
    items that training never saw; (c) times greedy summarization (items/s) at several batch sizes.
Writes experiments/results/summarizer_ml100k.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mmsrarec.config import load_config  # noqa: E402
from mmsrarec.profiling import package_versions  # noqa: E402
from mmsrarec.stages import Runner  # noqa: E402
from mmsrarec.summarize.generate import chat_prompt, generate  # noqa: E402
from mmsrarec.summarize.grpo import split_items  # noqa: E402
from mmsrarec.summarize.generate import text_prompts  # noqa: E402
from mmsrarec.summarize.stage import load_policy  # noqa: E402

REWARD_LABELS = {"length_norm": "R_len (-|W|/max_keywords)", "length": "R_len (-|W|)",
                 "information": "R_info (cosine)", "reconstruction": "R_recon (-log PPL)",
                 "discriminability": "R_disc (1/rank)"}


def overrides(args: argparse.Namespace) -> list[str]:
    t = {"max_train_items": args.train_items, "max_eval_items": args.eval_items, "max_steps": args.steps,
         "prompts_per_step": args.prompts_per_step, "num_generations": args.num_generations,
         "max_completion_length": args.max_completion_length, "learning_rate": args.lr, "beta": args.beta,
         "temperature": args.temperature, "normalize_rewards": str(args.normalize).lower(),
         "save_steps": args.save_steps, "embedder.device": "cpu", "reference.device": "cpu"}
    return [f"name={args.name}", f"runs_dir={args.runs_dir}", f"seed={args.seed}", "summarize.model.device=cpu",
            f"summarize.max_new_tokens={args.max_new_tokens}", f"summarize.batch_size={args.eval_batch_size}",
            *[f"train_summarizer.{k}={v}" for k, v in t.items()], *args.set]


def throughput(cfg, items: pd.DataFrame, batch_sizes: list[int], n_items: int, n_items_b1: int) -> list[dict]:
    """Greedy generation items/s of the zero-shot policy (a merged LoRA adapter costs the same) at each
    batch size; prompts sorted by length as the summarize stage does; one untimed warm-up batch."""
    model, tokenizer, _ = load_policy(cfg.summarize)
    prompts = [chat_prompt(tokenizer, p) for p in text_prompts(cfg.summarize, tokenizer, items)]
    generate(model, tokenizer, prompts[:2], None, cfg.summarize.max_new_tokens)  # warm-up
    out = []
    for bs in batch_sizes:
        n = min(len(prompts), n_items_b1 if bs == 1 else max(n_items, bs))
        todo = sorted(prompts[:n], key=len)
        t0 = time.perf_counter()
        new_tokens = 0
        for start in range(0, n, bs):
            answers = generate(model, tokenizer, todo[start:start + bs], None, cfg.summarize.max_new_tokens)
            new_tokens += sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        wall = time.perf_counter() - t0
        out.append({"batch_size": bs, "items": n, "seconds": round(wall, 2), "items_per_s": round(n / wall, 3),
                    "answer_tokens_per_item": round(new_tokens / n, 1), "load_avg_1m": os.getloadavg()[0]})
        print(f"batch {bs:3d}: {n} items in {wall:.1f} s = {n / wall:.3f} items/s", flush=True)
    return out


def curve_summary(curves: pd.DataFrame, k: int = 5) -> dict:
    cols = [c for c in curves.columns if c not in ("step", "learning_rate")]
    return {"first": curves.head(k)[cols].mean().round(4).to_dict(), "last": curves.tail(k)[cols].mean().round(4).to_dict()}


def markdown(report: dict) -> str:
    ev, a = report["eval"], report["args"]
    zs, tu = ev["zero_shot"], ev["tuned"]
    lines = [
        "# GRPO keyword summarizer on MovieLens-100K (embedded SmolLM2-135M-Instruct, CPU)", "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}, torch threads {a['threads']}; load average (1 min) "
        f"{report['load_avg_start']:.1f} at start, {report['load_avg_end']:.1f} at the end (the 2 cores were shared "
        "with other jobs, so absolute times are pessimistic).  ",
        f"Wall time: train-summarizer stage {report['train_stage_s']:.0f} s (zero-shot eval + GRPO + tuned eval), "
        f"throughput {report['throughput_s']:.0f} s.", "",
        "## Setup and subsampling", "",
        f"- Items: {report['items']:,}; held out by a seeded hash of the item id: {report['held_out_items']:,} "
        f"(never in the GRPO dataset). GRPO trains on a seeded sample of {a['train_items']} of the "
        f"{report['train_pool']:,} training items; evaluation uses the first {ev['held_out_items']} held-out items.",
        f"- GRPO (TRL {report['versions'].get('trl', '?')}): {a['steps']} steps x {a['prompts_per_step']} prompts x "
        f"{a['num_generations']} completions (max {a['max_completion_length']} tokens, temperature {a['temperature']}), "
        f"LoRA r={report['config']['lora_r']} alpha={report['config']['lora_alpha']} on all linear layers, "
        f"lr {a['lr']} ({report['config']['lr_scheduler']}), beta {a['beta']}, "
        f"{'per-reward normalisation (normalize_then_sum)' if a['normalize'] else 'weighted sum then group scaling'}.",
        f"- Reward weights: " + ", ".join(f"{k} {v}" for k, v in ev["weights"].items())
        + f"; R_recon under the frozen SmolLM2 (first {report['config']['reconstruction_max_text_tokens']} tokens "
          "of the item text), R_info/R_disc with all-MiniLM-L6-v2; R_disc ranks the true item among all "
          f"{report['items']:,} items (weight 0: reported, not trained).",
        f"- Evaluation: greedy decoding, max_new_tokens {a['max_new_tokens']}, the summarize stage's prompt "
        "and chat template.", "",
        "## Held-out rewards: zero-shot vs tuned", "",
        "| reward | zero-shot | tuned | gain |", "|---|---:|---:|---:|",
    ]
    for name in zs["rewards"]:
        lines.append(f"| {REWARD_LABELS.get(name, name)} | {zs['rewards'][name]:.4f} | {tu['rewards'][name]:.4f} | "
                     f"{tu['rewards'][name] - zs['rewards'][name]:+.4f} |")
    lines += [f"| **combined** (sum of weight x mean) | **{zs['combined']:.4f}** | **{tu['combined']:.4f}** | "
              f"**{tu['combined'] - zs['combined']:+.4f}** |",
              f"| keywords per item | {zs['mean_keywords']:.2f} | {tu['mean_keywords']:.2f} | |",
              f"| answers with no keyword | {zs['no_keywords']} / {zs['rows']} | {tu['no_keywords']} / {tu['rows']} | |",
              "", "## Training reward curves (batch means; first vs last 5 steps)", "",
              "| column | first 5 | last 5 |", "|---|---:|---:|"]
    cs = report["curves"]
    for col in cs["first"]:
        lines.append(f"| {col} | {cs['first'][col]:.4f} | {cs['last'][col]:.4f} |")
    lines += ["", "Per-step values: `reward_curves.csv` / `reward_curves.png` in the run's train-summarizer folder.", "",
              "## Throughput (greedy, zero-shot policy, text prompts)", "",
              "| batch | items | seconds | items/s | answer tokens/item |", "|---:|---:|---:|---:|---:|"]
    for row in report["throughput"]:
        lines.append(f"| {row['batch_size']} | {row['items']} | {row['seconds']} | {row['items_per_s']} | "
                     f"{row['answer_tokens_per_item']} |")
    best = max(report["throughput"], key=lambda r: r["items_per_s"])
    b1 = next((r for r in report["throughput"] if r["batch_size"] == 1), None)
    lines += ["", f"Batch 1: {b1['items_per_s'] if b1 else 'n/a'} items/s; best: {best['items_per_s']} items/s "
              f"at batch {best['batch_size']}.", "", "## Example answers (held-out)", ""]
    for z, t in zip(zs["examples"], tu["examples"]):
        lines.append(f"- `{z['item_text']}`  \n  zero-shot: {z['keywords']}  \n  tuned: {t['keywords']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="bench-summarizer-ml100k")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--threads", type=int, default=1, help="1 was ~3x faster than 2 on the 2 shared cores")
    ap.add_argument("--train-items", type=int, default=256)
    ap.add_argument("--eval-items", type=int, default=100)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=32, help="summarize.max_new_tokens (eval, throughput)")
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--normalize", action="store_true", help="per-reward normalisation (normalize_then_sum)")
    ap.add_argument("--save-steps", type=int, default=8)
    ap.add_argument("--batch-sizes", default="1,8,16,32,64")
    ap.add_argument("--throughput-items", type=int, default=64, help="items timed per batch size (>1)")
    ap.add_argument("--throughput-items-b1", type=int, default=12, help="items timed at batch 1")
    ap.add_argument("--set", action="append", default=[], help="extra config override KEY=VALUE")
    ap.add_argument("--force", action="store_true", help="redo train-summarizer even if up to date")
    ap.add_argument("--out", default="experiments/results/summarizer_ml100k")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]

    cfg = load_config(None, overrides(args))
    runner = Runner(cfg)
    runner.run("prepare")
    t0 = time.perf_counter()
    manifest = runner.run("train-summarizer", force=args.force)
    train_s = manifest.get("wall_time_s", time.perf_counter() - t0)
    stage = runner.run_dir / "train-summarizer"
    ev = json.loads((stage / "eval.json").read_text())
    curves = pd.read_csv(stage / "reward_curves.csv")

    items = pd.read_parquet(runner.run_dir / "prepare" / "items.parquet")
    train_pool, held = split_items(items, dataclasses.replace(cfg.train_summarizer, max_train_items=0), cfg.seed)
    t1 = time.perf_counter()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    speed = throughput(cfg, held, sizes, args.throughput_items, args.throughput_items_b1)
    report = {
        "command": "python experiments/summarizer_ml100k.py " + " ".join(sys.argv[1:]),
        "args": vars(args), "config": {k: v for k, v in cfg.train_summarizer.__dict__.items()
                                       if not hasattr(v, "__dataclass_fields__")},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "versions": package_versions(), "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
        "items": len(items), "held_out_items": len(held), "train_pool": len(train_pool),
        "train_stage_s": train_s, "throughput_s": time.perf_counter() - t1,
        "eval": ev, "curves": curve_summary(curves), "throughput": speed,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
