"""Reconstruction reward R_recon = -PPL(item text | W) under a frozen reference LM.

Keywords that let a language model predict the original description carry its content. Only the
description's tokens are scored: the prompt holding the keywords is context, not target.
Two forms (train_summarizer.reconstruction_reward, docs/rewards.md):
- log=True, registry name "reconstruction" (the default): -mean NLL = -log PPL, in nats. PPL spans
  orders of magnitude across items, which would swamp the other rewards in a weighted sum.
- log=False, registry name "reconstruction_ppl": -PPL = -exp(mean NLL), the paper's form. The mean
  NLL is clipped at MAX_NLL nats first, so the reward stays >= -exp(MAX_NLL) (about -1.07e13).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .common import RewardFn, get_column, keyword_strings

# -PPL clips the mean NLL here. TRL holds rewards in float32 and takes their std over a group or a batch:
# exp(80), the clip before, is finite but its square is not, so the std is inf and every advantage 0.
# exp(30)^2 times any batch size is finite; 30 nats is far above a uniform guess over a 150k-token
# vocabulary (about 12), so only degenerate texts reach it.
MAX_NLL = 30.0

PROMPT = "Keywords: {keywords}\nWrite the item description that these keywords summarize."


def _prefix_ids(tokenizer: Any, keywords: str) -> list[int]:
    """Prompt tokens: the chat template's user turn + assistant header when there is a template."""
    question = PROMPT.format(keywords=keywords)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(question + "\nDescription: ")["input_ids"]


@torch.inference_mode()
def mean_nll(model: Any, tokenizer: Any, prefixes: list[list[int]], targets: list[list[int]],
             batch_size: int = 8) -> list[float]:
    """Mean negative log-likelihood of each target given its prefix (nan for an empty target).

    Rows are sorted by length, left-padded, and given explicit position ids, so a batched score
    equals the one-by-one score; only the last (longest target + 1) positions get logits, which
    keeps the vocab-sized logits tensor small.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [math.nan] * len(targets)
    order = sorted((i for i in range(len(targets)) if targets[i]), key=lambda i: len(prefixes[i]) + len(targets[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        seqs = [prefixes[i] + targets[i] for i in rows]
        width = max(map(len, seqs))
        n_max = max(len(targets[i]) for i in rows)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=n_max + 1).logits[:, :-1].float()
        labels = ids[:, -n_max:]
        is_target = torch.tensor([[0] * (n_max - len(targets[i])) + [1] * len(targets[i]) for i in rows],
                                 device=device, dtype=torch.bool)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                reduction="none").view(labels.shape)
        per_row = (nll * is_target).sum(1) / is_target.sum(1)
        for i, value in zip(rows, per_row.tolist()):
            out[i] = value
    return out


def make_recon_reward(model: Any, tokenizer: Any, batch_size: int = 8, log: bool = True,
                      max_keywords: int = 10, max_text_tokens: int = 128,
                      text_column: str = "item_text") -> RewardFn:
    """log=True: -mean NLL of the item text (-log PPL); log=False: -PPL = -exp(min(mean NLL, MAX_NLL)).
    The text is cut to its first `max_text_tokens` tokens (cost grows with it). An empty item text
    scores nan, which TRL treats as 'no reward for this sample'."""
    model.eval()

    def r_recon(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        texts = [str(t) for t in get_column(columns, text_column, len(completions), "reconstruction")]
        prefixes = [_prefix_ids(tokenizer, kw) for kw in keyword_strings(completions, max_keywords)]
        targets = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_text_tokens] for t in texts]
        nll = mean_nll(model, tokenizer, prefixes, targets, batch_size)
        return [-v if log else -math.exp(min(v, MAX_NLL)) for v in nll]  # nan stays nan

    r_recon.__name__ = "r_recon_log" if log else "r_recon"
    return r_recon
