"""Ranker prompts: one set of builders serves SFT examples and scoring, so the model is scored on
exactly the text it was trained on.

The main task's user turn ends with the candidate:

    <history lines> / <retrieved keywords> / <question> / "Candidate:\\n" | <candidate line>

Everything up to and including "Candidate:\\n" depends on the user only (the PREFIX); the candidate
line plus the end of the user turn and the assistant header (the SUFFIX) is short and ends at the
answer position. The split sits right after a newline, where byte-level BPE pre-tokenizers cut,
so tokenize(prefix) + tokenize(suffix) == tokenize(prefix + suffix); `rank_prompt` renders the chat
template once with a sentinel in place of the candidate and checks that rendering a real candidate
gives prefix + suffix.

Beyond the paper, a candidate's line may end with notes on it (`CandidateNotes`): how many of the
case's k most similar training users chose it next (rank.candidate_votes) and where a trained CF model
ranks it for the case's history (rank.candidate_cf_rank). They sit in the suffix, so the prefix stays
shared.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..errors import MmsrarecError
from ..summarize.keywords import join_keywords

CANDIDATE_LABEL = "Candidate:\n"
QUESTION = "Will the user interact with the candidate item next? Answer Yes or No."
YES, NO = "Yes", "No"
LETTERS = string.ascii_uppercase
_SENTINEL = "@@CANDIDATE@@"


class PromptError(MmsrarecError):
    """A chat template renders the ranker prompt in a way that breaks the prefix/suffix factoring."""


# Chat-template control tokens (ChatML <|...|>, <s>, image placeholders) and the rendering sentinel:
# item text is untrusted and must not be able to end the user turn or shift the prefix/suffix split.
_CONTROL = re.compile(r"<\|[^<>|]*\|>|</?s>|<image>|<fake_token_around_image>|<end_of_utterance>|@@CANDIDATE@@")


def clean_text(text: str) -> str:
    """Item text as one line without chat control tokens."""
    return " ".join(_CONTROL.sub(" ", text).split())


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


@dataclass
class CandidateNotes:
    """What one case's candidate lines say after catalog.line, beyond the paper (each part optional).

    votes, k: how many of the case's k most similar training users chose each item next (absent: none);
    rank.candidate_votes.
    ranks, ranked_by: each item's rank (1 = first) when the CF model `ranked_by` scores every item for
    the case's history (ranks[item]: a mapping or an array indexed by item); rank.candidate_cf_rank.
    levels_of: > 0 (the catalogue's size): the rank is shown as a level word (rank_level), not a number;
    rank.candidate_cf_rank_as=level."""

    votes: Mapping[int, int] | None = None
    k: int = 0
    ranks: Any = None
    ranked_by: str = ""
    levels_of: int = 0

    def about(self, item: int) -> str:
        parts = []
        if self.votes is not None:
            parts.append(f"chosen next by {int(self.votes.get(int(item), 0))} of {self.k} similar users")
        if self.ranks is not None:
            rank = int(self.ranks[int(item)])
            parts.append(f"{self.ranked_by} rates it {rank_level(rank, self.levels_of)}" if self.levels_of
                         else f"{self.ranked_by} ranks it {rank}")
        return "; ".join(parts)


RANK_LEVELS = ((0.01, "very high"), (0.03, "high"), (0.10, "medium"), (0.30, "low"))  # (top share, word)
LEVEL_WORDS = (*(word for _, word in RANK_LEVELS), "very low")  # best first


def rank_level(rank: int, n_items: int) -> str:
    """The level word of a CF rank (1 = first) among n_items: very high (top 1%), high (3%), medium (10%),
    low (30%), very low."""
    return next((word for share, word in RANK_LEVELS if rank <= share * n_items), LEVEL_WORDS[-1])


def candidate_line(catalog: Catalog, item: int, notes: CandidateNotes | None = None) -> str:
    """A candidate as the main and choice tasks show it: catalog.line, then its notes when given."""
    line = catalog.line(item)
    about = notes.about(item) if notes is not None else ""
    return f"{line} ({about})" if about else line


# ----------------------------------------------------------------------------- text blocks

def history_block(catalog: Catalog, history: Sequence[int], history_len: int) -> str:
    lines = [f"- {catalog.line(int(i), catalog.history_keywords)}" for i in list(history)[-history_len:]]
    return "The user's recent items, oldest first:\n" + "\n".join(lines) + "\n"


def context_block(context: str) -> str:
    return f"Similar users chose next items with these keywords: {context}\n" if context else ""


def main_prefix_text(catalog: Catalog, history: Sequence[int], context: str, history_len: int) -> str:
    """The user-specific part of the main task's user turn, ending with the candidate label."""
    return history_block(catalog, history, history_len) + context_block(context) + QUESTION + "\n" + CANDIDATE_LABEL


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


def choice_text(catalog: Catalog, history: Sequence[int], context: str, options: Sequence[int],
                history_len: int, notes: CandidateNotes | None = None) -> str:
    listed = "\n".join(f"{LETTERS[i]}. {candidate_line(catalog, int(item), notes)}"
                       for i, item in enumerate(options))
    return (history_block(catalog, history, history_len) + context_block(context)
            + "Which item will the user interact with next? Answer with its letter only.\n" + listed)


def title_text(catalog: Catalog, item: int) -> str:
    return (f"An item is described by: {catalog.descriptions.get(item) or '(no description)'}\n"
            "What is its title? Answer with the title only.")


def next_keywords_text(catalog: Catalog, history: Sequence[int], context: str, history_len: int) -> str:
    return (history_block(catalog, history, history_len) + context_block(context)
            + "Describe the item the user will interact with next, in keywords.")


# ----------------------------------------------------------------------------- templating

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


def rank_prompt(processor: Any, catalog: Catalog, history: Sequence[int], context: str, candidates: Sequence[int],
                history_len: int, is_vlm: bool = False, history_image: bool = False, candidate_image: bool = False,
                load_image: Callable[[str], Any] | None = None, notes: CandidateNotes | None = None) -> RankPrompt:
    """The main-task prompts of one case, factored into a shared prefix and per-candidate suffixes."""
    prefix_text = main_prefix_text(catalog, history, context, history_len)
    prefix_images = []
    if history_image:
        last = int(history[-1]) if len(history) else 0
        image = _image(catalog, last, load_image)
        if image is not None:
            prefix_images = [image]
    return factored_prompt(processor, catalog, prefix_text, candidates, is_vlm, prefix_images, candidate_image,
                           load_image, notes)


def factored_prompt(processor: Any, catalog: Catalog, prefix_text: str, candidates: Sequence[int],
                    is_vlm: bool = False, prefix_images: Sequence[Any] = (), candidate_image: bool = False,
                    load_image: Callable[[str], Any] | None = None, notes: CandidateNotes | None = None) -> RankPrompt:
    """The Yes/No prompts of `candidates` (each shown as candidate_line: catalog.line, and its
    notes when given) after a user-specific `prefix_text` that ends with CANDIDATE_LABEL,
    factored into a shared prefix and per-candidate suffixes; `prefix_images` (VLM) come before the
    prefix text. MLLM-MSR's prompts use it too."""
    prefix_images = list(prefix_images)
    with_history_image = bool(prefix_images)
    texts = [candidate_line(catalog, int(c), notes) for c in candidates]
    if candidate_image:
        full, images = [], []
        for item, text in zip(candidates, texts):
            image = _image(catalog, int(item), load_image)
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


def _image(catalog: Catalog, item: int, load_image: Callable[[str], Any] | None) -> Any:
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
