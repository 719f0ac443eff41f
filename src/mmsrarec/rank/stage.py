"""The train-ranker stage, and `score_cases`, which the scoring stages (score_stage.py) call to rank stored lists.

train-ranker reads the prepare stage's tables, the item keywords (`keyword_table`), and, with
rank.use_retrieval, the index stage's neighbours of every training case; builds the multitask SFT
examples (tasks.py) and trains the LoRA adapter (train.py). Writes under runs/<name>/train-ranker/:
adapter/ (PEFT), train_log.csv (loss per step), examples.jsonl (every SFT example, image paths in
place of images) and ranker.json (counts, Yes/No token ids, training facts). While it runs,
checkpoints/ holds the resumable state; it is removed when training finishes.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import distributed, faults
from ..artifacts import write_json
from ..config import RunConfig
from ..data.prepare import load_prepared
from ..errors import ArtifactError, DataError
from ..llm.examples import write_examples
from ..llm.score import Scorer, load_model
from ..llm.train import ADAPTER, CHECKPOINTS, train_ranker
from .config import RankConfig, keyword_stage, ranker_needs
from .prompts import CandidateNotes, Catalog
from .sharded import score_frame, score_frame_sharded
from .tasks import build_examples, example_counts, training_positions


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
                        log: Callable[[str], None] | None = None) -> list[CandidateNotes]:
    """rank.candidate_votes: per history, how many of its k most similar training users (its own user
    never) chose each item next, from the index searched again at k (index.store.Retriever)."""
    t0 = time.perf_counter()
    found = retriever.search(histories, users, k)
    if log is not None:
        log(f"candidate votes: {len(found.users):,} histories searched at k={k} in {time.perf_counter() - t0:.1f} s")
    return [CandidateNotes(votes=Counter(row[row > 0].tolist()), k=k) for row in found.next_items]


def cf_ranks(model: Any, histories, items: np.ndarray | None = None, batch_size: int = 256) -> list[np.ndarray]:
    """rank.candidate_cf_rank: per history, the rank (1 = first) of items[b] when the CF model scores
    every item for histories[b]: 1 + the number of items that score higher, where padding and the
    history's own items do not compete (as in the full-ranking protocol); ties share a rank.
    items: [B, C]; None: every item (each array then indexed by item id, column 0 meaningless)."""
    import torch

    out = []
    for start in range(0, len(histories), batch_size):
        hist = [np.asarray(h, dtype=np.int64) for h in histories[start:start + batch_size]]
        with torch.no_grad():
            scores = model.full_scores(hist).float().cpu()
        competing = scores.clone()
        competing[:, 0] = -torch.inf
        for row, h in enumerate(hist):
            competing[row, torch.tensor(h)] = -torch.inf
        asc = competing.sort(dim=1).values
        if items is None:
            asked = scores
        else:
            asked = scores.gather(1, torch.as_tensor(np.asarray(items[start:start + len(hist)], dtype=np.int64)))
        higher = asc.shape[1] - torch.searchsorted(asc, asked.contiguous(), right=True)
        out.extend((higher + 1).numpy().astype(np.int64))
    return out


@dataclass
class NoteMaker:
    """The candidate notes (prompts.CandidateNotes) of any case: the votes of similar training users
    (rank.candidate_votes; the index searched again) and a CF model's ranks (rank.candidate_cf_rank);
    None when neither is on (the paper)."""

    cfg: RankConfig
    retriever: Any = None  # index.store.Retriever, with candidate_votes
    cf_model: Any = None   # the model named by candidate_cf_rank, in cf.base.SeenItemsOnly
    n_items: int = 0

    @property
    def levels_of(self) -> int:
        """CandidateNotes.levels_of: the catalogue's size when ranks show as levels, else 0."""
        return self.n_items if self.cfg.candidate_cf_rank_as == "level" else 0

    @property
    def ranked_by(self) -> str:
        return type(getattr(self.cf_model, "model", self.cf_model)).__name__ if self.cf_model is not None else ""

    @classmethod
    def load(cls, run_cfg: RunConfig, index_dir: Path | None, cf_dir: Path | None, n_items: int,
             train: pd.DataFrame) -> "NoteMaker | None":
        """train: prepare's training sequences (column items): the items the CF model saw; the ones it never
        saw rank last, tied, in its notes (cf.base.SeenItemsOnly)."""
        rank = run_cfg.rank
        if not rank.candidate_votes and not rank.candidate_cf_rank:
            return None
        if cf_dir is None or (rank.candidate_votes and index_dir is None):
            raise ArtifactError("rank.candidate_votes needs the index and train-cf folders, rank.candidate_cf_rank "
                                "the train-cf folder (RankerInputs.index, .cf)")
        # the CF models run on the CPU, wherever the ranker trains or scores: what they put into prompts (votes,
        # ranks) is then the same on every machine, as the rerank lists are (rank/score_stage.py)
        retriever = cf_model = None
        if rank.candidate_votes:
            from ..index.store import load_retriever  # late, as retrieved_contexts imports the index

            retriever = load_retriever(index_dir, cf_dir, run_cfg, n_items, device="cpu")
        if rank.candidate_cf_rank:
            from ..cf.base import SeenItemsOnly, seen_items
            from ..cf.stage import load_trained  # late: the CF stage imports the pipeline

            cf_model = load_trained(Path(cf_dir), rank.candidate_cf_rank, run_cfg, n_items, device="cpu")[0]
            cf_model = SeenItemsOnly(cf_model, seen_items(train["items"], n_items))
        return cls(rank, retriever, cf_model, n_items)

    def notes(self, histories, users, items: np.ndarray | None = None,
              log: Callable[[str], None] | None = None) -> list[CandidateNotes]:
        """One CandidateNotes per history; items: [B, C] the items whose CF ranks are kept (None: all)."""
        histories, users = list(histories), list(users)
        notes = (similar_users_votes(self.retriever, histories, users, self.cfg.candidate_votes, log)
                 if self.retriever is not None else [CandidateNotes() for _ in histories])
        if self.cf_model is not None:
            t0 = time.perf_counter()
            ranks = cf_ranks(self.cf_model, histories, items)
            for i, (note, row) in enumerate(zip(notes, ranks)):
                note.ranks = row if items is None else dict(zip(np.asarray(items[i]).tolist(), row.tolist()))
                note.ranked_by, note.levels_of = self.ranked_by, self.levels_of
            if log is not None:
                log(f"candidate CF ranks: {len(histories):,} histories ranked by {self.cfg.candidate_cf_rank} in "
                    f"{time.perf_counter() - t0:.1f} s")
        return notes

    def for_training(self, positions: list, log: Callable[[str], None] | None = None,
                     teacher: Callable[[int], Any] | None = None):
        """A tasks.NoteSource for the training cases `positions` ((user, t, sequence)): the votes of all
        searched at once; the CF ranks of all items computed per case when asked (one row in memory), by
        teacher(user) when given (rank.candidate_cf_rank_folds), else by the train-cf model."""
        if self.retriever is None:
            voted = {}
        else:
            found = similar_users_votes(self.retriever, [seq[:t] for _, t, seq in positions],
                                        [u for u, _, _ in positions], self.cfg.candidate_votes, log)
            voted = {(user, t): note for (user, t, _), note in zip(positions, found)}
        histories = {(user, t): seq[:t] for user, t, seq in positions}

        def notes(user: int, t: int) -> CandidateNotes:
            note = voted.get((user, t), CandidateNotes())
            if self.cf_model is None:
                return note
            model = self.cf_model if teacher is None else teacher(user)
            return replace(note, ranks=cf_ranks(model, [histories[(user, t)]])[0], ranked_by=self.ranked_by,
                           levels_of=self.levels_of)

        return notes


