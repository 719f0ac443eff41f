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
from ..llm.prompts import NO, YES, Catalog, assistant, factored_prompt, main_messages
from ..llm.examples import sample_negatives, to_dataset
from ..llm.train import SFTJob
from .config import MllmMsrConfig
from .prompts import recommender_prefix


def ranker_config(cfg: MllmMsrConfig) -> SFTJob:
    """What llm.train.train_ranker trains: the recommender, its LoRA and SFT settings."""
    return SFTJob(model=cfg.recommender, lora=cfg.lora, sft=cfg.sft)


def shows_images(cfg: MllmMsrConfig) -> bool:
    return cfg.candidate_image and cfg.recommender.kind == "vlm"


def training_examples(states: pd.DataFrame, train: pd.DataFrame, catalog: Catalog, cfg: MllmMsrConfig,
                      history_items: int, seed: int):
    """One positive (the state's next training item) and cfg.neg_per_pos negatives (training items the
    user never interacted with in training) per training state, as a TRL prompt-completion dataset."""
    is_vlm, images = cfg.recommender.kind == "vlm", shows_images(cfg)
    sequences = {int(u): np.asarray(s, dtype=np.int64) for u, s in zip(train["user"], train["items"])}
    pool = np.unique(np.concatenate(list(sequences.values()) or [np.zeros(0, np.int64)]))
    pool = pool[pool > 0]
    rows = []
    for user, t, history, summary in zip(states["user"], states["key"], states["history"], states["summary"]):
        user, t = int(user), int(t)
        seq = sequences.get(user)
        if seq is None or not 0 < t < len(seq) or list(seq[:t][-history_items:]) != [int(i) for i in history]:
            raise ArtifactError(f"the training user state (user {user}, position {t}) does not match train.parquet; "
                                "rerun `mmsrarec summarize-users --force`")
        rng = np.random.default_rng([seed, user, t, 1])
        negatives = sample_negatives(pool, set(seq.tolist()), cfg.neg_per_pos, rng)
        prefix = recommender_prefix(summary)
        for item, answer in [(int(seq[t]), YES), *((n, NO) for n in negatives)]:
            image = catalog.images.get(item, "") if images else ""
            row = {"task": "main", "user": user, "position": t, "item": item,
                   "prompt": main_messages(prefix, catalog.line(item), is_vlm, False, bool(image)),
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
    scores, seconds = [], []
    for target, negatives, summary in tqdm(list(zip(cases["target"], cases["negatives"], summaries)),
                                           desc="mllm-msr", unit="case", disable=not progress):
        t0 = time.perf_counter()
        candidates = [int(target), *(int(n) for n in negatives)]
        prompt = factored_prompt(scorer.processor, catalog, recommender_prefix(summary), candidates, scorer.is_vlm,
                                 (), images, load_image)
        scores.append(score(scorer, prompt, cfg.scoring.method))
        seconds.append(time.perf_counter() - t0)
    return (np.stack(scores) if scores else np.zeros((0, 0), np.float32)), np.asarray(seconds)
