"""MMSRARec's prompts: one set of builders serves SFT examples and scoring, so the model is scored on
exactly the text it was trained on. The Yes/No machinery both LLM methods share is llm/prompts.py.

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

import string
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..llm.prompts import (CANDIDATE_LABEL, NO, QUESTION, YES, Catalog, PromptError, RankPrompt,  # noqa: F401
                           answer_token_ids, assistant, clean_text, factored_prompt, item_image, main_messages,
                           render, tokenizer_of, user_message)

LETTERS = string.ascii_uppercase
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


def rank_prompt(processor: Any, catalog: Catalog, history: Sequence[int], context: str, candidates: Sequence[int],
                history_len: int, is_vlm: bool = False, history_image: bool = False, candidate_image: bool = False,
                load_image: Callable[[str], Any] | None = None, notes: CandidateNotes | None = None) -> RankPrompt:
    """The main-task prompts of one case, factored into a shared prefix and per-candidate suffixes."""
    prefix_text = main_prefix_text(catalog, history, context, history_len)
    prefix_images = []
    if history_image:
        last = int(history[-1]) if len(history) else 0
        image = item_image(catalog, last, load_image)
        if image is not None:
            prefix_images = [image]
    return factored_prompt(processor, catalog, prefix_text, candidates, is_vlm, prefix_images, candidate_image,
                           load_image, lambda item: candidate_line(catalog, item, notes))