def catalog_for(cfg: RankConfig, items: pd.DataFrame, keywords_path: Path | None) -> Catalog:
    keywords = read_keywords(keywords_path) if cfg.use_keywords and keywords_path is not None else None
    return Catalog.build(items, keywords, cfg.use_keywords, cfg.max_keywords, cfg.raw_text_words,
                         cfg.history_keywords)


def run(ctx) -> None:
    cfg, seed = ctx.cfg.rank, ctx.cfg.seed
    if cfg.zero_shot:
        ctx.log("rank.zero_shot: no SFT, the scoring stages rank with the untrained model")
        write_json(ctx.out / "ranker.json", {"zero_shot": True, "model": cfg.model.name_or_path, "examples": 0,
                                             "steps": 0, "train_time_s": 0.0})
        return
    examples, keywords_path = sft_examples(ctx)
    counts = example_counts(examples)
    ctx.log("SFT examples: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    if distributed.is_main():  # under `accelerate launch`, every process trains; the main one writes
        write_examples(examples, ctx.out / "examples.jsonl")
    facts = train_ranker(examples, cfg, ctx.out, seed, log=ctx.log, callbacks=faults.callbacks("train-ranker"))
    faults.step("train-ranker")  # the adapter and log are saved, the checkpoints still there
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
    needs = ranker_needs(ctx.cfg)
    maker = NoteMaker.load(ctx.cfg, ctx.input("index") if "index" in needs else None,
                           ctx.input("train-cf") if "train-cf" in needs else None, len(data["items"]), data["train"])
    teacher = None
    if cfg.candidate_cf_rank and cfg.candidate_cf_rank_folds:
        from .teachers import fold_teachers

        folder = ctx.out / "cf-rank-teachers"
        # trained once, by the main process; the others load what it saved
        teacher = fold_teachers(data, ctx.cfg, folder, ctx.log) if distributed.is_main() else None
        distributed.barrier()
        teacher = teacher or fold_teachers(data, ctx.cfg, folder, ctx.log)
    notes = maker.for_training(positions, ctx.log, teacher) if maker is not None else None
    return build_examples(data, catalog, cfg, ctx.cfg.seed, context, cfg.model.kind == "vlm", notes,
                          positions), keywords_path


# ----------------------------------------------------------------------------- scoring (score_stage.py)

@dataclass
class RankerInputs:
    """Where score_cases finds what it needs: the run config and the folders of earlier stages."""

    cfg: RunConfig
    prepare: Path
    ranker: Path
    keywords: Path | None = None  # keywords.parquet (None: rank.use_keywords is off)
    index: Path | None = None     # the index stage's folder (None: neither retrieval nor candidate votes)
    cf: Path | None = None        # the train-cf folder (candidate votes: its model searches the index; CF ranks)

    @classmethod
    def from_context(cls, ctx: Any) -> "RankerInputs":
        needs = ranker_needs(ctx.cfg)  # what train-ranker reads is what scoring reads
        return cls(ctx.cfg, ctx.input("prepare"), ctx.input("train-ranker"),
                   keyword_table(ctx) if ctx.cfg.rank.use_keywords else None,
                   ctx.input("index") if "index" in needs else None,
                   ctx.input("train-cf") if "train-cf" in needs else None)


@dataclass
class LoadedRanker:
    """The trained ranker with what scoring reads, loaded once for any number of score_cases calls."""

    inputs: RankerInputs
    data: dict
    catalog: Catalog
    scorer: Scorer
    notes: NoteMaker | None = None  # rank.candidate_votes / candidate_cf_rank


def load_ranker(source: Any) -> LoadedRanker:
    """source: a StageContext of a stage that ran after train-ranker (e.g. score-ranker), or RankerInputs."""
    inputs = source if isinstance(source, RankerInputs) else RankerInputs.from_context(source)
    cfg = inputs.cfg.rank
    data = load_prepared(inputs.prepare)
    adapter = inputs.ranker / ADAPTER
    if not cfg.zero_shot and not (adapter / "adapter_config.json").is_file():
        raise ArtifactError(f"{adapter} holds no trained adapter; run `mmsrarec train-ranker` first")
    notes = NoteMaker.load(inputs.cfg, inputs.index, inputs.cf, len(data["items"]), data["train"])
    model, processor, is_vlm = load_model(cfg.model, adapter=None if cfg.zero_shot else str(adapter))
    return LoadedRanker(inputs, data, catalog_for(cfg, data["items"], inputs.keywords),
                        Scorer.from_model(model, processor, is_vlm, cfg.score_batch_size), notes)


def case_inputs(ranker: "LoadedRanker", split: str, cases: pd.DataFrame,
                log: Callable[[str], None] | None = None) -> tuple[dict, dict | None]:
    """What the prompts of `cases` show beyond the catalogue: {case: retrieved context} and {case: candidate
    notes} (None when neither candidate votes nor CF ranks are on)."""
    inputs, cfg = ranker.inputs, ranker.inputs.cfg.rank
    contexts = retrieved_contexts(inputs.index, split, ranker.catalog, cfg.max_context_keywords) \
        if cfg.use_retrieval and inputs.index is not None else {}
    notes = None
    if ranker.notes is not None:
        from ..cf.base import Cases

        candidates = Cases.from_frame(cases).candidates()
        notes = dict(zip(cases.index.astype(int), ranker.notes.notes(cases["history"], cases["user"], candidates, log)))
    return contexts, notes


def score_cases(source: Any, split: str, cases: pd.DataFrame | None = None, method: str | None = None,
                log: Callable[[str], None] | None = None, progress: bool = True,
                store: Path | None = None, prepared: tuple[dict, dict | None] | None = None) -> np.ndarray:
    """[n_cases, 1 + N] ranker scores of each case's stored candidates, the target first, then its
    negatives (the column order of cf.base.Cases.candidates()).

    source: a LoadedRanker (load_ranker), or what load_ranker takes (then the model is loaded for this
    call only). cases: rows of the prepare stage's <split> table (default: all of it); their index is
    the case number, which keys the retrieved context. method: rank.scoring unless given.
    store: a folder to score into resumably, shared by the processes of a torchrun / accelerate job,
    each scoring its share of the cases (rank/sharded.py); every process returns all the scores.
    prepared: case_inputs(...) of these cases, when the caller already has them."""
    ranker = source if isinstance(source, LoadedRanker) else load_ranker(source)
    inputs, catalog, scorer = ranker.inputs, ranker.catalog, ranker.scorer
    cfg = inputs.cfg.rank
    cases = ranker.data[split] if cases is None else cases
    if "negatives" not in cases:
        raise DataError(f"the {split} cases carry no stored negatives to rank", path=str(inputs.prepare))
    contexts, notes = prepared if prepared is not None else case_inputs(ranker, split, cases, log)
    if store is not None:
        return score_frame_sharded(scorer, catalog, cases, contexts, cfg, method or cfg.scoring, store, log=log,
                                   progress=progress, notes=notes)
    return score_frame(scorer, catalog, cases, contexts, cfg, method or cfg.scoring, log=log, progress=progress,
                       notes=notes)
