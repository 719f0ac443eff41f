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
        sampling (only when the caller samples): UserSettings.sampling() and a seed (summarize.generate.generate)."""


class ChatGenerator:
    def __init__(self, model_cfg: ModelConfig):
        from ..llm.score import load_model

        self.model, self.processor, self.is_vlm = load_model(model_cfg)

    def __call__(self, prompts: Sequence[str], images: Sequence[Any] | None, max_new_tokens: int,
                 **sampling: Any) -> list[str]:
        from ..summarize.generate import chat_prompt, generate

        templated = [chat_prompt(self.processor, p, with_image=images is not None) for p in prompts]
        pictures = None if images is None else [[image] for image in images]
        return generate(self.model, self.processor, templated, pictures, max_new_tokens, **sampling)


def timed(generator: Generator, prompts: Sequence[str], images: Sequence[Any] | None,
          max_new_tokens: int, **sampling: Any) -> tuple[list[str], float]:
    """(answers, wall seconds of the batch divided by its size): each answer's share of the batch.
    sampling is passed on only when given, so a greedy call is the same call as before it existed."""
    t0 = time.perf_counter()
    answers = generator(list(prompts), images, max_new_tokens, **sampling)
    if len(answers) != len(prompts):
        raise RuntimeError(f"the generator returned {len(answers)} answers for {len(prompts)} prompts")
    return [" ".join(str(a).split()) for a in answers], (time.perf_counter() - t0) / max(len(prompts), 1)
