"""A loaded (M)LLM that answers plain user prompts: the chat template is applied here, one call is one
batch, decoding is greedy unless the call asks to sample (do_sample, temperature, top_p, top_k, ...,
seed: the user summaries with mllm_msr.users.do_sample). describe-items and summarize-users take any callable of
this shape, so tests can pass a fake that records the prompts it was given."""

from __future__ import annotations

import time
from typing import Any, Protocol, Sequence

from ..models.config import ModelConfig


class Generator(Protocol):
    is_vlm: bool

    def __call__(self, prompts: Sequence[str], images: Sequence[Any] | None, max_new_tokens: int,
                 **sampling: Any) -> list[str]:
        """One answer per prompt; images (VLM only): one PIL image per prompt, or None for text only.
        sampling (only when the caller samples): UserSettings.sampling() and a seed."""


class ChatGenerator:
    def __init__(self, model_cfg: ModelConfig):
        from ..llm.score import load_model

        self.model, self.processor, self.is_vlm = load_model(model_cfg)

    def __call__(self, prompts: Sequence[str], images: Sequence[Any] | None, max_new_tokens: int,
                 **sampling: Any) -> list[str]:
        from ..summarize.generate import chat_prompt, generate

        templated = [chat_prompt(self.processor, p, with_image=images is not None) for p in prompts]
        pictures = None if images is None else [[image] for image in images]
        if not sampling:
            return generate(self.model, self.processor, templated, pictures, max_new_tokens)
        return sample(self.model, self.processor, templated, pictures, max_new_tokens, **sampling)


def sample(model: Any, processor: Any, prompts: list[str], images: list[Any] | None, max_new_tokens: int,
           seed: int, **kwargs: Any) -> list[str]:
    """summarize.generate.generate with sampling: kwargs (UserSettings.sampling(): do_sample, temperature,
    top_p, top_k, repetition_penalty) go to model.generate, under torch's RNG seeded with `seed` (and
    restored afterwards)."""
    import torch

    device = next(model.parameters()).device
    tokenizer = getattr(processor, "tokenizer", processor)  # a VLM's processor wraps its tokenizer
    if images is None:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    else:
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs)
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def timed(generator: Generator, prompts: Sequence[str], images: Sequence[Any] | None,
          max_new_tokens: int, **sampling: Any) -> tuple[list[str], float]:
    """(answers, wall seconds of the batch divided by its size): each answer's share of the batch.
    sampling is passed on only when given, so a greedy call is the same call as before it existed."""
    t0 = time.perf_counter()
    answers = generator(list(prompts), images, max_new_tokens, **sampling)
    if len(answers) != len(prompts):
        raise RuntimeError(f"the generator returned {len(answers)} answers for {len(prompts)} prompts")
    return [" ".join(str(a).split()) for a in answers], (time.perf_counter() - t0) / max(len(prompts), 1)
