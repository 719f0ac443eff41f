"""The MLLM-MSR recommender: Yes/No SFT examples from training user states, and scoring of stored
candidate lists. Training goes through llm.train.train_ranker and scoring through llm.score, so both
methods share one SFT loop and one scorer (p(Yes) / (p(Yes) + p(No)), shared user prefix).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import ArtifactError
from ..llm.prompts import NO, YES, Catalog, RankPrompt, assistant, factored_prompt, item_image, render, tokenizer_of
from ..llm.examples import item_counts, sample_negatives, to_dataset
from ..llm.train import SFTJob
from .config import MllmMsrConfig
from .prompts import recommender_candidate, recommender_messages, recommender_prefix
from .users import history_window, training_counts


def ranker_config(cfg: MllmMsrConfig) -> SFTJob:
    """What llm.train.train_ranker trains: the recommender, its LoRA and SFT settings."""
    return SFTJob(model=cfg.recommender, lora=cfg.lora, sft=cfg.sft)


def shows_images(cfg: MllmMsrConfig) -> bool:
    return cfg.candidate_image and cfg.recommender.kind == "vlm"


def training_examples(states: pd.DataFrame, train: pd.DataFrame, catalog: Catalog, cfg: MllmMsrConfig,
                      history_items: int, seed: int):
    """One positive (the state's next training item) and cfg.neg_per_pos negatives (training items the
    user never interacted with in training, drawn as cfg.negatives says) per training state, as a TRL
    prompt-completion dataset."""
    is_vlm, images, template = cfg.recommender.kind == "vlm", shows_images(cfg), cfg.recommender_prompt
    sequences = {int(u): np.asarray(s, dtype=np.int64) for u, s in zip(train["user"], train["items"])}
    counts = training_counts(train) if cfg.users.history == "frequent" else None
    pool, interactions = item_counts(sequences.values())
    weights = interactions if cfg.negatives == "popularity" else None
    rows = []
    for user, t, history, summary in zip(states["user"], states["key"], states["history"], states["summary"]):
        user, t = int(user), int(t)
        seq = sequences.get(user)
        if seq is None or not 0 < t < len(seq) or \
                history_window(seq[:t], history_items, cfg.users.history, counts) != [int(i) for i in history]:
            raise ArtifactError(f"the training user state (user {user}, position {t}) does not match train.parquet; "
                                "rerun `mmsrarec summarize-users --force`")
        rng = np.random.default_rng([seed, user, t, 1])
        negatives = sample_negatives(pool, set(seq.tolist()), cfg.neg_per_pos, rng, weights)
        prefix = recommender_prefix(summary, template)
        for item, answer in [(int(seq[t]), YES), *((n, NO) for n in negatives)]:
            image = catalog.images.get(item, "") if images else ""
            text = recommender_candidate(catalog.line(item), template)
            row = {"task": "main", "user": user, "position": t, "item": item,
                   "prompt": recommender_messages(prefix, text, is_vlm, bool(image), template),
                   "completion": assistant(answer)}
            if is_vlm:
                row["images"] = [image] if image else []
            rows.append(row)
    if not rows:
        raise ValueError("no training user state: there is nothing to build MLLM-MSR SFT examples from")
    rows = [rows[i] for i in np.random.default_rng([seed, 97]).permutation(len(rows))]
    return to_dataset(rows, is_vlm)


def score_cases(scorer, catalog: Catalog, cases: pd.DataFrame, summaries: list[str], cfg: MllmMsrConfig,
                progress: bool = True, log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([n_cases, 1 + N] scores of each case's target then its stored negatives, [n_cases] seconds each)."""
    from tqdm.auto import tqdm

    from ..data.images import load_image
    from ..llm.score import score

    images = shows_images(cfg)
    if log is not None and images and cfg.scoring.method == "shared_prefix":
        log("candidate images make every suffix multimodal: scoring batched full prompts instead of a shared prefix")
    elif log is not None and cfg.recommender_prompt and cfg.scoring.method == "shared_prefix" and \
            not _shares_prefix(cfg.recommender_prompt):
        log("mllm_msr.recommender_prompt does not end a line right before {candidate}: each case's prompts share "
            "the text up to the last space before the candidates differ where the tokenizer cuts there (checked "
            "per case), else they are scored as batched full prompts")
    scores, seconds = [], []
    for target, negatives, summary in tqdm(list(zip(cases["target"], cases["negatives"], summaries)),
                                           desc="mllm-msr", unit="case", disable=not progress):
        t0 = time.perf_counter()
        candidates = [int(target), *(int(n) for n in negatives)]
        prompt = case_prompt(scorer.processor, catalog, summary, candidates, scorer.is_vlm, cfg, images, load_image)
        scores.append(score(scorer, prompt, cfg.scoring.method))
        seconds.append(time.perf_counter() - t0)
    return (np.stack(scores) if scores else np.zeros((0, 0), np.float32)), np.asarray(seconds)


def _shares_prefix(template: str) -> bool:
    """A prompt whose user part ends with a newline splits where byte-level BPE pre-tokenizers cut."""
    return template[:template.index("{candidate}")].endswith("\n")


def case_prompt(processor, catalog: Catalog, summary: str, candidates: list[int], is_vlm: bool, cfg: MllmMsrConfig,
                images: bool, load_image) -> RankPrompt:
    """One case's recommender prompts: factored into the shared user prefix and the candidates' suffixes
    where it can be, else (a candidate image opening a mllm_msr.recommender_prompt turn, or a template that
    does not end a line before {candidate}) one full prompt per candidate."""
    template = cfg.recommender_prompt
    prefix = recommender_prefix(summary, template)
    if not template or (not images and _shares_prefix(template)):
        return factored_prompt(processor, catalog, prefix, candidates, is_vlm, (), images, load_image,
                               line=lambda item: recommender_candidate(catalog.line(item), template))
    full, pictures = [], []
    for item in candidates:
        image = item_image(catalog, int(item), load_image) if images else None
        text = recommender_candidate(catalog.line(int(item)), template)
        full.append(render(processor, recommender_messages(prefix, text, is_vlm, image is not None, template)))
        pictures.append([image] if image is not None else [])
    if not any(pictures):
        split = split_at_a_space(tokenizer_of(processor), full)
        if split is not None:
            return split
    return RankPrompt("", full, [], pictures, shared=False)


def split_at_a_space(tokenizer, full: list[str]) -> RankPrompt | None:
    """Text-only full prompts factored into the text they share up to its last space and their rests, when
    the tokenizer cuts there in every one of them (the prefix's tokens followed by the rest's are the whole
    prompt's tokens, so scoring the factored prompt equals scoring the full ones); else None."""
    import os

    cut = os.path.commonprefix(full).rfind(" ")
    if cut <= 0:
        return None
    head = tokenizer(full[0][:cut], add_special_tokens=False)["input_ids"]
    for text in full:
        if tokenizer(text, add_special_tokens=False)["input_ids"] != \
                head + tokenizer(text[cut:], add_special_tokens=False)["input_ids"]:
            return None
    return RankPrompt(full[0][:cut], [text[cut:] for text in full])
