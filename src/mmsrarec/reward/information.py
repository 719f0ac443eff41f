"""Information reward R_info = cos(phi(W), phi(item text)): keywords that keep the item's meaning.

phi is a sentence embedder (all-MiniLM-L6-v2 by default); W is the parsed keyword list joined by
', ', i.e. the text the later stages embed.
"""

from __future__ import annotations

from typing import Any

from .common import RewardFn, embed_texts, get_column, keyword_strings


def make_info_reward(embedder: Any, max_keywords: int = 10, batch_size: int = 64,
                     text_column: str = "item_text") -> RewardFn:
    """The embedder is created once by the caller and shared by every call.

    An answer with no usable keyword scores 0.0 (no information), whatever its raw text is.
    """

    def r_info(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        texts = [str(t) for t in get_column(columns, text_column, len(completions), "information")]
        keywords = keyword_strings(completions, max_keywords)
        vectors = embed_texts(embedder, keywords + texts, batch_size)
        cos = (vectors[: len(keywords)] * vectors[len(keywords):]).sum(dim=1)
        return [float(c) if kw else 0.0 for c, kw in zip(cos, keywords)]

    r_info.__name__ = "r_info"
    return r_info
