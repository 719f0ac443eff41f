"""Yes/No prompts that both LLM methods share: how items appear (Catalog), the chat turns, and the
factoring of one user's prompts into a shared prefix and per-candidate suffixes.

The user turn ends with the candidate:

    <user-specific text ending with "Candidate:\\n"> | <candidate line>

Everything up to and including "Candidate:\\n" depends on the user only (the PREFIX); the candidate
line plus the end of the user turn and the assistant header (the SUFFIX) is short and ends at the
answer position. The split sits right after a newline, where byte-level BPE pre-tokenizers cut,
so tokenize(prefix) + tokenize(suffix) == tokenize(prefix + suffix); `factored_prompt` renders the chat
template once with a sentinel in place of the candidate and checks that rendering a real candidate
gives prefix + suffix. MMSRARec's prompts (rank/prompts.py) and MLLM-MSR's (mllmmsr/prompts.py) build
their user-specific text on top of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..errors import MmsrarecError
from ..summarize.keywords import join_keywords
from ..untrusted import CANDIDATE_SENTINEL
from ..untrusted import prompt_text as clean_text  # item text as it may enter a prompt

CANDIDATE_LABEL = "Candidate:\n"
QUESTION = "Will the user interact with the candidate item next? Answer Yes or No."
YES, NO = "Yes", "No"
_SENTINEL = CANDIDATE_SENTINEL


class PromptError(MmsrarecError):
    """A chat template renders the ranker prompt in a way that breaks the prefix/suffix factoring."""


@dataclass
class Catalog:
    """How items appear in prompts: a title, a short description (its keywords, or its raw text in the
    no-summarization ablation), its keywords, an image path."""

    titles: dict[int, str]
    descriptions: dict[int, str]
    keywords: dict[int, list[str]] = field(default_factory=dict)
    images: dict[int, str] = field(default_factory=dict)
    history_keywords: int | None = None  # keywords per history item (None: as many as candidates show)

    @classmethod
    def build(cls, items: pd.DataFrame, keywords: Mapping[int, Sequence[str]] | None, use_keywords: bool,
              max_keywords: int = 8, raw_text_words: int = 30, history_keywords: int | None = None) -> "Catalog":
        """From the prepare stage's items table and (when use_keywords) item -> keywords."""
        titles, descriptions, kws, images = {}, {}, {}, {}
        for row in items.itertuples(index=False):
            item = int(row.item)
            titles[item] = clean_text(str(row.title or "")) or f"item {item}"
            if use_keywords:
                words = (clean_text(str(k)) for k in (keywords or {}).get(item, ()))
                kws[item] = [k for k in words if k][:max_keywords]
                descriptions[item] = join_keywords(kws[item])
            else:
                descriptions[item] = " ".join(clean_text(str(getattr(row, "text", "") or "")).split()[:raw_text_words])
            images[item] = str(getattr(row, "image", "") or "")
        return cls(titles, descriptions, kws, images, history_keywords)

    def line(self, item: int, max_keywords: int | None = None) -> str:
        """'title: keywords' (or 'title: raw text'); max_keywords shortens a keyword list."""
        kws = self.keywords.get(item)
        desc = join_keywords(kws[:max_keywords]) if kws and max_keywords is not None else self.descriptions.get(item, "")
        return f"{self.titles[item]}: {desc}" if desc else self.titles[item]

    def context_words(self) -> dict[int, list[str]]:
        """What each item contributes to retrieved context: its keywords, else (ablation) its title."""
        return {item: self.keywords.get(item) or [title] for item, title in self.titles.items()}


def user_message(text_parts: Sequence[str | None], is_vlm: bool) -> dict:
    """A user turn. A VLM gets structured content ({'type': 'image'} where a part is None, TRL's
    vision format); a text LM gets one string."""
    if not is_vlm:
        if any(p is None for p in text_parts):
            raise ValueError("a text-only model cannot take image parts")
        return {"role": "user", "content": "".join(text_parts)}
    content = [{"type": "image", "text": None} if p is None else {"type": "text", "text": p} for p in text_parts]
    return {"role": "user", "content": content}


def main_messages(prefix_text: str, candidate_text: str, is_vlm: bool, history_image: bool = False,
                  candidate_image: bool = False) -> list[dict]:
    parts: list[str | None] = [None] if history_image else []
    parts.append(prefix_text)
    if candidate_image:
        parts.append(None)
    parts.append(candidate_text)
    return [user_message(parts, is_vlm)]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def render(processor: Any, messages: list[dict], generation_prompt: bool = True) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


