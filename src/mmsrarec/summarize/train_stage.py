"""The train-summarizer stage: tune the keyword policy with GRPO and compare it with the zero-shot one.

Reads prepare's items.parquet; writes under train-summarizer/:
  split.parquet        every item's role: train (in the GRPO dataset), held_out, or unused (over max_train_items,
                       or in no training interaction)
  eval_zero_shot.json  the starting policy on held-out items (written before training, kept on resume)
  reward_curves.csv/png  each reward's batch mean and the combined reward at every step
  adapter/             the LoRA adapter + tokenizer/processor (model/ instead when lora is false)
  eval.json            zero-shot vs tuned on held-out items: each reward's mean and the combined reward

Resumable: TRL checkpoints go to checkpoints/ every save_steps; a rerun after a kill resumes from
the last one (the curves come back with the trainer state), and a finished adapter is not retrained.

Under `accelerate launch` every process trains (DDP, FSDP2 or DeepSpeed, as the launcher's config
says); the main process alone writes files and scores the held-out items.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from .. import distributed, faults
from ..artifacts import read_json, write_json, write_parquet
from .curves import curves_callback, write_curves
from .generate import item_texts
from .grpo import (ITEM_INDEX, RewardModels, make_rewards, make_trainer, prompt_rows, score_policy,
                   split_items, trained_rewards, train_dataset)
from .stage import load_policy, tuned_policy_path


def _split_table(items: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    role = pd.Series("unused", index=range(len(items)))
    role[train[ITEM_INDEX].to_numpy()] = "train"
    role[test[ITEM_INDEX].to_numpy()] = "held_out"
    return pd.DataFrame({"item": items["item"].to_numpy(), "item_id": items["item_id"].astype(str).to_numpy(),
                         "split": role.to_numpy()})


def _save_policy(trainer: Any, processor: Any, out: Path, lora: bool) -> Path:
    """Save into a temp folder, then rename: a kill never leaves a half-written policy. Every process
    calls this (under FSDP or ZeRO-3, trainer.save_model gathers the sharded weights); the main one writes."""
    final = out / ("adapter" if lora else "model")
    tmp = out / f".{final.name}.tmp"
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if distributed.is_main():
        processor.save_pretrained(tmp)
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle of the TRL arguments; the manifest has them
        tmp.rename(final)
    distributed.barrier()
    return final


def run(ctx) -> None:
    cfg, tcfg, scfg = ctx.cfg, ctx.cfg.train_summarizer, ctx.cfg.summarize
    items = pd.read_parquet(ctx.input("prepare") / "items.parquet").reset_index(drop=True)
    sequences = pd.read_parquet(ctx.input("prepare") / "train.parquet", columns=["items"])["items"]
    in_training = {int(i) for seq in sequences for i in seq}  # never an item seen only in valid or test
    train_items, test_items = split_items(items, tcfg, cfg.seed, trainable=in_training)
    main = distributed.is_main()
    if main:
        write_parquet(ctx.out / "split.parquet", _split_table(items, train_items, test_items))
    weights = trained_rewards(tcfg)
    eval_items = test_items.head(tcfg.max_eval_items)
    names = tcfg.reported_rewards() if len(eval_items) and main else list(weights)
    rewards = make_rewards(names, RewardModels(tcfg, item_texts(items)), scfg.max_keywords)
    fn_names = {rewards[n].__name__: n for n in weights}  # TRL logs a reward by its function's name

    adapter, tuned_model = "", ""
    if (ctx.out / "adapter").is_dir() or (ctx.out / "model").is_dir():
        adapter, tuned_model = tuned_policy_path(ctx.out)
        ctx.log("the tuned policy is already saved; not training again")
        if main:  # a run killed after saving it left its checkpoints
            shutil.rmtree(ctx.out / "checkpoints", ignore_errors=True)
    model, processor, is_vlm = load_policy(scfg, adapter, tuned_model)
    tokenizer = processor.tokenizer if is_vlm else processor
    with_images = is_vlm and scfg.use_images
    eval_rows = prompt_rows(eval_items, scfg, tokenizer, with_images)

    zero_shot_path = ctx.out / "eval_zero_shot.json"
    if main and len(eval_rows) and not zero_shot_path.is_file() and not (adapter or tuned_model):
        ctx.log(f"scoring the zero-shot policy on {len(eval_items)} held-out items ({len(eval_rows)} prompts)")
        write_json(zero_shot_path, score_policy(model, processor, eval_rows, rewards, weights, scfg))

    if not (adapter or tuned_model):
        rows = prompt_rows(train_items, scfg, tokenizer, with_images)
        ctx.log(f"GRPO on {len(train_items):,} training items ({len(rows):,} prompts; {len(test_items):,} items "
                f"held out), rewards {weights}, {tcfg.max_steps or f'{tcfg.epochs} epochs of'} steps")
        checkpoints = ctx.out / "checkpoints"
        trainer = make_trainer(model, processor, train_dataset(rows), {n: rewards[n] for n in weights}, tcfg,
                               checkpoints, cfg.seed,
                               [curves_callback(fn_names, ctx.out), *faults.callbacks("train-summarizer")])
        last = _last_checkpoint(checkpoints, tcfg.max_steps)
        if last:
            ctx.log(f"resuming from {last}")
        trainer.train(resume_from_checkpoint=last)
        if main:
            write_curves(trainer.state.log_history, fn_names, ctx.out)
        _save_policy(trainer, processor, ctx.out, tcfg.lora)
        faults.step("train-summarizer")  # the policy is saved, the checkpoints still there
        if main:
            shutil.rmtree(checkpoints, ignore_errors=True)  # the saved policy and curves replace them
        model = trainer.model
        del trainer
        distributed.after_training()
        if distributed.launched() and main and len(eval_rows):  # FSDP / ZeRO-3 shard trainer.model: reload it
            del model
            model, processor, _ = load_policy(scfg, *tuned_policy_path(ctx.out))

    if not main:
        return

    if len(eval_rows):
        ctx.log(f"scoring the tuned policy on {len(eval_items)} held-out items")
        tuned = score_policy(model, processor, eval_rows, rewards, weights, scfg)
        zero = read_json(zero_shot_path) if zero_shot_path.is_file() else None
        report = {"held_out_items": len(eval_items), "prompts": len(eval_rows), "weights": weights,
                  "zero_shot": zero, "tuned": tuned}
        if zero:
            report["gain"] = {"combined": tuned["combined"] - zero["combined"],
                              **{n: tuned["rewards"][n] - zero["rewards"][n] for n in tuned["rewards"]}}
        write_json(ctx.out / "eval.json", report)
        ctx.summary.update({"tuned_combined": round(tuned["combined"], 4),
                            "zero_shot_combined": round(zero["combined"], 4) if zero else None})
        ctx.log(f"held-out combined reward: zero-shot {zero['combined'] if zero else float('nan'):.4f}, "
                f"tuned {tuned['combined']:.4f}")
    ctx.summary.update({"train_items": len(train_items), "held_out_items": len(test_items)})


def _last_checkpoint(folder: Path, max_steps: int) -> str | None:
    from ..llm.train import last_checkpoint  # passes over one saved at the last step (see there)

    last = last_checkpoint(folder, max_steps)
    return str(last) if last else None
