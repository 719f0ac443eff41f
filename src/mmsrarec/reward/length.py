"""Length reward R_len = -|W|: fewer keywords make shorter ranker prompts (the paper's term)."""

from __future__ import annotations

from typing import Any

from ..summarize.keywords import parse_keywords
from .common import RewardFn, completion_text


def make_length_reward(max_keywords: int = 10, normalize: bool = False) -> RewardFn:
    """R_len = -(number of parsed keywords), counted without the cap so over-long answers are seen.

    normalize=True gives -|W| / max_keywords clipped to [-1, 0], on the scale of R_info, so that
    the weights of a weighted sum mean what they say.
    """
    if max_keywords < 1:
        raise ValueError(f"max_keywords must be >= 1, got {max_keywords}")

    def r_len(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        counts = [len(parse_keywords(completion_text(c), max_keywords=None)) for c in completions]
        if normalize:
            return [-min(n / max_keywords, 1.0) for n in counts]
        return [-float(n) for n in counts]

    r_len.__name__ = "r_len_norm" if normalize else "r_len"  # TRL logs rewards by function name
    return r_len