@dataclass
class RankPrompt:
    """One user's main-task prompts for C candidates: full prompt i = prefix + suffixes[i].

    shared: the prefix is text-identical for every candidate and the suffixes carry no image, so the
    prefix can run once and its KV cache be shared. With candidate images the prefix is '' and each
    suffix is a full prompt."""

    prefix: str
    suffixes: list[str]
    prefix_images: list = field(default_factory=list)
    candidate_images: list[list] = field(default_factory=list)
    shared: bool = True

    def full(self, i: int) -> str:
        return self.prefix + self.suffixes[i]

    def images(self, i: int) -> list:
        return list(self.prefix_images) + (list(self.candidate_images[i]) if self.candidate_images else [])

    def __len__(self) -> int:
        return len(self.suffixes)


def factored_prompt(processor: Any, catalog: Catalog, prefix_text: str, candidates: Sequence[int],
                    is_vlm: bool = False, prefix_images: Sequence[Any] = (), candidate_image: bool = False,
                    load_image: Callable[[str], Any] | None = None,
                    line: Callable[[int], str] | None = None) -> RankPrompt:
    """The Yes/No prompts of `candidates` (each shown as line(item), by default catalog.line) after a
    user-specific `prefix_text` that ends with CANDIDATE_LABEL, factored into a shared prefix and
    per-candidate suffixes; `prefix_images` (VLM) come before the prefix text. Both LLM methods use it."""
    prefix_images = list(prefix_images)
    with_history_image = bool(prefix_images)
    line = line or catalog.line
    texts = [line(int(c)) for c in candidates]
    if candidate_image:
        full, images = [], []
        for item, text in zip(candidates, texts):
            image = item_image(catalog, int(item), load_image)
            full.append(render(processor, main_messages(prefix_text, text, is_vlm, with_history_image, image is not None)))
            images.append([image] if image is not None else [])
        return RankPrompt("", full, prefix_images, images, shared=False)
    templated = render(processor, main_messages(prefix_text, _SENTINEL, is_vlm, with_history_image))
    if templated.count(_SENTINEL) != 1:
        raise PromptError(f"the chat template does not render the candidate text verbatim exactly once: {templated!r}")
    prefix, tail = templated.split(_SENTINEL)
    prompt = RankPrompt(prefix, [t + tail for t in texts], prefix_images)
    if texts:
        real = render(processor, main_messages(prefix_text, texts[0], is_vlm, with_history_image))
        if real != prompt.full(0):
            raise PromptError("the chat template changes the candidate text (rendering it with a placeholder and "
                              f"with the real text differ): {real!r} vs {prompt.full(0)!r}")
    return prompt


def item_image(catalog: Catalog, item: int, load_image: Callable[[str], Any] | None) -> Any:
    path = catalog.images.get(item, "")
    if not path or load_image is None:
        return None
    return load_image(path)


def answer_token_ids(processor: Any, is_vlm: bool = False) -> tuple[int, int]:
    """Token ids of the first answer token for 'Yes' and 'No', exactly as SFT sees them.

    TRL's text path tokenizes template(prompt + answer) and takes the tokens after the common prefix
    with template(prompt); its vision path tokenizes the rendered completion text on its own. Both
    are derived here from the model's own chat template."""
    tokenizer = tokenizer_of(processor)
    messages = main_messages("The user's recent items:\n- a\n" + QUESTION + "\n" + CANDIDATE_LABEL, "b", is_vlm)
    prompt = render(processor, messages)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for answer in (YES, NO):
        full = render(processor, messages + assistant(answer), generation_prompt=False)
        if not full.startswith(prompt):
            raise PromptError(f"the chat template renders the prompt differently once the answer follows: "
                              f"{prompt!r} is not a prefix of {full!r}")
        if is_vlm:
            ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        else:
            full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            if full_ids[:len(prompt_ids)] != prompt_ids:
                raise PromptError(f"tokens of the prompt merge with the answer {answer!r}: the answer position is "
                                  "ambiguous for this tokenizer")
            ids = full_ids[len(prompt_ids):]
        if not ids:
            raise PromptError(f"the answer {answer!r} produced no tokens")
        out.append(ids[0])
    if out[0] == out[1]:
        raise PromptError(f"'Yes' and 'No' start with the same token ({out[0]}); the score would be constant")
    return out[0], out[1]
