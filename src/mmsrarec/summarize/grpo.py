"""GRPO training of the keyword policy, in pieces the train-summarizer stage and
experiments/summarizer_ml100k.py share.

- `prompt_rows`: the prompts the summarize stage sends (same template, same truncation, same chat
  format), one text prompt per item plus, for a VLM, one image prompt per item with an image.
- `split_items`: held-out items by a seeded hash of their id; training never sees them.
- `make_rewards`: the reward functions of mmsrarec.reward, built once with their models.
- `trl_config` / `make_trainer`: TRL's GRPOConfig and GRPOTrainer (LoRA through peft_config).
- `score_policy`: greedy summaries of held-out rows and each reward's mean, for zero-shot vs tuned
  (every reward of SummarizerTrainConfig.reported_rewards; the combined reward over the trained ones).

`from trl import ...` costs seconds, so it happens inside the functions that train.
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..reward import REWARDS, RewardFn, embed_items
from .config import SummarizeConfig, SummarizerTrainConfig
from .generate import chat_prompt, generate, item_texts, text_prompts
from .keywords import parse_keywords

ITEM_TEXT = "item_text"  # the column the information and reconstruction rewards read
ITEM_INDEX = "item_index"  # row of the item in items.parquet: the discriminability reward's target


# ----------------------------------------------------------------------------- items and prompts

def held_out(item_ids: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """True for held-out items: sha256(seed, original item id) < fraction. Stable when items are added,
    removed or renumbered, and independent of the item order."""
    def draw(item_id: Any) -> float:
        digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([draw(i) < fraction for i in item_ids], dtype=bool)


def split_items(items: pd.DataFrame, tcfg: SummarizerTrainConfig, seed: int,
                trainable: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training items, held-out items), each with ITEM_INDEX = its row in `items`. max_train_items keeps a
    seeded random subset of the items not held out. trainable: when given, only these items (column `item`)
    of that subset train, e.g. those of training interactions, so that the text of an item seen only in valid
    or test interactions never enters GRPO (filtered after the draw, so the draw does not depend on the split)."""
    items = items.reset_index(drop=True).assign(**{ITEM_INDEX: np.arange(len(items))})
    mask = held_out(items["item_id"], tcfg.held_out_fraction, seed)
    train, test = items[~mask], items[mask]
    if tcfg.max_train_items and len(train) > tcfg.max_train_items:
        train = train.sample(tcfg.max_train_items, random_state=seed).sort_values(ITEM_INDEX)
    if trainable is not None:
        train = train[train["item"].isin(list(trainable))]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def prompt_rows(items: pd.DataFrame, cfg: SummarizeConfig, tokenizer: Any, with_images: bool) -> pd.DataFrame:
    """One row per prompt the summarize stage would send for these items: columns item, item_index,
    kind (text | image), prompt (the user turn, before the chat template), item_text, image (path)."""
    texts = item_texts(items)
    rows = [{"item": int(item), ITEM_INDEX: int(index), "kind": "text", "image": "", "prompt": prompt, ITEM_TEXT: text}
            for item, index, prompt, text in zip(items["item"], items[ITEM_INDEX],
                                                 text_prompts(cfg, tokenizer, items), texts)]
    if with_images and "image" in items:
        image_prompt = cfg.image_prompt.format(text="", title="", max_keywords=cfg.max_keywords)
        for item, index, path, text in zip(items["item"], items[ITEM_INDEX], items["image"], texts):
            if path:
                rows.append({"item": int(item), ITEM_INDEX: int(index), "kind": "image", "image": str(path),
                             "prompt": image_prompt, ITEM_TEXT: text})
    return pd.DataFrame(rows, columns=["item", ITEM_INDEX, "kind", "image", "prompt", ITEM_TEXT])


def train_dataset(rows: pd.DataFrame) -> Any:
    """A datasets.Dataset in TRL's conversational format: `prompt` is one user message; image rows
    carry their picture in the `images` column (TRL inserts it before the text, as the summarize
    stage does). Image rows whose file cannot be read are dropped."""
    from datasets import Dataset

    from ..data.images import load_image

    data = {"prompt": [[{"role": "user", "content": p}] for p in rows["prompt"]],
            ITEM_TEXT: rows[ITEM_TEXT].tolist(), ITEM_INDEX: rows[ITEM_INDEX].tolist(), "item": rows["item"].tolist()}
    if (rows["kind"] == "image").any():
        images = [load_image(p) if kind == "image" else None for kind, p in zip(rows["kind"], rows["image"])]
        keep = [kind == "text" or img is not None for kind, img in zip(rows["kind"], images)]
        data = {k: [v for v, ok in zip(values, keep) if ok] for k, values in data.items()}
        # `images` (a list per row, empty for text rows) rather than `image`: TRL passes a None `image`
        # to the processor, which refuses a batch that mixes text and image rows.
        data["images"] = [[img] if img is not None else [] for img, ok in zip(images, keep) if ok]
    return Dataset.from_dict(data)


