"""MLLM-MSR prompts: item descriptions, recurrent user-preference blocks, and the recommender's
Yes/No question (user summary + one candidate).

The recommender's user turn is

    "The user's preferences, ...:\\n<summary>\\n" <question> "Candidate:\\n" | <title: description>

so everything up to the candidate label depends on the user only: it is the shared prefix that
llm.prompts.factored_prompt splits off and llm.score scores once per case. Generated text (item
descriptions, summaries) goes through llm.prompts.clean_text before it enters a prompt, so it can
neither end a chat turn nor move that split.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import pandas as pd

from ..llm.prompts import CANDIDATE_LABEL, QUESTION, Catalog, clean_text, main_messages, user_message
from .config import UserSettings

SUMMARY_LABEL = "The user's preferences, summarized from their history:\n"
NO_HISTORY = "(no history yet)"


def first_words(text: str, n: int) -> str:
    return " ".join(clean_text(str(text or "")).split()[:n])


def item_prompt(template: str, title: str, text: str, max_words: int) -> str:
    """describe-items' prompt for one item (its text cut to max_words words)."""
    return template.format(title=clean_text(str(title or "")),
                           text=first_words(text or title, max_words) or "(no details)")


def block_prompt(cfg: UserSettings, lines: Sequence[str], previous: str | None) -> str:
    """The prompt of one history block: its items as a numbered list and, after the first block, the
    summary of the blocks before it (previous)."""
    items = "\n".join(f"{i + 1}. {line}" for i, line in enumerate(lines))
    if previous is None:
        return cfg.first_prompt.format(items=items)
    return cfg.update_prompt.format(items=items, previous=clean_text(previous) or "(nothing yet)")


def catalog(items: pd.DataFrame, descriptions: Mapping[int, str], max_words: int) -> Catalog:
    """Items as prompts show them: 'title: first max_words words of the generated description'
    (title only when max_words is 0), with their image paths."""
    titles, texts, images = {}, {}, {}
    for row in items.itertuples(index=False):
        item = int(row.item)
        titles[item] = clean_text(str(row.title or "")) or f"item {item}"
        texts[item] = first_words(descriptions.get(item, ""), max_words)
        images[item] = str(getattr(row, "image", "") or "")
    return Catalog(titles, texts, {}, images)


def block_item_line(items: Catalog, item_format: str) -> Callable[[int], str]:
    """How an item appears in a block's list: users.item_format with {title} and {description}, or (an
    empty format) the catalog's 'title: description'."""
    if not item_format:
        return items.line
    return lambda item: item_format.format(title=items.titles[item], description=items.descriptions.get(item, ""))


def recommender_prefix(summary: str, template: str = "") -> str:
    """The user-specific part of the recommender's user turn: the built-in one ending with the candidate
    label, or (mllm_msr.recommender_prompt) the template up to its {candidate} field."""
    summary = clean_text(summary) or NO_HISTORY
    if not template:
        return SUMMARY_LABEL + summary + "\n" + QUESTION + "\n" + CANDIDATE_LABEL
    return template[:template.index("{candidate}")].format(summary=summary)


def recommender_candidate(line: str, template: str = "") -> str:
    """The candidate's part of the user turn: its catalog line, or the template from {candidate} on."""
    if not template:
        return line
    return template[template.index("{candidate}"):].format(candidate=line)


def recommender_messages(prefix: str, candidate: str, is_vlm: bool, image: bool, template: str = "") -> list[dict]:
    """The recommender's user turn. Built-in prompt: a candidate image sits before the candidate's line;
    with mllm_msr.recommender_prompt it opens the turn, as the official code's '<image>\\n' + prompt."""
    if not template:
        return main_messages(prefix, candidate, is_vlm, False, image)
    return [user_message([None, prefix + candidate] if image else [prefix + candidate], is_vlm)]
