"""Ranker SFT speed on the CPU (or a GPU): float32 vs bfloat16 (`rank.model.dtype`), random vs length-grouped
batches (`rank.sft.sampling`), or unpacked vs shared-prefix packed examples (`rank.sft.pack`), one process.

Trains the real ranker (llm/train.py: TRL SFTTrainer + LoRA) on SFT examples for --steps optimizer
steps per setting, one setting after the other, and reports the seconds per step after the first two
(median), the seconds of all steps (for a whole pass over the examples: --steps x --batch x --accum =
--examples, the fair measure for sampling), the tokens the batches held (real and padded) and the
losses. The examples come from a finished run's train-ranker stage (--run, default runs/demo from
`make demo`), or are built from the stages before train-ranker of a config's main run (--config: e.g.
configs/ml100k_gpu.yaml after `--stop-before train-ranker`). The first --examples of a run's file are
used; of the built ones (ordered by task), --examples are drawn at random (seed 0).

    python benchmarks/sft_speed.py                                  # dtype: SmolLM2-135M, 8 steps of 4 x 4
    python benchmarks/sft_speed.py --compare sampling --config configs/ml100k_gpu.yaml --examples 192 \\
        --batch 8 --accum 1 --steps 24 --dtype bfloat16 --out benchmarks/results/sft_sampling_cpu
    python benchmarks/sft_speed.py --compare pack --config configs/demo.yaml --neg-per-pos 1 4 8 \\
        --cases-per-step 1 --steps 4 --out benchmarks/results/sft_pack_cpu

--compare pack builds main-task examples only (the aux tasks' shares set to 0) at each --neg-per-pos and
trains --steps optimizer steps of --cases-per-step training cases each way: unpacked, a batch holds their
1 + neg_per_pos examples each as a row; packed, a row per case. It reports the tokens per example (whole
dataset: the tokens of its rows over its examples), the seconds per example (the median step after the first
two, collation included, over the examples of a step) and both ratios. On a GPU: --device cuda --dtype bfloat16.
CPUs with AVX512-BF16 or AMX run bfloat16 matrix products about twice as fast as float32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

SETTINGS = {"dtype": [{"dtype": "float32"}, {"dtype": "bfloat16"}],
            "sampling": [{"sampling": "random"}, {"sampling": "group_by_length"}],
            "pack": [{"pack": False}, {"pack": True}]}


def time_sft(examples, setting: dict, steps: int, batch: int, accum: int, seed: int, device: str = "cpu") -> dict:
    import transformers

    from mmsrarec.rank.config import RankConfig
    from mmsrarec.llm.train import train_ranker

    cfg = RankConfig()
    cfg.model.dtype, cfg.model.device = setting["dtype"], device
    cfg.sft.sampling = setting["sampling"]
    cfg.sft.pack = setting.get("pack", cfg.sft.pack)
    cfg.sft.batch_size, cfg.sft.grad_accum, cfg.sft.max_steps, cfg.sft.save_steps = batch, accum, steps, 10**6
    label = f"{setting['dtype']}, {setting['sampling']}, {'packed' if cfg.sft.pack else 'unpacked'}"
    times: list[float] = []
    tokens: list[tuple[int, int]] = []  # (real, padded) per optimizer step; real: 2-D masks only
    dataset = {}  # what the trainer trains on: its rows' tokens and examples

    class StepTimer(transformers.TrainerCallback):
        """A step's time runs from the end of the one before (the start of training for the first), so it
        holds the collation of its batches, which the Trainer does before on_step_begin."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            tokens.append((0, 0))

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now
            print(f"{label} step {len(times)}/{steps}: {times[-1]:.1f} s, {tokens[-1][1]} tokens with padding",
                  flush=True)

    def count(module, args, kwargs):  # every forward of the training model: the batch's tokens
        mask = kwargs.get("attention_mask")
        if mask is not None and tokens and module.training:
            real, padded = tokens[-1]
            # a packed batch's 4-D mask does not count its tokens: its real tokens are the dataset's (below)
            real = real + int(mask.sum()) if mask.ndim == 2 and real is not None else None
            tokens[-1] = (real, padded + kwargs["input_ids"].numel())

    out = Path(tempfile.mkdtemp(prefix="sft-speed-"))
    hooked = []

    class Hook(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
            hooked.append(model.register_forward_pre_hook(count, with_kwargs=True))
            rows = train_dataloader.dataset
            dataset.update(rows=len(rows), rows_per_batch=args.per_device_train_batch_size,
                           tokens=sum(len(ids) for ids in rows["input_ids"]),
                           examples=sum(rows["examples"]) if "examples" in rows.column_names else len(rows))

    trainer = contextlib.nullcontext()
    if setting.get("trainer") == "trl":  # the path before AnswerLossSFTTrainer: TRL's loss over every position
        import trl

        trainer = mock.patch("mmsrarec.llm.train.trainer_class", lambda loss, packed=False: trl.SFTTrainer)
        label += ", TRL's loss"
    try:
        with trainer:
            facts = train_ranker(examples, cfg, out, seed=seed, log=print, callbacks=[Hook(), StepTimer()])
    finally:
        for handle in hooked:
            handle.remove()
        shutil.rmtree(out, ignore_errors=True)
    timed = times[2:] or times
    per_row = dataset["examples"] / dataset["rows"]
    return {**setting, "s_per_step_median": round(statistics.median(timed), 2),
            "rows": dataset["rows"], "examples": dataset["examples"],
            "tokens_per_example": round(dataset["tokens"] / dataset["examples"], 1),
            "examples_per_step": round(dataset["rows_per_batch"] * accum * per_row, 2),
            "s_per_example": round(statistics.median(timed) / (dataset["rows_per_batch"] * accum * per_row), 3),
            "s_all_steps": round(sum(times), 1), "s_per_step_all": [round(t, 2) for t in times],
            "tokens_per_step": [r for r, _ in tokens], "padded_tokens_per_step": [p for _, p in tokens],
            "padding_share": None if any(r is None for r, _ in tokens) else
            round(1 - sum(r for r, _ in tokens) / max(1, sum(p for _, p in tokens)), 3),
            "first_loss": facts["first_loss"], "last_loss": facts["last_loss"]}


def count_tokens(examples, batch: int, seed: int = 0) -> dict:
    """Without training: the tokens that one pass of random and of length-grouped batches of `batch` would
    hold (transformers' own get_length_grouped_indices, whose chunks are min(50, n / (4 batch)) batches)."""
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from mmsrarec.models.loading import embedded_smollm2_dir
    from mmsrarec.llm.train import example_lengths

    lengths = example_lengths(examples, AutoTokenizer.from_pretrained(embedded_smollm2_dir()))
    generator = torch.Generator().manual_seed(seed)
    orders = {"random": torch.randperm(len(lengths), generator=generator).tolist(),
              "group_by_length": get_length_grouped_indices(lengths, batch, generator=generator)}
    out = {"examples": len(lengths), "batch": batch, "real_tokens": sum(lengths)}
    for name, order in orders.items():
        padded = sum(max(lengths[i] for i in order[k:k + batch]) * len(order[k:k + batch])
                     for k in range(0, len(order), batch))
        out[name] = {"padded_tokens": padded, "padding_share": round(1 - sum(lengths) / padded, 3)}
    out["ratio"] = round(out["random"]["padded_tokens"] / out["group_by_length"]["padded_tokens"], 2)
    return out


def load_examples(args, overrides: list[str] = ()):
    from datasets import Dataset

    if args.config:
        from mmsrarec.config import load_config
        from mmsrarec.rank.stage import sft_examples

        cfg = load_config(args.config, ["experiment.seeds=[]", "experiment.variants=[]", *overrides])
        run = Path(cfg.runs_dir) / cfg.name
        examples, _ = sft_examples(SimpleNamespace(cfg=cfg, input=lambda stage: run / stage))
        if overrides:  # --compare pack: every example built is used, whole cases
            return examples
        examples = examples.shuffle(seed=0)
    else:
        source = args.run / "train-ranker" / "examples.jsonl"
        if not source.is_file():
            raise SystemExit(f"{source} is missing: run `make demo` (or pass --run with a finished train-ranker "
                             "stage, or --config with the stages before train-ranker done)")
        rows = [json.loads(line) for line in source.read_text().splitlines()]
        examples = Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})
    return examples.select(range(min(args.examples, len(examples))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", choices=sorted(SETTINGS), default="dtype")
    ap.add_argument("--run", type=Path, default=Path("runs/demo"), help="a run with a finished train-ranker stage")
    ap.add_argument("--config", help="build the examples from this config's main run instead")
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--dtype", default="float32", help="the dtype of a --compare sampling")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--neg-per-pos", type=int, nargs="+", default=[1, 4, 8], help="--compare pack: rank.neg_per_pos values")
    ap.add_argument("--cases-per-step", type=int, default=2, help="--compare pack: training cases per optimizer step")
    ap.add_argument("--trl-at", type=int, nargs="*", default=[1],
                    help="--compare pack: the neg_per_pos values that also time the path before, TRL's own loss")
    ap.add_argument("--count-only", action="store_true",
                    help="train nothing: count the tokens of one pass of random and length-grouped batches of --batch")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sft_dtype_cpu"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare == "pack":
        if not args.config:
            raise SystemExit("--compare pack builds its examples: pass --config (a run with the stages before "
                             "train-ranker done)")
        return compare_pack(args)
    examples = load_examples(args)
    if args.count_only:
        counts = count_tokens(examples, args.batch)
        print(json.dumps(counts, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name(args.out.name + "_tokens.json").write_text(json.dumps(counts, indent=2) + "\n")
        return
    # as these comparisons were measured: unpacked examples
    settings = [{"dtype": args.dtype, "sampling": "random", "pack": False, "trainer": "trl", **s}
                for s in SETTINGS[args.compare]]
    results = [time_sft(examples, s, args.steps, args.batch, args.accum, seed=1) for s in settings]
    key = "s_all_steps" if args.compare == "sampling" else "s_per_step_median"
    speedup = results[0][key] / results[1][key]
    report = {"compare": args.compare, "examples": len(examples), "examples_per_step": args.batch * args.accum,
              "threads": args.threads, "torch": torch.__version__, "speedup": round(speedup, 2),
              "speedup_of": key,
              "results": results, "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Ranker SFT on the CPU: {args.compare} ({args.threads} threads, {args.batch * args.accum} examples "
             f"per step, {len(examples)} examples, SmolLM2-135M + LoRA)", "",
             "| dtype | sampling | s / step (median) | s, all steps | padding | first loss | last loss |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['dtype']} | {r['sampling']} | {r['s_per_step_median']:.2f} | {r['s_all_steps']:.1f} | "
              f"{r['padding_share']:.1%} | {r['first_loss']:.4f} | {r['last_loss']:.4f} |" for r in results]
    lines += ["", f"{settings[1][args.compare]} over {settings[0][args.compare]}: {speedup:.2f}x ({key}); "
              f"load average at the end {report['load_average_1_5_15min']}.", ""]
    args.out.with_name(args.out.name + ".md").write_text("\n".join(lines))
    print("\n".join(lines))


def compare_pack(args) -> None:
    """--compare pack: unpacked vs packed main-task examples at each --neg-per-pos (see the module docstring)."""
    rows, report = [], {"compare": "pack", "threads": args.threads, "device": args.device, "dtype": args.dtype,
                        "torch": torch.__version__, "cases_per_step": args.cases_per_step, "steps": args.steps,
                        "results": []}
    for n in args.neg_per_pos:
        group = 1 + n
        examples = load_examples(args, [f"rank.neg_per_pos={n}", "rank.tasks.aux_choice=0", "rank.tasks.aux_title=0",
                                        "rank.tasks.aux_next_keywords=0",
                                        f"rank.max_examples={args.steps * args.cases_per_step * group}"])
        arms = {"unpacked": {"pack": False}, "packed": {"pack": True}}
        if n in args.trl_at:
            arms = {"trl": {"pack": False, "trainer": "trl"}, **arms}
        # sft.batch_size counts examples either way: packed, a batch holds the rows of that many
        timed = {name: time_sft(examples, {"dtype": args.dtype, "sampling": "random", **arm}, args.steps,
                                args.cases_per_step * group, 1, seed=1, device=args.device)
                 for name, arm in arms.items()}
        unpacked, packed, trl = timed["unpacked"], timed["packed"], timed.get("trl")
        result = {"neg_per_pos": n, "examples": len(examples), **timed,
                  "fewer_tokens": round(unpacked["tokens_per_example"] / packed["tokens_per_example"], 2),
                  "less_time": round(unpacked["s_per_example"] / packed["s_per_example"], 2),
                  "less_time_than_trl_loss": round(trl["s_per_example"] / packed["s_per_example"], 2) if trl else None}
        report["results"].append(result)
        before = f"{trl['s_per_example']:.2f} ({result['less_time_than_trl_loss']:.2f}x)" if trl else "-"
        rows.append(f"| {n} | {len(examples)} | {unpacked['tokens_per_example']:.0f} | {packed['tokens_per_example']:.0f} "
                    f"| {result['fewer_tokens']:.2f}x | {unpacked['s_per_example']:.2f} | {packed['s_per_example']:.2f} "
                    f"| {result['less_time']:.2f}x | {before} |")
        print(rows[-1], flush=True)
    report["load_average_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Ranker SFT, unpacked vs shared-prefix packed (rank.sft.pack): {args.device}, {args.threads} threads, "
             f"{args.dtype}, SmolLM2-135M + LoRA, main-task examples of {args.config}", "",
             f"{args.cases_per_step} training case(s) per optimizer step, {args.steps} steps each way; seconds per "
             "example: the median step after the first two, collation included, over the step's examples. "
             "Unpacked and packed both take the output head at the answer positions only (AnswerLossSFTTrainer); "
             "the last column is the path before it, TRL's SFTTrainer and loss (the head on every position), "
             "unpacked, and its time over the packed one.", "",
             "| neg_per_pos | examples | tokens / example, unpacked | packed | fewer tokens | s / example, unpacked "
             "| packed | less time | s / example, TRL's loss (over packed) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|", *rows, "",
             f"Load average at the end {report['load_average_1_5_15min']}.", ""]
    args.out.with_name(args.out.name + ".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
