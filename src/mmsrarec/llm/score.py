"""Yes/No scoring of candidates: score = p(Yes) / (p(Yes) + p(No)) at the answer position
= sigmoid(logit_Yes - logit_No), so only two rows of the output head are ever needed.

Three implementations share the prompt code (prompts.rank_prompt) and give the same scores:

naive          one full prompt per candidate, a full forward with full logits (what plain HF does).
batched        all full prompts of a user in one right-padded batch, logits at the answer positions only.
shared_prefix  the user's prefix runs once (use_cache=True); its KV cache is shared (expand, no copy)
               by every candidate of the batch; the candidate suffixes run as one right-padded batch
               whose attention mask is [prefix ones | suffix mask] and whose positions continue after
               the prefix; hidden states are read at each candidate's last real token and projected on
               the Yes and No rows of the output head.

Positions after the prefix: for text LMs the suffix starts at P (the prefix length). Qwen2-VL and
Qwen2.5-VL use 3-D mrope positions, where an image advances the position by max(h, w) / merge, not by
its token count; the prefix positions come from the model's `get_rope_index` and the suffix continues
at max(prefix positions) + 1 on all three axes -- what `generate` does with `rope_deltas`
(P + rope_delta == max + 1). Other VLMs (LLaVA, Idefics3) use 1-D positions, like text LMs.

A candidate that carries its own image makes the suffix multimodal; such prompts (prompt.shared is
False) are scored with `batched` full prompts instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .prompts import PromptError, RankPrompt, answer_token_ids, tokenizer_of

METHODS = ("shared_prefix", "batched", "naive")


@dataclass
class Scorer:
    """A loaded ranker: the model (optionally PEFT-wrapped), its tokenizer or processor, and the
    Yes / No answer token ids."""

    model: Any
    processor: Any
    is_vlm: bool
    yes_id: int
    no_id: int
    batch_size: int = 32

    @classmethod
    def from_model(cls, model: Any, processor: Any, is_vlm: bool, batch_size: int = 32) -> "Scorer":
        yes, no = answer_token_ids(processor, is_vlm)
        return cls(model.eval(), processor, is_vlm, yes, no, batch_size)

    @property
    def hf(self) -> Any:
        """The transformers model under a PEFT wrapper (LoRA layers are injected into it in place)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    @property
    def decoder(self) -> Any:
        """The part of the model that returns hidden states (before the output head)."""
        inner = getattr(self.hf, "model", None)
        if inner is None:
            raise TypeError(f"{type(self.hf).__name__} has no .model returning hidden states; use method 'naive'")
        return inner

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return tokenizer_of(self.processor)


def load_model(cfg: Any, adapter: str = "") -> tuple[Any, Any, bool]:
    """(model, tokenizer-or-processor, is_vlm) for a ModelConfig, optionally with a LoRA adapter."""
    import dataclasses

    from ..models.loading import load_causal_lm, load_vlm

    cfg = dataclasses.replace(cfg, adapter=adapter) if adapter else cfg
    if cfg.kind == "vlm":
        model, processor = load_vlm(cfg)
        return model, processor, True
    model, tokenizer = load_causal_lm(cfg)
    return model, tokenizer, False


def score(scorer: Scorer, prompt: RankPrompt, method: str = "shared_prefix") -> np.ndarray:
    """[C] scores of one user's candidates."""
    if method == "shared_prefix":
        return score_shared_prefix(scorer, prompt) if prompt.shared else score_batched(scorer, prompt)
    if method == "batched":
        return score_batched(scorer, prompt)
    if method == "naive":
        return score_naive(scorer, prompt)
    raise ValueError(f"unknown scoring method {method!r}; methods are {', '.join(METHODS)}")


# ----------------------------------------------------------------------------- full prompts