# ----------------------------------------------------------------------------- rewards

class RewardModels:
    """The embedder, the reference LM and the item embeddings, each loaded on first use only."""

    def __init__(self, tcfg: SummarizerTrainConfig, all_item_texts: list[str]):
        self.tcfg, self.texts = tcfg, all_item_texts
        self._embedder = self._reference = self._items = None

    def embedder(self) -> Any:
        if self._embedder is None:
            from ..models.loading import load_embedder
            self._embedder = load_embedder(self.tcfg.embedder)
        return self._embedder

    def reference(self) -> tuple[Any, Any]:
        if self._reference is None:
            from ..models.loading import load_causal_lm
            self._reference = load_causal_lm(self.tcfg.reference)
        return self._reference

    def item_embeddings(self) -> torch.Tensor:
        if self._items is None:
            self._items = embed_items(self.embedder(), self.texts, self.tcfg.embedder.batch_size)
        return self._items


def make_rewards(names: list[str], models: RewardModels, max_keywords: int) -> dict[str, RewardFn]:
    """name (a key of mmsrarec.reward.REWARDS) -> TRL reward function, in the order of `names`."""
    tcfg, batch = models.tcfg, models.tcfg.embedder.batch_size

    def reconstruction(name: str) -> RewardFn:  # both forms score under the same reference LM
        return REWARDS[name](*models.reference(), max_keywords=max_keywords,
                             max_text_tokens=tcfg.reconstruction_max_text_tokens, text_column=ITEM_TEXT)

    factories = {
        "length": lambda: REWARDS["length"](max_keywords=max_keywords),
        "length_norm": lambda: REWARDS["length_norm"](max_keywords=max_keywords),
        "information": lambda: REWARDS["information"](models.embedder(), max_keywords=max_keywords,
                                                      batch_size=batch, text_column=ITEM_TEXT),
        "reconstruction": lambda: reconstruction("reconstruction"),
        "reconstruction_ppl": lambda: reconstruction("reconstruction_ppl"),
        "discriminability": lambda: REWARDS["discriminability"](models.embedder(), models.item_embeddings(),
                                                                max_keywords=max_keywords, batch_size=batch,
                                                                index_column=ITEM_INDEX),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise KeyError(f"unknown reward(s) {unknown}; rewards are: {', '.join(factories)}")
    return {name: factories[name]() for name in names}


def trained_rewards(tcfg: SummarizerTrainConfig) -> dict[str, float]:
    """The rewards of the training objective (weight > 0) and their weights."""
    return {name: w for name, w in tcfg.reward_weights().items() if w > 0}


# ----------------------------------------------------------------------------- TRL

def trl_config(tcfg: SummarizerTrainConfig, output_dir: Path, seed: int, device: torch.device) -> Any:
    from trl import GRPOConfig

    # TRL calls transformers' renamed gradient-checkpointing methods at every step; nothing to act on.
    warnings.filterwarnings("ignore", message=r".*checkpointing.* is deprecated", category=FutureWarning)
    weights = trained_rewards(tcfg)
    return GRPOConfig(
        output_dir=str(output_dir), seed=seed, report_to="none", use_cpu=device.type == "cpu",
        bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(), fp16=False,
        per_device_train_batch_size=tcfg.prompts_per_step * tcfg.num_generations,
        gradient_accumulation_steps=1, num_generations=tcfg.num_generations,
        max_completion_length=tcfg.max_completion_length, temperature=tcfg.temperature,
        learning_rate=tcfg.learning_rate, lr_scheduler_type=tcfg.lr_scheduler, max_steps=tcfg.max_steps or -1, num_train_epochs=tcfg.epochs,
        beta=tcfg.beta, reward_weights=list(weights.values()),
        multi_objective_aggregation="normalize_then_sum" if tcfg.normalize_rewards else "sum_then_normalize",
        scale_rewards=tcfg.scale_rewards, logging_steps=1, save_strategy="steps", save_steps=tcfg.save_steps,
        save_total_limit=1, log_completions=False, dataloader_num_workers=0,
        use_vllm=tcfg.use_vllm, vllm_mode=tcfg.vllm_mode, vllm_gpu_memory_utilization=tcfg.vllm_gpu_memory_utilization,
    )


def lora_config(tcfg: SummarizerTrainConfig) -> Any:
    from peft import LoraConfig

    targets: Any = tcfg.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=tcfg.lora_r, lora_alpha=tcfg.lora_alpha, lora_dropout=tcfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def mixed_batch_processor(processor: Any) -> Any:
    """A copy of a VLM processor that accepts None for a row without images.

    TRL 1.16 marks the rows of a batch that carry no image with None and hands that list to the
    processor, which refuses it; a batch of text and image prompts (what the summarize stage sends a
    VLM) then fails. This copy reads None as "no image for this row"."""
    cls = type(processor)

    def __call__(self: Any, *args: Any, images: Any = None, **kwargs: Any) -> Any:
        if isinstance(images, list) and any(row is None for row in images):
            images = [row if row is not None else [] for row in images]
        return cls.__call__(self, *args, images=images, **kwargs)

    patched = copy.copy(processor)
    patched.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    return patched


def make_trainer(model: Any, processor: Any, dataset: Any, rewards: dict[str, RewardFn],
                 tcfg: SummarizerTrainConfig, output_dir: Path, seed: int, callbacks: list[Any] = ()) -> Any:
    """TRL's GRPOTrainer for `model` (an instance; with LoRA when tcfg.lora) on `dataset`."""
    from trl import GRPOTrainer

    weights = trained_rewards(tcfg)
    device = next(model.parameters()).device
    if hasattr(processor, "image_processor"):
        processor = mixed_batch_processor(processor)
    return GRPOTrainer(
        model=model, processing_class=processor, reward_funcs=[rewards[name] for name in weights],
        args=trl_config(tcfg, output_dir, seed, device), train_dataset=dataset,
        peft_config=lora_config(tcfg) if tcfg.lora else None, callbacks=list(callbacks),
    )


# ----------------------------------------------------------------------------- evaluation

def policy_completions(model: Any, processor: Any, rows: pd.DataFrame, max_new_tokens: int,
                       batch_size: int) -> list[str]:
    """Greedy answers of the policy to `rows` (prompt_rows), as the summarize stage generates them."""
    from ..data.images import load_image

    was_training = model.training
    model.eval()
    out = [""] * len(rows)
    order = np.argsort([len(p) for p in rows["prompt"]], kind="stable")
    for kind in ("text", "image"):
        idx = [i for i in order if rows["kind"].iloc[i] == kind]
        for start in range(0, len(idx), batch_size):
            batch = idx[start:start + batch_size]
            prompts = [chat_prompt(processor, rows["prompt"].iloc[i], with_image=kind == "image") for i in batch]
            images = [[load_image(rows["image"].iloc[i])] for i in batch] if kind == "image" else None
            for i, answer in zip(batch, generate(model, processor, prompts, images, max_new_tokens)):
                out[i] = answer
    model.train(was_training)
    return out


def score_completions(rows: pd.DataFrame, completions: list[str], rewards: dict[str, RewardFn],
                      weights: dict[str, float], max_keywords: int) -> dict[str, Any]:
    """Each reward's mean over the rows, the combined reward sum(w * mean) over the trained rewards,
    and the mean keyword count."""
    columns = {ITEM_TEXT: rows[ITEM_TEXT].tolist(), ITEM_INDEX: rows[ITEM_INDEX].tolist()}
    prompts = rows["prompt"].tolist()
    means = {}
    for name, fn in rewards.items():
        values = [v for v in fn(prompts, completions, **columns) if not math.isnan(v)]
        means[name] = float(np.mean(values)) if values else math.nan
    combined = sum(w * means[name] for name, w in weights.items())
    keywords = [parse_keywords(c, max_keywords) for c in completions]
    return {"rewards": means, "combined": combined, "weights": weights, "rows": len(rows),
            "mean_keywords": float(np.mean([len(k) for k in keywords])) if keywords else 0.0,
            "no_keywords": int(sum(not k for k in keywords))}


def score_policy(model: Any, processor: Any, rows: pd.DataFrame, rewards: dict[str, RewardFn],
                 weights: dict[str, float], scfg: SummarizeConfig, examples: int = 5) -> dict[str, Any]:
    completions = policy_completions(model, processor, rows, scfg.max_new_tokens, scfg.batch_size)
    out = score_completions(rows, completions, rewards, weights, scfg.max_keywords)
    out["examples"] = [{"item": int(rows["item"].iloc[i]), "kind": rows["kind"].iloc[i],
                        "item_text": rows[ITEM_TEXT].iloc[i], "answer": completions[i],
                        "keywords": parse_keywords(completions[i], scfg.max_keywords)}
                       for i in range(min(examples, len(rows)))]
    return out
