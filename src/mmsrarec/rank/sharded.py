"""Ranker scoring shared by several processes and resumable: each process scores its share of the
cases (mmsrarec.sharding: case number % world == rank) into one ChunkStore (key "case", a list
column "scores"), skipping cases already stored by anyone; every process then waits until all cases
are stored and returns the same [n_cases, 1 + N] array, in the order of `cases`.

A killed run loses at most the cases scored since its last flush; the rerun scores only those.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import ArtifactError
from ..sharding import Shard, current_shard, wait_until_stored
from ..summarize.store import ChunkStore
from .config import RankConfig
from .prompts import Catalog
from ..llm.score import Scorer, score_many


def score_frame_sharded(scorer: Scorer, catalog: Catalog, cases: pd.DataFrame, contexts: dict, cfg: RankConfig,
                        method: str, store_dir: Path, log: Callable[[str], None] | None = None,
                        progress: bool = True, shard: Shard | None = None, flush_cases: int = 64,
                        flush_s: float = 60.0, notes: dict | None = None) -> np.ndarray:
    """score_frame over this process's share of `cases` (index = case number) into `store_dir`, then
    the scores of all cases once every process has stored its share. A chunk is written every
    `flush_cases` cases or `flush_s` seconds, whichever comes first."""

    shard = shard or current_shard()
    store = ChunkStore(store_dir, key="case", writer=shard.tag)
    numbers = cases.index.to_numpy(np.int64)
    todo = cases[shard.owns(numbers) & ~np.isin(numbers, list(store.done()))]
    if log is not None and shard.world > 1:
        log(f"rank {shard.rank} of {shard.world}: scoring {len(todo):,} cases")
    pending, last_flush = [], time.monotonic()
    group = users_per_forward(cfg, 1 + len(cases["negatives"].iloc[0])) if len(cases) else 1
    numbers_todo = todo.index.tolist()
    for start in range(0, len(numbers_todo), group):
        chunk = numbers_todo[start:start + group]
        t0 = time.perf_counter()
        scores = score_frame(scorer, catalog, todo.loc[chunk], contexts, cfg, method, progress=False, notes=notes)
        each = (time.perf_counter() - t0) / len(chunk)  # users scored together share the time
        pending += [(int(n), s.astype(np.float32).tolist(), each) for n, s in zip(chunk, scores)]
        done = start + len(chunk)
        if len(pending) >= flush_cases or time.monotonic() - last_flush >= flush_s or done == len(todo):
            store.append(pd.DataFrame({"case": [c for c, _, _ in pending], "scores": [s for _, s, _ in pending],
                                       "seconds": [t for _, _, t in pending]}))
            pending, last_flush = [], time.monotonic()
            if progress and log is not None:
                log(f"rank {shard.rank}: {done:,} / {len(todo):,} cases scored")
    wait_until_stored(store, numbers.tolist(), log=log or print)
    return stored_scores(store, numbers)


def stored_scores(store: ChunkStore, numbers: np.ndarray) -> np.ndarray:
    """[len(numbers), C] float32 scores from the store, row i for case numbers[i]."""
    frame = store.merged().set_index("case")
    missing = [int(n) for n in numbers if n not in frame.index]
    if missing:
        raise ArtifactError(f"{store.folder}: no scores for {len(missing)} case(s), e.g. {missing[:5]}")
    if not len(numbers):
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(s, np.float32) for s in frame.loc[numbers, "scores"]])


def stored_seconds(store_dir: Path) -> np.ndarray:
    """Seconds spent scoring each stored case, by whichever process and run scored it (NaN for cases
    stored without a time): per-user times that a resumed or sharded evaluation does not distort."""
    if not Path(store_dir).is_dir():
        return np.zeros(0)
    frame = ChunkStore(store_dir, key="case").merged()
    if "seconds" not in frame:
        return np.full(len(frame), np.nan)
    return frame["seconds"].to_numpy(dtype=float)


def users_per_forward(cfg: RankConfig, n_candidates: int) -> int:
    """Users scored together so that a suffix forward holds up to rank.score_batch_size candidate rows
    (1 when one user's candidates already fill it, as with the CPU defaults)."""
    return max(1, cfg.score_batch_size // max(n_candidates, 1))


def score_frame(scorer: Scorer, catalog: Catalog, cases: pd.DataFrame, contexts: dict, cfg: RankConfig,
                method: str, log: Callable[[str], None] | None = None, progress: bool = True,
                notes: dict | None = None) -> np.ndarray:
    """Scores of every case of `cases` (columns history, target, negatives) with a loaded scorer; with
    shared_prefix, several users per forward pass where rank.score_batch_size leaves room (score_many).
    contexts / notes: case number -> retrieved keywords / candidate notes (prompts.CandidateNotes)."""
    from tqdm.auto import tqdm

    from ..data.images import load_image
    from .prompts import rank_prompt

    if log is not None and cfg.candidate_image and method == "shared_prefix":
        log("candidate images make every suffix multimodal: scoring batched full prompts instead of a shared prefix")
    processor = scorer.processor
    prompts = []
    for case, history, target, negatives in zip(cases.index, cases["history"], cases["target"], cases["negatives"]):
        candidates = [int(target), *(int(n) for n in negatives)]
        prompts.append(rank_prompt(processor, catalog, [int(h) for h in history], contexts.get(int(case), ""),
                                   candidates, cfg.history_len, scorer.is_vlm, cfg.history_image,
                                   cfg.candidate_image, load_image,
                                   None if notes is None else notes[int(case)]))
    group = users_per_forward(cfg, len(prompts[0])) if prompts else 1
    rows: list[np.ndarray] = []
    with tqdm(total=len(prompts), desc="rank", unit="case", disable=not progress) as bar:
        for start in range(0, len(prompts), group):
            rows += score_many(scorer, prompts[start:start + group], method)
            bar.update(len(prompts[start:start + group]))
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

