"""The train-ranker stage, and `score_cases`, which the evaluate stage calls to rank stored candidate lists.

train-ranker reads the prepare stage's tables, the item keywords (`keyword_table`), and, with
rank.use_retrieval, the index stage's neighbours of every training case; builds the multitask SFT
examples (tasks.py) and trains the LoRA adapter (train.py). Writes under runs/<name>/train-ranker/:
adapter/ (PEFT), train_log.csv (loss per step), examples.jsonl (every SFT example, image paths in
place of images) and ranker.json (counts, Yes/No token ids, training facts). While it runs,
checkpoints/ holds the resumable state; it is removed when training finishes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import distributed
from ..artifacts import write_json, write_text
from ..config import RunConfig
from ..data.prepare import load_prepared
from ..errors import ArtifactError, DataError
from .config import RankConfig, keyword_stage
from .prompts import Catalog, Votes
from .score import Scorer, load_model, score_many
from .tasks import build_examples, example_counts, training_positions
from .train import ADAPTER, CHECKPOINTS, train_ranker

def keyword_table(ctx: Any) -> Path:
    """The keywords.parquet (columns item, keywords) the ranker uses; see keyword_stage."""
    path = ctx.input(keyword_stage(ctx.cfg)) / "keywords.parquet"
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: stage {keyword_stage(ctx.cfg)!r} wrote no keyword table")
    return path


def read_keywords(path: Path) -> dict[int, list[str]]:
    frame = pd.read_parquet(path, columns=["item", "keywords"])
    return {int(i): [str(k) for k in (kws if kws is not None else [])] for i, kws in zip(frame["item"], frame["keywords"])}


def retrieved_contexts(index_dir: Path, split: str, catalog: Catalog, cap: int) -> dict:
    """The one place the ranker reads the index stage: the retrieved context string of every case.

    train: {(user, t): text} for the training case with history s[:t] and positive s[t] (the index's
    window (user, t - 1), whose next item is s[t]); valid/test: {case row: text}."""
    from ..index.context import context_string
    from ..index.store import load_neighbours

    table = load_neighbours(index_dir, split)
    words = catalog.context_words()
    texts = [context_string(items, sims, words, cap) for items, sims in zip(table["next_items"], table["similarities"])]
    if split == "train":
        keys = zip(table["user"].astype(int), table["position"].astype(int) + 1)
    else:
        keys = table["case"].astype(int)
    return dict(zip(keys, texts))


def similar_users_votes(retriever: Any, histories, users, k: int,
                        log: Callable[[str], None] | None = None) -> list[Votes]:
    """rank.candidate_votes: per history, how many of its k most similar training users (its own user
    never) chose each item next, from the index searched again at k (index.store.Retriever)."""
    t0 = time.perf_counter()
    found = retriever.search(histories, users, k)
    if log is not None:
        log(f"candidate votes: {len(found.users):,} histories searched at k={k} in {time.perf_counter() - t0:.1f} s")
    return [Votes(Counter(row[row > 0].tolist()), k) for row in found.next_items]


def retriever_for(cfg: RunConfig, index_dir: Path, cf_dir: Path, n_items: int):
    """index.store.load_retriever, imported when candidate votes are on (as retrieved_contexts does)."""
    from ..index.store import load_retriever

    return load_retriever(index_dir, cf_dir, cfg, n_items)


def catalog_for(cfg: RankConfig, items: pd.DataFrame, keywords_path: Path | None) -> Catalog:
    keywords = read_keywords(keywords_path) if cfg.use_keywords and keywords_path is not None else None
    return Catalog.build(items, keywords, cfg.use_keywords, cfg.max_keywords, cfg.raw_text_words,
                         cfg.history_keywords)


def run(ctx) -> None:
    cfg, seed = ctx.cfg.rank, ctx.cfg.seed
    if cfg.zero_shot:
        ctx.log("rank.zero_shot: no SFT, the evaluate stage ranks with the untrained model")
        write_json(ctx.out / "ranker.json", {"zero_shot": True, "model": cfg.model.name_or_path, "examples": 0,
                                             "steps": 0, "train_time_s": 0.0})
        return
    examples, keywords_path = sft_examples(ctx)
    counts = example_counts(examples)
    ctx.log("SFT examples: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if distributed.is_main():  # under `accelerate launch`, every process trains; the main one writes
        write_examples(examples, ctx.out / "examples.jsonl")
    facts = train_ranker(examples, cfg, ctx.out, seed, log=ctx.log)
    if not distributed.is_main():
        return
    shutil.rmtree(ctx.out / CHECKPOINTS, ignore_errors=True)  # the adapter is saved; resuming is over
    info = {"examples_per_task": counts, **facts, "model": cfg.model.name_or_path,
            "keywords": str(keywords_path.parent.name) if keywords_path else None,
            "retrieval": cfg.use_retrieval}
    write_json(ctx.out / "ranker.json", info)
    ctx.summary.update({k: info[k] for k in ("examples", "steps", "train_time_s", "first_loss", "last_loss")})


def sft_examples(ctx) -> tuple[Any, Path | None]:
    """(the multitask SFT examples of the run, the keyword table they use) from the stages before
    train-ranker (`ctx.input(stage)` gives a stage's folder)."""
    cfg = ctx.cfg.rank
    data = load_prepared(ctx.input("prepare"))
    keywords_path = keyword_table(ctx) if cfg.use_keywords else None
    catalog = catalog_for(cfg, data["items"], keywords_path)
    context: Callable[[int, int], str] | None = None
    if cfg.use_retrieval:
        contexts = retrieved_contexts(ctx.input("index"), "train", catalog, cfg.max_context_keywords)
        context = lambda user, t: contexts.get((user, t), "")  # noqa: E731
    positions = training_positions(data["train"], cfg.examples_per_user, ctx.cfg.seed)
    votes = None
    if cfg.candidate_votes:
        retriever = retriever_for(ctx.cfg, ctx.input("index"), ctx.input("train-cf"), len(data["items"]))
        found = similar_users_votes(retriever, [seq[:t] for _, t, seq in positions], [u for u, _, _ in positions],
                                    cfg.candidate_votes, ctx.log)
        table = {(user, t): v for (user, t, _), v in zip(positions, found)}
        votes = lambda user, t: table[(user, t)]  # noqa: E731
    return build_examples(data, catalog, cfg, ctx.cfg.seed, context, cfg.model.kind == "vlm", votes,
                          positions), keywords_path


def write_examples(examples, path: Path) -> None:
    columns = [c for c in examples.column_names if c != "images"]
    rows = examples.select_columns(columns).to_list()
    if "images" in examples.column_names:  # paths, not pixels
        from datasets import Image, List

        paths = examples.cast_column("images", List(Image(decode=False)))["images"]
        for row, imgs in zip(rows, paths):
            row["images"] = [img["path"] for img in imgs]
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


# ----------------------------------------------------------------------------- scoring for evaluate

@dataclass
class RankerInputs:
    """Where score_cases finds what it needs: the run config and the folders of earlier stages."""

    cfg: RunConfig
    prepare: Path
    ranker: Path
    keywords: Path | None = None  # keywords.parquet (None: rank.use_keywords is off)
    index: Path | None = None     # the index stage's folder (None: neither retrieval nor candidate votes)
    cf: Path | None = None        # the train-cf folder (rank.candidate_votes: its model searches the index)

    @classmethod
    def from_context(cls, ctx: Any) -> "RankerInputs":
        rank = ctx.cfg.rank
        return cls(ctx.cfg, ctx.input("prepare"), ctx.input("train-ranker"),
                   keyword_table(ctx) if rank.use_keywords else None,
                   ctx.input("index") if rank.use_retrieval or rank.candidate_votes else None,
                   ctx.input("train-cf") if rank.candidate_votes else None)


@dataclass
class LoadedRanker:
    """The trained ranker with what scoring reads, loaded once for any number of score_cases calls."""

    inputs: RankerInputs
    data: dict
    catalog: Catalog
    scorer: Scorer
    retriever: Any = None  # index.store.Retriever, with rank.candidate_votes


def load_ranker(source: Any) -> LoadedRanker:
    """source: a StageContext of a stage that ran after train-ranker (e.g. evaluate), or RankerInputs."""
    inputs = source if isinstance(source, RankerInputs) else RankerInputs.from_context(source)
    cfg = inputs.cfg.rank
    data = load_prepared(inputs.prepare)
    adapter = inputs.ranker / ADAPTER
    if not cfg.zero_shot and not (adapter / "adapter_config.json").is_file():
        raise ArtifactError(f"{adapter} holds no trained adapter; run `mmsrarec train-ranker` first")
    retriever = None
    if cfg.candidate_votes:
        if inputs.index is None or inputs.cf is None:
            raise ArtifactError("rank.candidate_votes needs the index and train-cf folders (RankerInputs.index, .cf)")
        retriever = retriever_for(inputs.cfg, inputs.index, inputs.cf, len(data["items"]))
    model, processor, is_vlm = load_model(cfg.model, adapter=None if cfg.zero_shot else str(adapter))
    return LoadedRanker(inputs, data, catalog_for(cfg, data["items"], inputs.keywords),
                        Scorer.from_model(model, processor, is_vlm, cfg.score_batch_size), retriever)


def score_cases(source: Any, split: str, cases: pd.DataFrame | None = None, method: str | None = None,
                log: Callable[[str], None] | None = None, progress: bool = True,
                store: Path | None = None) -> np.ndarray:
    """[n_cases, 1 + N] ranker scores of each case's stored candidates, the target first, then its
    negatives (the column order of cf.base.Cases.candidates()).

    source: a LoadedRanker (load_ranker), or what load_ranker takes (then the model is loaded for this
    call only). cases: rows of the prepare stage's <split> table (default: all of it); their index is
    the case number, which keys the retrieved context. method: rank.scoring unless given.
    store: a folder to score into resumably, shared by the processes of a torchrun / accelerate job,
    each scoring its share of the cases (rank/sharded.py); every process returns all the scores."""
    ranker = source if isinstance(source, LoadedRanker) else load_ranker(source)
    inputs, catalog, scorer = ranker.inputs, ranker.catalog, ranker.scorer
    cfg = inputs.cfg.rank
    cases = ranker.data[split] if cases is None else cases
    if "negatives" not in cases:
        raise DataError(f"the {split} cases carry no stored negatives to rank", path=str(inputs.prepare))
    contexts = retrieved_contexts(inputs.index, split, catalog, cfg.max_context_keywords) \
        if cfg.use_retrieval and inputs.index is not None else {}
    votes = None
    if cfg.candidate_votes:
        found = similar_users_votes(ranker.retriever, cases["history"], cases["user"], cfg.candidate_votes, log)
        votes = dict(zip(cases.index.astype(int), found))
    if store is not None:
        from .sharded import score_frame_sharded
        return score_frame_sharded(scorer, catalog, cases, contexts, cfg, method or cfg.scoring, store, log=log,
                                   progress=progress, votes=votes)
    return score_frame(scorer, catalog, cases, contexts, cfg, method or cfg.scoring, log=log, progress=progress,
                       votes=votes)


def users_per_forward(cfg: RankConfig, n_candidates: int) -> int:
    """Users scored together so that a suffix forward holds up to rank.score_batch_size candidate rows
    (1 when one user's candidates already fill it, as with the CPU defaults)."""
    return max(1, cfg.score_batch_size // max(n_candidates, 1))


def score_frame(scorer: Scorer, catalog: Catalog, cases: pd.DataFrame, contexts: dict, cfg: RankConfig,
                method: str, log: Callable[[str], None] | None = None, progress: bool = True,
                votes: dict | None = None) -> np.ndarray:
    """Scores of every case of `cases` (columns history, target, negatives) with a loaded scorer; with
    shared_prefix, several users per forward pass where rank.score_batch_size leaves room (score_many).
    contexts / votes: case number -> retrieved keywords / candidate votes (rank.candidate_votes)."""
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
                                   None if votes is None else votes[int(case)]))
    group = users_per_forward(cfg, len(prompts[0])) if prompts else 1
    rows: list[np.ndarray] = []
    with tqdm(total=len(prompts), desc="rank", unit="case", disable=not progress) as bar:
        for start in range(0, len(prompts), group):
            rows += score_many(scorer, prompts[start:start + group], method)
            bar.update(len(prompts[start:start + group]))
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

