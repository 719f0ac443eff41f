"""Configs and key help say what a setting is for, not what it measured (issue #31).

A config comment says what the file is for, how to run it and why a value is set; a key's help says what
the key does and its allowed values. Measurements, timings and the history of runs belong in docs/,
experiments/results/ and benchmarks/results/. These tests fail when a comment in configs/**/*.yaml or a key's
help quotes one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

_NUM = r"[+\-]?(?:\d+\.\d+|\.\d+|\d+)"
_DEC = r"[+\-]?(?:\d+\.\d+|\.\d+)"  # a fraction or a ratio: what a metric or a speed-up is quoted as
_METRIC = r"(?:HR|NDCG|MRR|G?AUC|hit|recall|precision|hits)(?:@\d+)?"

# name -> pattern; each is a way a measurement reads, none is a way a default, range or count reads
PATTERNS: dict[str, re.Pattern] = {
    # HR@5 0.62, NDCG@10 = 0.3, AUC of 0.71, hr@5: .4
    "metric value": re.compile(rf"\b{_METRIC}\s*(?:=|:|\bof\b|\bat\b|\bis\b|\bwas\b)?\s*~?{_DEC}(?!\d)", re.I),
    # +0.10 HR@5, 0.547 NDCG@5
    "value of a metric": re.compile(rf"(?<![\w.]){_DEC}\s+{_METRIC}\b", re.I),
    # 1.31x fewer tokens, 2x faster, 3 × slower; a decimal factor (1.31x) reads as a measured ratio anywhere
    "speed-up": re.compile(r"(?<![\w.])(?:\d+(?:\.\d+)?\s?[x×]\s+(?:faster|slower|fewer|less|more|smaller|larger|"
                           r"bigger|cheaper|quicker|longer|shorter)\b|\d+\.\d+\s?[x×](?![\w]))", re.I),
    # 26 min, 90 s, 5 min 51 s, 1.5 hours (a time on the clock; 's' and 'h' need a space: '4 steps' is no time)
    "duration": re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:\s(?:s|h)|\s?(?:ms|secs?|seconds?|mins?|minutes?|hrs?|"
                           r"hours?))\b"),
    # 1.8 steps/s, 40 items per second
    "throughput": re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s*(?:\w+\s*/\s*s\b|\w+\s+per\s+second)", re.I),
    # 9.4 GB for four runs, 140 MB in 3 parts (a size with what it was measured on)
    "memory used": re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:[KMGT]i?B)\s+(?:on|per|for|with|in|of|alone|each|here)\b"),
    # took 26 min, peaked at 20 GB
    "took / peaked": re.compile(r"\b(?:took|peak(?:ed|s)?(?:\s+at)?)\s+(?:about\s+|around\s+|~\s*)?\d", re.I),
    # 0.820 against 0.547, 1.3% padding instead of 24.5%
    "comparison of values": re.compile(rf"(?<![\w.])(?:{_DEC}|\d+(?:\.\d+)?%)[^.;:()\d]{{0,25}}?\b(?:instead of|against|"
                                       rf"versus|vs\.?|compared (?:to|with))\s+~?{_NUM}", re.I),
    # ~22 tokens, ~1.5k updates, ~45% of the tokens: an approximate figure is an observation
    "approximate figure": re.compile(r"~\s?\d"),
    # measured 2026-11-27, benchmarked, in loan 2 (a session's GPU loan: the diary of a run)
    "diary word": re.compile(r"\b(?:measured|benchmarked|loans?)\b", re.I),
}


def measurements(text: str) -> list[str]:
    """'name: matched text' for every pattern that matches; [] for text that quotes no measurement."""
    return [f"{name}: {m.group(0)!r}" for name, pattern in PATTERNS.items() for m in pattern.finditer(text)]


# ------------------------------------------------------------------------------------- the patterns themselves

QUOTES = [
    "On ML-100K this vote alone ranks at HR@5 0.68 at k = 500",
    "NDCG@10 = 0.3",
    "HR@5 0.820 against 0.547 with the rank as a number",
    "the rank added +0.10 HR@5 alone",
    "dropping the aux tasks helped here (+0.088 HR@5, seed 2025)",
    "1.3% padding instead of 24.5%, 1.31x fewer tokens",
    "would cut the SFT's tokens 1.31x (24.5% of them are padding)",
    "(benchmarks/sft_speed.py: group_by_length is 1.3x faster)",
    "Took 5 min 51 s on 2 quiet CPU cores (2026-11-26).",
    "CPU: 26 min on 2 cores",
    "about 20 s per list here",
    "1.8 steps/s each with seven side by side",
    "9.4 GB for four runs",
    "140 MB in 3 parts",
    "SmolLM2-135M at 8 x ~600 tokens peaked at 20 GB",
    "64: ~1.5k updates per epoch on ML-100K",
    "~22 and ~7 tokens on ML-100K against the Yes/No task's 3",
    "Measured 2026-11-27 on a lent H200",
    "the rankers need about one 15-minute H200 loan per seed",
    "on the H200 in loan 2",
    "its effect on quality is not measured",
]

LEGITIMATE = [
    "cut-offs for HR/NDCG/MRR",
    "HR@5 / NDCG@5 / pooled AUC beside GAUC",
    "fuse: the valid metric the blend weight maximizes (hr@K, ndcg@K, mrr@K, mrr or gauc)",
    "sampled: the stored 1+N candidate lists",
    "evaluate (sampled 1 + 20, full ranking)",
    "1 + 20 sampled negatives",
    "seed 2025",
    "seeds: [2025, 2026, 2027]",
    "the full protocol: drop the case's history items (as RecBole 1.2.1 does)",
    "llava-hf/llava-v1.6-mistral-7b-hf, Qwen2.5-VL-7B-Instruct",
    "4 epochs, AdamW lr 2e-5, batch 1 x 4 accumulated x 6 GPUs = 24 (here 4 x 6 on one GPU)",
    "effective batch = batch_size x grad_accum",
    "stop after this many optimizer steps (-1 = epochs decide)",
    "0 < x < 1 (rounded to a count of at least 1 item, leaving at least 1 warm item)",
    "'sasrec rates it very high': top 1%; high: 3%; medium: 10%; low: 30%; very low",
    "30% of the items never reach training",
    "per-request timeout in seconds",
    "checkpoint every 4 steps; 12 steps of 2 prompts x 4 completions",
    "history items summarized per user state (9 = 3 blocks of 3)",
    "1 with the default 32 and 1+20",
    "replicate: a full copy per GPU, queries split (more queries/s)",
    "the catalogue is the 203 items with >= 150 ratings",
    "largest image accepted, in bytes",
    "-log PPL (-mean NLL, in nats)",
    "a 5-item history (the official MicroLens K - 1)",
    "Frozen 2026-12-04: a changed setting is a new file with a new date",
    "tools/lent_gpu.py packs the runs a GPU session can finish",
    "a machine lent for a short time",
]


@pytest.mark.parametrize("text", QUOTES)
def test_patterns_catch_measurements(text):
    assert measurements(text), f"no pattern catches the measurement in {text!r}"


@pytest.mark.parametrize("text", LEGITIMATE)
def test_patterns_leave_legitimate_text(text):
    assert not measurements(text), f"{text!r} is no measurement, yet: {measurements(text)}"


# ------------------------------------------------------------------------------------------------- key help

def key_help() -> list[tuple[str, str]]:
    """(key, help) of every config key, collected as `mmsrarec keys` does (help_rows over RunConfig), plus
    the per-model cf.params keys and an experiment variant's keys, which sit under a dict and a list."""
    from mmsrarec.cf import MODELS, model_class
    from mmsrarec.config import RunConfig, Variant
    from mmsrarec.configtools import help_rows

    rows = help_rows(RunConfig) + help_rows(Variant, "experiment.variants[].")
    for name in MODELS:
        params = getattr(model_class(name), "Params", None)
        if params is not None:
            rows += help_rows(params, f"cf.params.{name}.")
    return [(key, text) for key, _default, text in rows]


