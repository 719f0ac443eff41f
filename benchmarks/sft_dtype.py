"""Ranker SFT speed on the CPU in float32 and in bfloat16 (`rank.model.dtype=bfloat16`), one process.

Trains the real ranker (rank/train.py: TRL SFTTrainer + LoRA) on the first --examples SFT examples of a
finished run (default runs/demo, from `make demo`) for --steps optimizer steps in each dtype, one after
the other, and reports the median seconds per step after the first two, the speed-up and the losses.
CPUs with AVX512-BF16 or AMX run bfloat16 matrix products about twice as fast as float32.

    python benchmarks/sft_dtype.py                      # SmolLM2-135M, 2 threads, 8 steps of 4 x 4 examples
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def time_sft(examples, dtype: str, steps: int, batch: int, accum: int, seed: int) -> dict:
    import transformers

    from mmsrarec.rank.config import RankConfig
    from mmsrarec.rank.train import train_ranker

    cfg = RankConfig()
    cfg.model.dtype = dtype
    cfg.sft.batch_size, cfg.sft.grad_accum, cfg.sft.max_steps, cfg.sft.save_steps = batch, accum, steps, 10**6
    times: list[float] = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t)
            print(f"{dtype} step {len(times)}/{steps}: {times[-1]:.1f} s", flush=True)

    out = Path(tempfile.mkdtemp(prefix=f"sft-{dtype}-"))
    try:
        facts = train_ranker(examples, cfg, out, seed=seed, log=print, callbacks=[StepTimer()])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"dtype": dtype, "s_per_step_median": round(statistics.median(times[2:] or times), 2),
            "s_per_step_all": [round(t, 2) for t in times], "first_loss": facts["first_loss"],
            "last_loss": facts["last_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"), help="a run with a finished train-ranker stage")
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sft_dtype_cpu"))
    args = ap.parse_args()
    from datasets import Dataset

    source = args.run / "train-ranker" / "examples.jsonl"
    if not source.is_file():
        raise SystemExit(f"{source} is missing: run `make demo` (or pass --run with a finished train-ranker stage)")
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in source.read_text().splitlines()[:args.examples]]
    examples = Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})
    results = [time_sft(examples, dtype, args.steps, args.batch, args.accum, seed=1) for dtype in ("float32", "bfloat16")]
    speedup = results[0]["s_per_step_median"] / results[1]["s_per_step_median"]
    report = {"examples_per_step": args.batch * args.accum, "threads": args.threads, "torch": torch.__version__,
              "speedup_bfloat16": round(speedup, 2), "results": results,
              "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Ranker SFT on the CPU: float32 vs bfloat16 ({args.threads} threads, {args.batch * args.accum} "
             f"examples per step, SmolLM2-135M + LoRA)", "",
             "| dtype | s / step (median) | first loss | last loss |", "|---|---:|---:|---:|"]
    lines += [f"| {r['dtype']} | {r['s_per_step_median']:.2f} | {r['first_loss']:.4f} | {r['last_loss']:.4f} |"
              for r in results]
    lines += ["", f"bfloat16 speed-up: {speedup:.2f}x; load average at the end {report['load_average_1_5_15min']}.", ""]
    args.out.with_name(args.out.name + ".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
