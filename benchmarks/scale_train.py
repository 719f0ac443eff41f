"""Training throughput with 1 and 2 processes under `accelerate launch` (configs/accelerate/ddp.yaml),
for the ranker's SFT and the summarizer's GRPO, on CPU (gloo, 1 thread per process).

Each run is one launch of this file in --worker mode, which trains with the project's own trainer
set-up (llm.train.train_ranker; summarize.grpo.make_trainer) on synthetic items and times every
optimizer step; the first step (warm-up) is left out. Per-process batches are fixed, so 2 processes
handle twice the examples per step (data parallel). GRPO uses the length reward only, to time the
trainer rather than the reward models; its examples are sampled completions.

    python benchmarks/scale_train.py                      # tiny model and SmolLM2-135M, 1 and 2 processes
    python benchmarks/scale_train.py --models tiny --procs 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (per-process batch, optimizer steps) per model; GRPO's batch is prompts x 4 completions
SIZES = {"tiny": {"sft": (8, 40), "grpo": (2, 20)}, "smollm2": {"sft": (4, 5), "grpo": (1, 4)}}
GENERATIONS = 4


def synthetic_items(n: int = 60):
    import pandas as pd

    genres = ["comedy", "drama", "thriller", "kids", "puzzle", "racing", "cooking", "travel"]
    return pd.DataFrame({"item": range(1, n + 1), "item_id": [f"i{i}" for i in range(n)],
                         "title": [f"Item {i} of the {genres[i % 8]} shelf" for i in range(1, n + 1)],
                         "text": [f"A {genres[i % 8]} item number {i}, with {genres[(i * 3) % 8]} touches "
                                  f"and a long description for the summarizer." for i in range(1, n + 1)],
                         "image": [""] * n})


class StepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        self.times: list[float] = []
        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                timer.times.append(time.perf_counter())

        self.callback = Callback()


def model_path(model: str, folder: Path) -> str:
    if model == "tiny":
        from mmsrarec.models.tiny import tiny_causal_lm

        return str(tiny_causal_lm(folder / "lm"))
    return "embedded:smollm2"


def train_sft(model: str, batch: int, steps: int, folder: Path, timer: StepTimer) -> int:
    import pandas as pd

    from mmsrarec.models import ModelConfig
    from mmsrarec.rank.config import RankConfig, SFTSettings
    from mmsrarec.rank.prompts import Catalog
    from mmsrarec.rank.tasks import build_examples
    from mmsrarec.llm.train import train_ranker

    items = synthetic_items()
    words = items["text"].str.split().map(lambda w: w[1:4])
    catalog = Catalog.build(items, dict(zip(items["item"], words)), use_keywords=True)
    train = pd.DataFrame({"user": range(40), "items": [[1 + (u + k) % 60 for k in range(8)] for u in range(40)]})
    cfg = RankConfig(model=ModelConfig(name_or_path=model_path(model, folder), device="cpu"), max_examples=400,
                     history_len=5, sft=SFTSettings(batch_size=batch, max_steps=steps, save_steps=10_000,
                                                    warmup_ratio=0.0))
    train_ranker(build_examples({"train": train}, catalog, cfg, seed=0), cfg, folder / "sft", seed=0,
                 log=lambda m: None, callbacks=[timer.callback])
    return batch


def train_grpo(model: str, prompts: int, steps: int, folder: Path, timer: StepTimer) -> int:
    from mmsrarec.models import ModelConfig
    from mmsrarec.summarize.config import SummarizeConfig, SummarizerTrainConfig
    from mmsrarec.summarize.grpo import (ITEM_INDEX, RewardModels, item_texts, make_rewards, make_trainer,
                                         prompt_rows, train_dataset)
    from mmsrarec.summarize.stage import load_policy

    items = synthetic_items()
    scfg = SummarizeConfig(model=ModelConfig(name_or_path=model_path(model, folder), device="cpu"))
    tcfg = SummarizerTrainConfig(information_weight=0, reconstruction_weight=0, length_weight=1,
                                 prompts_per_step=prompts, num_generations=GENERATIONS, max_completion_length=16,
                                 max_steps=steps, save_steps=10_000)
    policy, tokenizer, _ = load_policy(scfg)
    rows = prompt_rows(items.assign(**{ITEM_INDEX: range(len(items))}), scfg, tokenizer, with_images=False)
    rewards = make_rewards(["length_norm"], RewardModels(tcfg, item_texts(items)), scfg.max_keywords)
    make_trainer(policy, tokenizer, train_dataset(rows), rewards, tcfg, folder / "grpo", seed=0,
                 callbacks=[timer.callback]).train()
    return prompts * GENERATIONS


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    timer = StepTimer()
    batch, steps = SIZES[args.model][args.trainer]
    with tempfile.TemporaryDirectory() as tmp:
        per_process = (train_sft if args.trainer == "sft" else train_grpo)(args.model, batch, steps, Path(tmp), timer)
    times = timer.times
    if rank == 0:
        timed = len(times) - 1  # from the end of step 1 to the end of the last step
        examples = timed * per_process * world
        Path(args.out).write_text(json.dumps({
            "trainer": args.trainer, "model": args.model, "processes": world, "steps": len(times),
            "per_process_batch": per_process, "timed_s": round(times[-1] - times[0], 2),
            "examples_per_s": round(examples / (times[-1] - times[0]), 3)}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(trainer: str, model: str, procs: int) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", str(procs), "--main_process_port",
           str(free_port()), __file__, "--worker", "--trainer", trainer, "--model", model, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    result["launch_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def table(rows: list[dict]) -> str:
    lines = ["| trainer | model | processes | per-process batch | timed steps | examples/s | speed-up |",
             "|---|---|---|---|---|---|---|"]
    base = {(r["trainer"], r["model"]): r["examples_per_s"] for r in rows if r["processes"] == 1}
    for r in rows:
        one = base.get((r["trainer"], r["model"]))
        speedup = f"{r['examples_per_s'] / one:.2f}x" if one else ""
        unit = "completions" if r["trainer"] == "grpo" else "examples"
        lines.append(f"| {r['trainer'].upper()} | {r['model']} | {r['processes']} | {r['per_process_batch']} {unit} | "
                     f"{r['steps'] - 1} | {r['examples_per_s']:.2f} | {speedup} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--trainers", default="sft,grpo")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = [launch(t, m, int(p)) for m in args.models.split(",") for t in args.trainers.split(",")
            for p in args.procs.split(",")]
    text = table(rows)
    load = os.getloadavg()
    note = (f"\n\nCPU, {os.cpu_count()} cores, 1 thread per process, load average at the end "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; `python benchmarks/scale_train.py`")
    print(text + note)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale_train.md").write_text(text + note + "\n")
    (RESULTS / "scale_train.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
