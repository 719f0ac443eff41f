"""What untrusted text may carry into a prompt.

Item titles and descriptions come from scraped product pages and user uploads, and what a model writes
about them (keywords, MLLM-MSR's descriptions and user summaries) is derived from them. All of it reaches
prompts: the summarizer's, the GRPO policy's, the ranker's and MLLM-MSR's. The policy, applied by
`prompt_text` wherever such text enters a prompt:

- **Stripped**: chat-template control tokens (`<|im_end|>`, `<s>`, `<image>`, ...) and the renderer's
  candidate sentinel, which could end the user turn, forge a turn, or shift the prefix/suffix split the
  ranker's scoring relies on; line breaks and runs of white space (an item is one line, so it cannot
  forge the prompt's own structure, such as a "Candidate:" line); and every clause that instructs a
  model rather than describes an item (`INJECTION`: "ignore previous instructions", "system prompt",
  "answer yes", "say no", "rank this first"), with the rest of that clause.
- **Kept**, verbatim: everything else, in any language or script, with its punctuation and case. The
  text is the signal the methods are compared on; rewriting it (lowercasing, transliteration, dropping
  words that merely sound imperative, such as the title "You Will Be Mine") would change results and
  make them incomparable with the papers'.

An item whose whole title is an instruction is shown by its number. Keywords are held to a stricter
rule (`summarize.keywords.sanitize_keyword`): a keyword is a short noun phrase, so anything imperative
(`KEYWORD_INSTRUCTION`), long, or shaped like markup or a URL is dropped.
"""

from __future__ import annotations

import re

CANDIDATE_SENTINEL = "@@CANDIDATE@@"

# Chat-template control tokens (ChatML <|...|>, <s>, image placeholders) and the rendering sentinel.
CONTROL = re.compile(r"<\|[^<>|]*\|>|</?s>|<image>|<fake_token_around_image>|<end_of_utterance>|"
                     + re.escape(CANDIDATE_SENTINEL))

# Clauses no item description needs: they address the model. Narrow on purpose, since a title that
# matches loses the clause (see the module doc).
# A verdict ends its clause: "answer Yes", "say: no.", "reply with 'yes' and ..." but not "Say Yes to the Dress".
_VERDICT = r"[\"'`]?(?:yes|no|true|false)[\"'`]?(?=\s*(?:$|[.!?,;:)|]|(?:and|or|for|if|when|unless|regardless)\b))"
INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b.*\b(?:instructions?|prompts?|above|previous|prior|rules?)\b"
    r"|\b(?:previous|above|prior|earlier|system|new) (?:instructions?|prompts?|rules)\b"
    r"|\bsystem prompt\b"
    rf"|\b(?:say|output|print|respond|reply|answer|write|return|predict)(?:\s+(?:with|only|always))?[\s:]+{_VERDICT}"
    rf"|\b(?:always|only)\s+{_VERDICT}"
    r"|\b(?:recommend|rank) (?:this|me|it) (?:first|above|higher)\b",
    re.IGNORECASE,
)
# A keyword (a short noun phrase) is also dropped for any imperative or persona phrase.
KEYWORD_INSTRUCTION = re.compile(
    INJECTION.pattern
    + r"|\b(?:ignore|disregard|forget|override)\b.*\beverything\b"
    r"|\byou (?:are|must|should|will) (?:now )?\b|\bas an ai\b"
    r"|\b(?:say|output|print|respond|reply|answer|write|return) (?:only|exactly|with|the following)\b",
    re.IGNORECASE,
)
# Where one clause of a description ends: sentence ends, semicolons, line breaks, bars, bullets.
_CLAUSE_END = re.compile(r"((?<=[.!?;])\s+|\s*[\n|•]\s*)")


def prompt_text(text: str) -> str:
    """`text` as it may enter a prompt: one line, no control tokens, no instructing clause."""
    text = CONTROL.sub(" ", str(text or ""))
    if INJECTION.search(text):
        parts = _CLAUSE_END.split(text) + [""]  # clause, the separator after it, clause, ...
        text = "".join(c + sep for c, sep in zip(parts[::2], parts[1::2]) if not INJECTION.search(c))
    return " ".join(text.split())
