"""What every reward function shares: reading TRL's arguments and embedding texts.

TRL calls a reward as `f(prompts, completions, **columns)`: completions are strings for plain
prompts and lists of chat messages for conversational ones; dataset columns arrive as lists
aligned with the completions.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..summarize.keywords import join_keywords, parse_keywords

RewardFn = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The generated text of one completion: a string, a list of chat messages (the assistant's
    content is used), or message content given as a list of {'type': 'text', 'text': ...} parts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        answers = [m for m in messages if m.get("role") == "assistant"] or messages
        return "\n".join(_content_text(m.get("content", "")) for m in answers)
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def keyword_strings(completions: Sequence[Any], max_keywords: int | None) -> list[str]:
    """Each completion parsed to keywords and joined the way later stages see them."""
    return [join_keywords(parse_keywords(completion_text(c), max_keywords)) for c in completions]


def get_column(columns: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    if name not in columns:
        have = ", ".join(sorted(k for k in columns if k not in ("completion_ids", "trainer_state"))) or "none"
        raise KeyError(f"reward '{reward}' needs the dataset column '{name}' (columns given: {have}); "
                       "add it to the training dataset or pass another column name to the reward's factory")
    values = list(columns[name])
    if len(values) != n:
        raise ValueError(f"reward '{reward}': column '{name}' has {len(values)} values for {n} completions")
    return values


def embed_texts(embedder: Any, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Unit-length float32 embeddings on the CPU, one row per text; repeated texts are encoded once
    (GRPO repeats every prompt num_generations times)."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return torch.zeros(0, embedder.get_sentence_embedding_dimension())
    vectors = embedder.encode(unique, batch_size=batch_size, convert_to_tensor=True,
                              normalize_embeddings=True, show_progress_bar=False)
    row = {text: i for i, text in enumerate(unique)}
    return vectors.float().cpu()[[row[t] for t in texts]]