def test_key_help_quotes_no_measurement():
    rows = key_help()
    assert len(rows) > 100  # the collection reached every section
    bad = [f"{key}: {hit}" for key, text in rows for hit in measurements(text)]
    assert not bad, ("key help says what the key does; move measurements to docs/ (a short 'see docs/<file>.md' "
                     "is fine):\n" + "\n".join(bad))


# ------------------------------------------------------------------------------------------- config comments

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def yaml_comments(text: str) -> list[tuple[int, str]]:
    """(line number, comment) of every YAML comment: the text from a '#' to the end of its line, found
    between the scanner's tokens, so that a '#' inside a quoted or plain scalar is never taken for one."""
    comments = []
    tokens = list(yaml.scan(text))
    for before, after in zip(tokens, tokens[1:]):
        gap = text[before.end_mark.index:after.start_mark.index]
        offset = before.end_mark.index
        for m in re.finditer(r"#[^\n]*", gap):
            line = text.count("\n", 0, offset + m.start()) + 1
            comments.append((line, m.group(0)))
    return comments


def test_yaml_comments_are_found():
    text = 'a: 1  # one\nb: "x # not a comment"\n# two\nc: [1, 2]  # three\n'
    assert [c for _, c in yaml_comments(text)] == ["# one", "# two", "# three"]


def test_configs_exist():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_comments_quote_no_measurement(path):
    text = path.read_text(encoding="utf-8")
    comments = yaml_comments(text)
    # a sentence may wrap over lines: check each comment block joined, and report the lines it spans
    blocks: list[tuple[int, int, str]] = []
    for line, comment in comments:
        body = comment.lstrip("#").strip()
        if blocks and blocks[-1][1] == line - 1:
            first, _, joined = blocks[-1]
            blocks[-1] = (first, line, f"{joined} {body}")
        else:
            blocks.append((line, line, body))
    bad = [f"lines {first}-{last}: {hit}" for first, last, joined in blocks for hit in measurements(joined)]
    assert not bad, (f"{path.relative_to(ROOT)}: a config comment says what the file is for, how to run it and "
                     "why a value is set; move measurements and run history to docs/:\n" + "\n".join(bad))
