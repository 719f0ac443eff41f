"""Batched greedy generation for causal LMs and VLMs, with prompts built by the model's chat template."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from ..untrusted import prompt_text


def item_texts(items: pd.DataFrame) -> list[str]:
    """The text each item is summarized from, as it may enter a prompt (mmsrarec.untrusted): its text,
    else its title. The summarize stage prompts with it and the GRPO rewards compare keywords with it."""
    return [prompt_text(text) or prompt_text(title) or "(no description)"
            for title, text in zip(items["title"], items["text"])]


def text_prompts(cfg: Any, tokenizer: Any, items: pd.DataFrame) -> list[str]:
    """The summarizer's text prompt (cfg: a SummarizeConfig) for each item, in order: what the summarize
    stage sends and what GRPO trains on."""
    return [cfg.text_prompt.format(text=truncate_tokens(tokenizer, text, cfg.max_text_tokens),
                                   title=prompt_text(title), max_keywords=cfg.max_keywords)
            for title, text in zip(items["title"], item_texts(items))]


def chat_prompt(tokenizer: Any, text: str, with_image: bool = False) -> str:
    """The prompt string for one user turn, ready for generation."""
    content: Any = text
    if with_image:
        content = [{"type": "image"}, {"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


@torch.no_grad()
def generate(model: Any, processor: Any, prompts: list[str], images: list[Any] | None = None,
             max_new_tokens: int = 48, seed: int | None = None, **sampling: Any) -> list[str]:
    """Completions of already-templated prompts (one batch; left padding): greedy, or with `sampling`
    (model.generate's do_sample, temperature, top_p, top_k, ...) under torch's RNG seeded with `seed` and
    restored afterwards, so a batch's answers depend on its prompts and its seed alone."""
    if getattr(model, "is_vllm", False):  # summarize.backend: vllm (vllm_backend.VllmPolicy)
        if sampling:
            raise ValueError("the vLLM backend generates greedily; sampled generation needs the hf backend")
        return model.generate_batch(prompts, images, max_new_tokens)
    device = next(model.parameters()).device
    tokenizer = getattr(processor, "tokenizer", processor)  # a VLM's processor wraps its tokenizer
    if images is None:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    else:
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if not sampling:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id)
    else:
        if seed is None:
            raise ValueError("sampled generation needs a seed (runs must be reproducible)")
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 use_cache=True, **sampling)
    new = out[:, inputs["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new, skip_special_tokens=True)
