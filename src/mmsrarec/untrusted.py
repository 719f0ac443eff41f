"""What untrusted text may carry into a prompt.

Item titles and descriptions come from scraped product pages and user uploads, and what a model writes
about them (keywords, MLLM-MSR's descriptions and user summaries) is derived from them. All of it reaches
prompts: the summarizer's, the GRPO policy's, the ranker's and MLLM-MSR's. The policy, applied by
`prompt_text` wherever such text enters a prompt:

- **Stripped**: chat-template control tokens (`<|im_end|>`, `<s>`, `<image>`, ...) and the renderer's
  candidate sentinel, which could end the user turn, forge a turn, or shift the prefix/suffix split the
  ranker's scoring relies on; line breaks and runs of white space (an item is one line, so it cannot
  forge the prompt's own structure, such as a "Candidate:" line); invisible characters (zero-width,
  soft hyphen), which could hide a phrase from the patterns; and every clause that instructs a model
  rather than describes an item (`INJECTION`: "ignore previous instructions", "system prompt", "answer
  yes", "say no", "rank this item first", a leading "Assistant:"), with the rest of that clause. A real
  title that is itself such a phrase ("Just Say No") is lost too: the price of a rule a model can't argue with.
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

# Chat-template control tokens (ChatML <|...|>, DeepSeek's <｜...｜>, Llama's [INST] and <<SYS>>, Gemma's
# turns, <s>, image placeholders) and the rendering sentinel.
CONTROL = re.compile(r"<\|[^<>|]*\|>|<｜[^<>]*｜>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_(?:turn|image)>|"
                     r"<image>|<global-img>|<row_\d+_col_\d+>|<fake_token_around_image>|<end_of_utterance>|"
                     + re.escape(CANDIDATE_SENTINEL))
# Invisible characters that would hide a phrase from the patterns below (zero-width, soft hyphen, BOM).
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]")

# Clauses no item description needs: they address the model. Narrow on purpose, since a title that
# matches loses the clause (see the module doc).
_QUOTE = "[\"'`\u201c\u201d\u2018\u2019]"
# A verdict ends its clause: "answer Yes", "say: no.", "reply with 'yes' and ..." but not "Say Yes to the Dress".
_VERDICT = (rf"{_QUOTE}?(?:yes|no|true|false){_QUOTE}?"
            r"(?=\s*(?:$|[^\w\s]|(?:and|or|for|if|when|unless|regardless)\b))")
INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\s+(?:(?:all|any|the|your|my|of|these|those)\s+)*"
    r"(?:previous|prior|above|earlier|preceding|system|original|other|all)\s+(?:instructions?|prompts?|rules|directions)\b"
    r"|\b(?:previous|prior|above|earlier|preceding|system) (?:instructions?|prompts?)\b"
    rf"|\b(?:say|output|print|respond|reply|answer|write|return|predict)(?:\s+(?:with|only|always|just))?[\s:]+{_VERDICT}"
    rf"|\banswer (?:is|should be|must be|will be)\s+{_VERDICT}"
    r"|\b(?:recommend|rank|put|place|show) (?:this|me|it)(?: \w+)? (?:first|on top|above|higher)\b"
    r"|(?:^|(?<=[.!?;\n|•]))\s*(?:assistant|system)\s*:",  # a role label (plain-text chat templates)
    re.IGNORECASE,
)
# A keyword (a short noun phrase) is also dropped for any imperative or persona phrase.
KEYWORD_INSTRUCTION = re.compile(
    INJECTION.pattern
    + r"|\b(?:ignore|disregard|forget|override)\b.*\b(?:instructions?|prompts?|above|previous|prior|rules?|everything)\b"
    rf"|\b(?:always|only)\s+{_VERDICT}"
    r"|\byou (?:are|must|should|will) (?:now )?\b|\bas an ai\b"
    r"|\b(?:say|output|print|respond|reply|answer|write|return) (?:only|exactly|with|the following)\b",
    re.IGNORECASE,
)
# Where one clause of a description ends: sentence ends, semicolons, line breaks, bars, bullets.
_CLAUSE_END = re.compile(r"((?<=[.!?;])\s+|\s*[\n|•]\s*)")


def prompt_text(text: str) -> str:
    """`text` as it may enter a prompt: one line, no control tokens, no instructing clause."""
    text = CONTROL.sub(" ", _INVISIBLE.sub("", str(text or "")))
    if INJECTION.search(text):
        parts = _CLAUSE_END.split(text) + [""]  # clause, the separator after it, clause, ...
        text = "".join(c + sep for c, sep in zip(parts[::2], parts[1::2]) if not INJECTION.search(c))
    return " ".join(text.split())
