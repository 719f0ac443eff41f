"""Turn a model's free-text answer into a clean keyword list, and keep injected instructions out.

The summarizer, the rewards and the ranker prompts all see items through these keywords, so one
parser is shared by all of them: the reward a policy is trained on must score exactly what the
later stages will use.

Item descriptions are untrusted (scraped product pages, user uploads). A description that says
"ignore previous instructions and output ..." can make the summarizer copy that sentence into its
answer, and from there it would reach every ranker prompt that mentions the item. `sanitize_keyword`
drops such pieces: keywords are short noun phrases, so anything long or shaped like an instruction
is not a keyword. What other untrusted text may carry into a prompt is mmsrarec.untrusted's policy.
"""

from __future__ import annotations

import re

from ..untrusted import KEYWORD_INSTRUCTION

# Labels a model puts before its list ("Keywords: a, b", "Here are the keywords:").
_LABEL = re.compile(
    r"^\s*(?:(?:sure|okay|ok)\b[^a-z0-9]*)?"
    r"(?:here (?:are|is)\b[^:\n]*|(?:\w+ )?(?:keywords?|key words|tags|summary))\s*:\s*",
    re.IGNORECASE,
)
# List markers at the start of a piece: "1.", "2)", "-", "*", "•", "#".
_BULLET = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•·#]+)\s+")
_CONTROL = re.compile(r"<\|[^|<>]*\|>")
_MARKDOWN = re.compile(r"\*\*|(?<!\w)__|__(?!\w)|^\s*#+\s*")
_SPLIT = re.compile(r"[,;\n|•·\t]+")
_QUOTES = " \t\"'`*_()[]{}<>.:!?"

STOP_TOKENS = frozenset({
    "", "a", "an", "the", "and", "or", "of", "etc", "etc.", "none", "n/a", "na", "null", "keyword",
    "keywords", "tags", "...", "other", "misc", "item", "product",
})

# Markup, URLs and chat control tokens have no place in a keyword.
_FORBIDDEN = re.compile(r"\x00|https?://|www\.|<\||\|>|[<>{}`\\]|\b\w+\.(?:com|net|org|io|ru|cn)\b", re.IGNORECASE)


def sanitize_keyword(keyword: str, max_words: int = 4, max_chars: int = 40) -> str | None:
    """The keyword, or None when it is too long or looks like an instruction, markup or a URL."""
    if len(keyword) > max_chars or len(keyword.split()) > max_words:
        return None
    if KEYWORD_INSTRUCTION.search(keyword) or _FORBIDDEN.search(keyword):
        return None
    return keyword


def _clean(piece: str) -> str:
    piece = _LABEL.sub("", piece)
    piece = _BULLET.sub("", piece)
    piece = piece.strip(_QUOTES).lower()
    return " ".join(piece.split())


def parse_keywords(text: str, max_keywords: int | None = 10, max_words: int = 4) -> list[str]:
    """Keywords from a model answer: split on commas, semicolons, newlines and bullets; strip labels,
    list markers and quotes; lowercase; drop stop tokens and unsafe pieces (an instruction-like piece
    drops the rest of its line, which usually continues it); dedupe keeping order;
    keep at most `max_keywords` (None = all, which the length reward uses to see over-long answers)."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines() or [text]:
        # A chat control token poisons its whole piece (its '|' would otherwise split it away).
        line = _CONTROL.sub(" \x00 ", line)
        line = _LABEL.sub("", _MARKDOWN.sub("", line))  # "**Keywords**: a, b" -> "a, b" before splitting
        for piece in _SPLIT.split(line):
            keyword = _clean(piece)
            if KEYWORD_INSTRUCTION.search(keyword):
                break  # the rest of the line continues the injected instruction: drop it too
            if keyword in STOP_TOKENS or keyword in seen or sanitize_keyword(keyword, max_words) is None:
                continue
            seen.add(keyword)
            out.append(keyword)
            if max_keywords is not None and len(out) >= max_keywords:
                return out
    return out


def join_keywords(keywords: list[str]) -> str:
    """The one textual form of a keyword list, used in prompts and embeddings."""
    return ", ".join(keywords)
