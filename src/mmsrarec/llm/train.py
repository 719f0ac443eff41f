"""LoRA SFT of a Yes/No ranker (both LLM methods): TRL SFTTrainer + a PEFT LoRA adapter, loss on the answer
tokens only. What it trains is an SFTJob: the model, its LoRA and the SFT settings (rank.* or mllm_msr.*).

sft.loss says how the answer tokens are averaged: 'token' is TRL's loss (every answer token of an
optimizer step weighs the same); 'example' averages each example's tokens first, so a long aux answer (the
next item's keywords, a title) weighs no more than a one-token Yes/No (AnswerLossSFTTrainer).

sft.pack: the examples of one training case (the positive, its negatives and any aux example of
the same case) train as one row, their shared prompt prefix once and each example's own tokens as a block
that attends to the prefix and itself (llm/packing.py); the losses and gradients are the unpacked ones.
sft.batch_size still counts examples: a batch holds the rows of about that many.

Checkpoints go to <out>/checkpoints every `sft.save_steps` optimizer steps; a rerun resumes from the
last complete one (trainer_state.json is written last), except one saved at the last step (last_checkpoint),
and ends with the adapter and log an uninterrupted run writes (tests/test_faults.py). At the end the adapter is saved to
<out>/adapter and the loss per step to <out>/train_log.csv. Under `accelerate launch` every process
trains (DDP, FSDP2 or DeepSpeed) and the main process writes those files.
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import distributed
from ..models.config import ModelConfig
from .config import LoraSettings, SFTSettings
from .prompts import answer_token_ids, assistant, render, tokenizer_of



@dataclass
class SFTJob:
    """What train_ranker reads: the (M)LLM, its LoRA and the SFT settings. A RankConfig has all three."""

    model: ModelConfig
    lora: LoraSettings
    sft: SFTSettings


CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
LOG = "train_log.csv"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_checkpoint(folder: Path, max_steps: int = -1) -> Path | None:
    """The newest checkpoint-N under `folder` that was written completely and that training can go on
    from, or None (start over).

    One saved at the end of training (its global_step reached max_steps, the run's total; when that is not
    given (<= 0), the total in the checkpoint's trainer_state.json) is passed over: the run was killed after
    it, before the stage finished, and transformers (5.25) checks max_steps only after a step, so a resume
    from it trains a step too many whenever the total is not a whole number of epochs. Resuming from the
    one before it (or from the start) redoes the last steps exactly. TRL's trainers name theirs the same."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if _CHECKPOINT.match(p.name) and (p / "trainer_state.json").is_file()]
    for path in sorted(done, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):  # written in place: a kill can leave it half written
            continue
        total = max_steps if max_steps > 0 else state.get("max_steps", 0)
        if not total or state.get("global_step", 0) < total:
            return path
    return None


def example_lengths(dataset, processor: Any) -> list[int]:
    """Text tokens of each example (prompt + answer through the chat template; image tokens not counted)."""
    tokenizer = tokenizer_of(processor)
    texts = [render(processor, list(p) + assistant(c[0]["content"]), generation_prompt=False)
             for p, c in zip(dataset["prompt"], dataset["completion"])]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _answer_nll(logits, labels):
    """(the NLL at every position, zero where labels is -100; the mask of the labelled positions)."""
    import torch.nn.functional as F

    mask = labels != -100
    return F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none") * mask, mask


def example_nll_sum(logits, labels, segments=None):
    """(sum over examples of each example's mean negative log-likelihood over its answer tokens, number of
    examples with an answer). logits[b, j] predicts labels[b, j] (already shifted); -100 marks a position
    without a label; an example is a row, or with `segments` (packed rows, llm/packing.py; aligned with
    labels) a (row, segment) pair. An example without any label is left out (a batch without any gives a
    zero that still has a graph)."""
    import torch

    nll, mask = _answer_nll(logits, labels)
    if segments is None:
        counts, sums = mask.sum(1), nll.sum(1)
    else:  # one bucket per (row, segment)
        width = int(segments.max()) + 2
        bucket = (torch.arange(len(labels), device=labels.device)[:, None] * width + segments + 1)[mask]
        counts = torch.zeros(len(labels) * width, device=labels.device).index_add_(0, bucket, torch.ones_like(nll[mask]))
        sums = torch.zeros(len(labels) * width, device=labels.device, dtype=nll.dtype).index_add_(0, bucket, nll[mask])
    has = counts > 0
    if not has.any():
        return logits.sum() * 0.0, 0
    return (sums[has] / counts[has]).sum(), int(has.sum())


def example_mean_nll(logits, labels, segments=None):
    """rank.sft.loss='example' on one batch: the mean over its examples of each example's mean answer NLL."""
    total, n = example_nll_sum(logits, labels, segments)
    return total / max(n, 1)


def token_nll_sum(logits, labels):
    """(sum of the NLL of every answer token, number of answer tokens): rank.sft.loss='token'."""
    nll, mask = _answer_nll(logits, labels)
    return nll.sum(), int(mask.sum())


def answered_examples(batches: list[dict]) -> int:
    """Examples with at least one answer token (a label after the shift) in these collated batches: rows,
    or (row, segment) pairs of packed rows."""
    import torch

    total = 0
    for b in batches:
        on = b["labels"][:, 1:] != -100
        if "segments" in b:  # distinct (row, segment) pairs among the answer positions
            segments = b["segments"][:, 1:]
            width = int(segments.max()) + 2
            rows = torch.arange(len(on), device=on.device)[:, None].expand_as(on)
            total += int(torch.unique((rows * width + segments + 1)[on]).numel())
        else:
            total += int(on.any(1).sum())
    return total


def answer_tokens(batches: list[dict]) -> int:
    """Answer tokens (labels after the shift) in these collated batches."""
    return sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)