def encode(scorer: Scorer, texts: Sequence[str], images: Sequence[list] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for already-templated texts (and their images, VLM only)."""
    kwargs = dict(padding=True, padding_side="right", add_special_tokens=False, return_tensors="pt")
    if scorer.is_vlm:
        flat = [list(i) for i in images] if images is not None else []
        inputs = scorer.processor(text=list(texts), images=flat if any(flat) else None, **kwargs)
    else:
        inputs = scorer.tokenizer(list(texts), **kwargs)
    return {k: v.to(scorer.device) for k, v in inputs.items()}


@torch.inference_mode()
def score_naive(scorer: Scorer, prompt: RankPrompt) -> np.ndarray:
    out = []
    for i in range(len(prompt)):
        inputs = encode(scorer, [prompt.full(i)], [prompt.images(i)])
        logits = scorer.model(**inputs, use_cache=False).logits[0, -1].float()
        out.append(torch.sigmoid(logits[scorer.yes_id] - logits[scorer.no_id]).item())
    return np.asarray(out, dtype=np.float32)


@torch.inference_mode()
def score_batched(scorer: Scorer, prompt: RankPrompt) -> np.ndarray:
    out = []
    for start in range(0, len(prompt), scorer.batch_size):
        idx = range(start, min(start + scorer.batch_size, len(prompt)))
        inputs = encode(scorer, [prompt.full(i) for i in idx], [prompt.images(i) for i in idx])
        hidden = scorer.decoder(**inputs, use_cache=False).last_hidden_state
        last = inputs["attention_mask"].sum(1) - 1
        out.append(yes_probability(scorer, hidden[torch.arange(len(idx), device=hidden.device), last]))
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


# ----------------------------------------------------------------------------- shared prefix

@torch.inference_mode()
def score_shared_prefix(scorer: Scorer, prompt: RankPrompt, check: bool = True) -> np.ndarray:
    if not prompt.shared:
        raise PromptError("this prompt's candidates carry images, so there is no text-only suffix to share a "
                          "prefix with; use score_batched")
    if not len(prompt):
        return np.zeros(0, np.float32)
    tok = scorer.tokenizer
    suffix_ids = tok(list(prompt.suffixes), add_special_tokens=False)["input_ids"]  # one batched call
    if check:
        check_split(tok, prompt.prefix, prompt.suffixes[0])
    prefix = encode(scorer, [prompt.prefix], [prompt.prefix_images])
    positions, next_position = prefix_positions(scorer, prefix)
    cache = new_cache(scorer)
    scorer.decoder(**prefix, position_ids=positions, cache=cache, use_cache=True)
    n_prefix = prefix["input_ids"].shape[1]
    mrope = positions.ndim == 3
    out = []
    for start in range(0, len(suffix_ids), scorer.batch_size):
        ids, mask = right_padded(scorer, suffix_ids[start:start + scorer.batch_size])
        n = len(ids)
        out.append(suffix_yes(scorer, ids, mask, expand_cache(cache, n),
                              torch.ones((n, n_prefix), dtype=torch.long, device=scorer.device),
                              torch.full((n,), next_position, device=scorer.device), mrope))
    return torch.cat(out).cpu().numpy()


def score_many(scorer: Scorer, prompts: Sequence[RankPrompt], method: str = "shared_prefix") -> list[np.ndarray]:
    """Scores of several users' candidates. shared_prefix over text-only prefixes runs the users together
    (score_shared_prefix_many): one prefix forward for all of them and their candidates in shared batches,
    which keeps a GPU busy where one user's forward would leave it waiting on kernel launches."""
    if method == "shared_prefix" and len(prompts) > 1 and all(p.shared and not p.prefix_images for p in prompts):
        return score_shared_prefix_many(scorer, prompts)
    return [score(scorer, p, method) for p in prompts]


@torch.inference_mode()
def score_shared_prefix_many(scorer: Scorer, prompts: Sequence[RankPrompt], check: bool = True) -> list[np.ndarray]:
    """score_shared_prefix for several users at once: their prefixes run as one right-padded batch (a
    real token never attends to the padding after it), then every (user, candidate) row continues its
    own user's prefix: the row's cache is that user's, its attention mask is [the user's prefix mask |
    suffix mask] (the prefix padding masked out) and its positions start at the user's prefix length."""
    if any(not p.shared or p.prefix_images for p in prompts):
        raise PromptError("score_shared_prefix_many takes text-only shared prefixes; score the others one by one")
    tok = scorer.tokenizer
    if check:
        for p in prompts:
            if len(p):
                check_split(tok, p.prefix, p.suffixes[0])
    prefix = encode(scorer, [p.prefix for p in prompts])
    mask = prefix["attention_mask"]
    lengths = mask.sum(1)
    b, width_p = mask.shape
    positions = torch.arange(width_p, device=scorer.device).expand(b, width_p)
    mrope = getattr(scorer.decoder, "get_rope_index", None) is not None
    if mrope:  # text-only prefixes on a Qwen-VL model: the same position on all three axes
        positions = positions.expand(3, b, width_p)
    cache = new_cache(scorer)
    scorer.decoder(**prefix, position_ids=positions, cache=cache, use_cache=True)
    suffixes = [s for p in prompts for s in p.suffixes]
    ids = tok(suffixes, add_special_tokens=False)["input_ids"] if suffixes else []  # one batched call
    rows = list(zip([u for u, p in enumerate(prompts) for _ in p.suffixes], ids))
    out = []
    for start in range(0, len(rows), scorer.batch_size):
        chunk = rows[start:start + scorer.batch_size]
        users = torch.tensor([u for u, _ in chunk], device=scorer.device)
        ids, smask = right_padded(scorer, [s for _, s in chunk])
        out.append(suffix_yes(scorer, ids, smask, select_cache(cache, users), mask[users], lengths[users], mrope))
    flat = torch.cat(out).float().cpu().numpy() if out else np.zeros(0, np.float32)
    bounds = np.cumsum([0, *(len(p) for p in prompts)])
    return [flat[bounds[i]:bounds[i + 1]] for i in range(len(prompts))]


def suffix_yes(scorer: Scorer, ids: torch.Tensor, mask: torch.Tensor, cache: Any, prefix_mask: torch.Tensor,
               start: torch.Tensor, mrope: bool) -> torch.Tensor:
    """P(Yes) after each right-padded suffix row: row i continues the prefix in row i of `cache`, attends
    to prefix_mask[i] and then its own tokens, at positions start[i], start[i] + 1, ..."""
    n, width = ids.shape
    pos = start[:, None] + torch.arange(width, device=scorer.device)
    if mrope:
        pos = pos.expand(3, n, width)
    hidden = scorer.decoder(input_ids=ids, attention_mask=torch.cat([prefix_mask, mask], dim=1), position_ids=pos,
                            cache=cache, use_cache=True).last_hidden_state
    last = mask.sum(1) - 1
    return yes_probability(scorer, hidden[torch.arange(n, device=hidden.device), last])


def select_cache(cache: Any, rows: torch.Tensor) -> Any:
    """A read-only cache whose row i is row rows[i] of `cache` (see _rebatched: nothing is copied up front)."""
    return _rebatched(cache, lambda t: t.index_select(0, rows))


def check_split(tokenizer: Any, prefix: str, suffix: str) -> None:
    """tokenize(prefix) + tokenize(suffix) must equal tokenize(prefix + suffix), or the shared-prefix
    scores would be scores of a different token sequence than the one trained on."""
    a = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    b = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    full = tokenizer(prefix + suffix, add_special_tokens=False)["input_ids"]
    if a + b != full:
        raise PromptError("the tokenizer merges tokens across the prefix/suffix boundary "
                          f"({tokenizer.convert_ids_to_tokens(full[max(len(a) - 2, 0):len(a) + 2])}); "
                          "score with method 'batched' instead")


def prefix_positions(scorer: Scorer, prefix: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(position ids of the prefix, the position the suffix starts at)."""
    n = prefix["input_ids"].shape[1]
    rope_index = getattr(scorer.decoder, "get_rope_index", None)
    if rope_index is None:  # 1-D positions
        return torch.arange(n, device=scorer.device)[None], n
    if "image_grid_thw" in prefix:
        positions, _ = rope_index(input_ids=prefix["input_ids"], mm_token_type_ids=prefix["mm_token_type_ids"],
                                  image_grid_thw=prefix["image_grid_thw"], attention_mask=prefix["attention_mask"])
        return positions, int(positions.max()) + 1
    return torch.arange(n, device=scorer.device).expand(3, 1, n), n  # text-only prompt on a Qwen-VL model


def new_cache(scorer: Scorer) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=scorer.hf.config)


def expand_cache(cache: Any, n: int) -> Any:
    """A read-only cache whose every layer views the (batch 1) prefix keys/values as batch n (see _rebatched)."""
    return _rebatched(cache, lambda t: t.expand(n, -1, -1, -1))


def _rebatched(cache: Any, take: Any) -> Any:
    """A DynamicCache for one suffix forward: layer l attends to take(prefix keys), take(prefix values) of
    `cache`'s layer l followed by the suffix's own, and keeps nothing (SuffixLayer). The prefix cache is
    left untouched for the next batch, and only the layer running holds its rows' [prefix | suffix] keys
    and values: a DynamicCache that stored them would hold all layers' at once, layers x rows x prefix
    (11 GB for SmolLM2-135M in float32 with 256 rows of a 1,000-token prefix)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise PromptError(f"shared-prefix scoring supports full-attention caches only, not "
                              f"{type(layer).__name__} (sliding-window or linear attention); use method 'batched'")
        layers.append(_suffix_layer_class()(layer, take))
    out = DynamicCache()
    out.layers = layers
    return out


@functools.cache
def _suffix_layer_class() -> type:
    """Built on first use: transformers is imported lazily."""
    from transformers.cache_utils import DynamicLayer

    class SuffixLayer(DynamicLayer):
        """A prefix cache layer seen through `take` (a row selection or a batch expansion): update returns
        [take(prefix) | suffix] keys and values and stores neither, so they are freed when the layer's
        attention is done. Its length is the prefix's, which is what the attention mask is built from."""

        def __init__(self, prefix: Any, take: Any):
            super().__init__()
            self.lazy_initialization(prefix.keys, prefix.values)
            self.keys, self.values, self.take = prefix.keys, prefix.values, take

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            return (torch.cat([self.take(self.keys), key_states], dim=-2),
                    torch.cat([self.take(self.values), value_states], dim=-2))

    return SuffixLayer


def right_padded(scorer: Scorer, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) [len(seqs), longest] on the scorer's device, padded on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), _pad_id(scorer.tokenizer), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    return ids.to(scorer.device), mask.to(scorer.device)


# ----------------------------------------------------------------------------- the answer

def yes_probability(scorer: Scorer, hidden: torch.Tensor) -> torch.Tensor:
    """[B] p(Yes) / (p(Yes) + p(No)) from hidden states [B, H] at the answer positions."""
    head = scorer.hf.get_output_embeddings()
    ids = torch.tensor([scorer.yes_id, scorer.no_id], device=hidden.device)
    if type(head) is torch.nn.Linear:  # a plain head: project on its Yes and No rows only
        logits = F.linear(hidden, head.weight[ids], None if head.bias is None else head.bias[ids])
    else:  # e.g. a LoRA-wrapped head
        logits = head(hidden)[:, ids]
    logits = logits.float()
    cap = getattr(scorer.hf.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.sigmoid(logits[:, 0] - logits[:, 1])


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
