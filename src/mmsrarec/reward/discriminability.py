"""Discriminability reward: reciprocal rank of the true item when every item is retrieved by the
keywords' embedding. Beyond the paper: R_info rewards keywords close to their own item, this one
rewards keywords that are closer to their own item than to any other, which is what retrieval and
ranking need (generic keywords like 'product, quality' score high on R_info and low here).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .common import RewardFn, embed_texts, get_column, keyword_strings


def embed_items(embedder: Any, item_texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Unit-length embeddings of all items' texts, row i = item index i; compute once per run."""
    return embed_texts(embedder, [str(t) for t in item_texts], batch_size)


def make_disc_reward(embedder: Any, item_embeddings: torch.Tensor, max_keywords: int = 10,
                     batch_size: int = 64, index_column: str = "item_index") -> RewardFn:
    """R_disc = 1 / rank of item `item_index` among all rows of `item_embeddings` by cosine with
    phi(W); 1.0 = retrieved first. Ties count in the true item's favour. No keyword -> 0.0."""
    items = torch.nn.functional.normalize(item_embeddings.float().cpu(), dim=1)

    def r_disc(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        index = get_column(columns, index_column, len(completions), "discriminability")
        true = torch.tensor([int(i) for i in index], dtype=torch.long)
        if len(true) and (true.min() < 0 or true.max() >= len(items)):
            raise IndexError(f"reward 'discriminability': column '{index_column}' has values outside "
                             f"0..{len(items) - 1} (the rows of item_embeddings)")
        keywords = keyword_strings(completions, max_keywords)
        scores = embed_texts(embedder, keywords, batch_size) @ items.T
        true_scores = scores.gather(1, true[:, None])
        ranks = 1 + (scores > true_scores).sum(dim=1)
        return [1.0 / float(r) if kw else 0.0 for r, kw in zip(ranks, keywords)]

    r_disc.__name__ = "r_disc"
    return r_disc