def answer_logits(model, inputs: dict, keep_only_answers: bool = True):
    """(logits, labels, segments) at the positions whose next token has a label in some row of the batch
    (an answer is a few tokens at the end of a long prompt, so the LM head runs on those alone through
    `logits_to_keep`; keep_only_answers=False: every position). segments: the packed rows' segment ids
    aligned with labels, None for unpacked rows."""
    labels = inputs["labels"][:, 1:]
    segments = inputs["segments"][:, 1:] if "segments" in inputs else None
    forward = {k: v for k, v in inputs.items() if k not in ("labels", "segments", "images_per_row")}
    if keep_only_answers:
        keep = (labels != -100).any(0).nonzero().squeeze(1)
        logits = model(**forward, use_cache=False, logits_to_keep=keep).logits
        return logits, labels[:, keep], None if segments is None else segments[:, keep]
    return model(**forward, use_cache=False).logits[:, :-1], labels, segments


def _keeps_logits(model) -> bool:
    """Whether the (unwrapped, PEFT-free) model's forward takes `logits_to_keep`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def trainer_class(loss: str, packed: bool = False):
    """The SFT trainer: AnswerLossSFTTrainer (below), for loss 'token' or 'example', packed or not."""
    import transformers
    from trl import SFTTrainer

    if not hasattr(transformers.Trainer, "loss_is_scaled_for_ga"):
        raise ValueError(f"the ranker's SFT needs a transformers whose Trainer has loss_is_scaled_for_ga (5.24 has "
                         f"it; this is {transformers.__version__}): upgrade it")

    class AnswerLossSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer computing the loss on the answer positions only: the output head runs on them
        alone (logits_to_keep), not on every position of a prompt hundreds of tokens long as TRL's loss
        does; the loss is the same. An optimizer step's loss is
        the step's answer NLL over all of its micro-batches (gradient accumulation) and, under DDP, every
        process, divided by what it is averaged over: its answer tokens (loss 'token': TRL's loss) or, with
        each example's tokens averaged first, its examples (loss 'example'). get_batch_samples counts
        those where the Trainer counts tokens, and each micro-batch adds its sum over that count, so a
        short last micro-batch weighs its examples no more than the others.

        packed: after TRL has tokenized the examples, the rows of one training case become one packed row
        (llm/packing.py) with a block attention mask, the default path for text LMs (sft.pack)."""

        loss_is_scaled_for_ga = True  # divided by the step's count, not by the accumulation steps

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.keeps_logits = _keeps_logits(self.model)  # once, not per micro-batch
            if packed:
                from .packing import GroupedExamples, PackedCollator, PackedVisionCollator, pack_dataset

                pad = tokenizer_of(self.processing_class).pad_token_id
                if "input_ids" in self.train_dataset.column_names:  # text: TRL tokenized the examples
                    self.train_dataset = pack_dataset(self.train_dataset)
                    self.data_collator = PackedCollator(pad)
                else:  # vision: TRL's collator processes them, batch by batch
                    self.train_dataset = GroupedExamples(self.train_dataset)
                    self.data_collator = PackedVisionCollator(self.data_collator, pad)
                self.attention = (self.model.config.get_text_config()._attn_implementation, self.model.dtype)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            import torch

            batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
            count = answered_examples(batches) if loss == "example" else answer_tokens(batches)
            count = torch.tensor([count], device=device)
            if self._across_processes():
                count = self.accelerator.gather(count)
            return batches, count.sum()

        def _across_processes(self) -> bool:
            return self.args.average_tokens_across_devices and self.accelerator.num_processes > 1

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "segments" in inputs:  # packed rows: the block mask, built on the model's device
                from .packing import block_mask, model_mask, vision_positions

                inputs = {**inputs, "attention_mask": model_mask(block_mask(inputs["segments"]), *self.attention)}
                if "images_per_row" in inputs:  # VLM rows: positions (mrope) need the model
                    inputs["position_ids"] = vision_positions(self.model, inputs)
            logits, labels, segments = answer_logits(model, inputs, self.keeps_logits)
            total, n = example_nll_sum(logits, labels, segments) if loss == "example" else token_nll_sum(logits, labels)
            if num_items_in_batch is None:  # not a training step (get_batch_samples gives every one a count)
                loss_value = total / max(n, 1)
            else:  # DDP averages the processes' gradients: undo that for a mean over all their examples
                loss_value = total / num_items_in_batch.clamp(min=1) * (self.accelerator.num_processes
                                                                        if self._across_processes() else 1)
            return (loss_value, {"logits": logits}) if return_outputs else loss_value

    return AnswerLossSFTTrainer


def lora_targets(model, lora: LoraSettings, is_vlm: bool) -> str | list[str]:
    """peft.LoraConfig's target_modules: lora.modules(), or with lora.exclude_vision on a VLM the full names
    of the language model's linear layers among them (PEFT's 'all-linear' also takes the vision tower's and
    the projector's, and a short name such as q_proj or gate_proj matches inside the vision tower too)."""
    import torch

    modules = lora.modules()
    if not (lora.exclude_vision and is_vlm):
        return modules
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((name for name, module in model.named_modules() if module is decoder and name), None)
    if prefix is None:
        raise ValueError(f"lora.exclude_vision (rank.lora or mllm_msr.lora): no language model found inside "
                         f"{type(model).__name__} (get_decoder); set exclude_vision: false and name the modules "
                         "in lora.target_modules")
    names = [name for name, module in model.named_modules()
             if name.startswith(prefix + ".") and isinstance(module, torch.nn.Linear)
             and (modules == "all-linear" or name.rsplit(".", 1)[-1] in modules)]
    if not names:
        raise ValueError(f"lora.target_modules={lora.target_modules!r} (rank.lora or mllm_msr.lora) names no linear "
                         f"layer of the language model ({prefix}), the only one lora.exclude_vision allows; name "
                         "some of its layers, e.g. q_proj,v_proj, or use all-linear")
    return names


def train_ranker(examples, cfg: SFTJob, out: Path, seed: int, log: Callable[[str], None] = print,
                 callbacks: list | None = None) -> dict:
    """Fine-tune cfg.model with LoRA on `examples` (tasks.build_examples); returns facts for the manifest.
    `callbacks`: extra transformers TrainerCallbacks (tests use one to stop a run as a kill would)."""
    from peft import LoraConfig
    from trl import SFTConfig

    from .score import load_model

    out = Path(out)
    model, processor, is_vlm = load_model(cfg.model)
    yes_id, no_id = answer_token_ids(processor, is_vlm)  # fails before training if the template cannot rank
    lengths = example_lengths(examples, processor)
    keep = [i for i, n in enumerate(lengths) if n <= cfg.sft.max_seq_len]
    dropped = len(lengths) - len(keep)
    if dropped:
        log(f"dropped {dropped} of {len(lengths)} examples longer than sft.max_seq_len={cfg.sft.max_seq_len} "
            f"tokens (longest {max(lengths)}); raise it or lower rank.history_len to keep them")
        examples = examples.select(keep)
    if not len(examples):
        raise ValueError(f"no SFT example fits in sft.max_seq_len={cfg.sft.max_seq_len} tokens")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    sft = cfg.sft
    from .packing import case_keys, packs, rows_per_batch

    packed = sft.pack and packs(model, is_vlm)  # llm/packing.py
    batch_size = sft.batch_size
    if packed:  # sft.batch_size counts examples; a packed row holds a case's
        batch_size = rows_per_batch(sft.batch_size, case_keys(examples))
    args = SFTConfig(
        output_dir=str(out / CHECKPOINTS), seed=seed, data_seed=seed, use_cpu=device.type == "cpu",
        num_train_epochs=sft.epochs, max_steps=sft.max_steps, learning_rate=sft.lr, warmup_steps=sft.warmup_ratio,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=sft.grad_accum,
        activation_checkpointing=sft.activation_checkpointing, bf16=device.type == "cuda" and str(dtype) == "torch.bfloat16",
        fp16=False, completion_only_loss=True, max_length=None if is_vlm else sft.max_seq_len,
        save_strategy="steps", save_steps=sft.save_steps, save_total_limit=2, logging_steps=1, report_to="none",
        dataloader_num_workers=0, disable_tqdm=True, train_sampling_strategy=sft.sampling,
        remove_unused_columns=not packed,  # a packed row's segment ids (a case's raw VLM examples) reach the collator
    )
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=lora_targets(model, cfg.lora, is_vlm), init_lora_weights=cfg.lora.init_weights(),
                      task_type="CAUSAL_LM")
    trainer = trainer_class(sft.loss, packed)(model=model, args=args, train_dataset=examples,
                                              processing_class=processor, peft_config=lora, callbacks=callbacks)
    resume = last_checkpoint(out / CHECKPOINTS, sft.max_steps)
    rows = len(trainer.train_dataset)  # packed: the cases (a VLM case whose examples cannot share a prefix unpacks)
    packed = packed and rows < len(examples)
    log(f"SFT on {len(examples):,} examples"
        + (f" packed into {rows:,} rows (one per training case), {batch_size} per batch" if packed else "")
        + f", LoRA r={cfg.lora.r}, loss per {sft.loss}, {device.type}"
        + (f"; resuming from {resume.name}" if resume else ""))
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - t0
    trainer.save_model(str(out / ADAPTER))  # every process: FSDP and ZeRO-3 gather the shards, the main one writes
    if distributed.is_main():
        (out / ADAPTER / "training_args.bin").unlink(missing_ok=True)  # a pickle; ranker.json has the facts
        steps = write_log(trainer.state.log_history, out / LOG)
    else:
        steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    distributed.after_training()
    distributed.barrier()
    losses = [s["loss"] for s in steps]
    # every step's loss, restored from the checkpoint after a resume (logging_steps=1); result.training_loss
    # is the mean over the steps of this call only, so a resumed run would report another value
    train_loss = sum(losses) / len(losses) if losses else result.training_loss
    return {"examples": len(examples), "examples_dropped_too_long": dropped, "steps": trainer.state.global_step,
            "resumed_from": resume.name if resume else None, "train_time_s": round(wall, 2),
            "train_loss": round(float(train_loss), 5), "first_loss": losses[0] if losses else None,
            "packed": packed, "rows": rows,
            "last_loss": losses[-1] if losses else None, "loss_per": sft.loss, "yes_token_id": yes_id,
            "no_token_id": no_id}


def write_log(history: list[dict], path: Path) -> list[dict]:
    """The per-step training log (step, epoch, loss, learning rate, grad norm) as CSV."""
    from ..artifacts import write_text

    fields = ["step", "epoch", "loss", "learning_rate", "grad_norm"]
    rows = [{k: entry.get(k) for k in fields} for entry in history if "loss" in entry]
    lines = [",".join(fields)] + [",".join("" if r[k] is None else str(r[k]) for k in fields) for r in rows]
    write_text(path, "\n".join(lines) + "\n")
    return rows


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(fh)]
