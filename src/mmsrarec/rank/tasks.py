"""Multitask SFT examples, built from training interactions only.

A training case is (user, t) on a training sequence s: history s[:t], positive s[t] (t >= 1).
Tasks (LC-Rec style auxiliary tasks beside the main one):
  main               history + retrieved keywords + one candidate (with its notes: rank.candidate_votes,
                     rank.candidate_cf_rank) -> "Yes" / "No"
                     (the positive, and `neg_per_pos` negatives: training items the user never
                     interacted with in any split)
  aux_choice         history -> letter of the next item among `choice_candidates` lettered items (the
                     positive and distractors drawn as the main task's negatives)
  aux_title          an item's keywords -> its title (items that occur in training sequences)
  aux_next_keywords  history -> keywords of the next item
Nothing from the valid or test splits enters an example: histories, positives, negatives and titles
all come from train.parquet (the valid/test tables are read only to keep a user's held-out items out
of its negatives). rank.negatives says how negatives are drawn (main and aux_choice; the other tasks
have none): `popularity` in proportion to each item's training interaction count, the distribution the
positives follow, so popularity alone does not separate them; `uniform` every unseen item alike.
Every draw comes from a generator seeded by (seed, user, position, purpose), so
the examples are identical run after run.

rank.stand_in_cold (a share, 0 = off) makes some examples look like the cold-item protocol's test cases
(docs/protocols.md), which no other example does: a seeded share of the training items are stand-ins
for cold items. They leave every example's history and the title task, a main or choice example whose
positive is a stand-in draws its negatives among the stand-ins, and every other example's negatives
exclude them. So a stand-in is only ever shown as a candidate among stand-ins, never in a history, the
way a cold item is at test: telling them apart takes their content, not what the ranker learned about
them elsewhere. (The retrieved context still comes from the index over all training windows.)

The output is a `datasets.Dataset` in TRL's conversational prompt-completion format (`prompt`: the
user turn, `completion`: the assistant answer), so SFT puts the loss on the answer tokens only; VLM
examples carry an `images` column of image paths decoded by `datasets.Image`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from ..llm.examples import item_counts, sample_negatives, to_dataset, training_positions  # noqa: F401
from .config import RankConfig
from .prompts import (LETTERS, NO, YES, CandidateNotes, Catalog, assistant, candidate_line, choice_text, main_messages,
                      main_prefix_text, next_keywords_text, title_text, user_message)

Context = Callable[[int, int], str]  # (user, t) -> retrieved keywords for training case (user, t)
NoteSource = Callable[[int, int], CandidateNotes]  # (user, t) -> candidate notes for training case (user, t)
TASKS = ("main", "aux_choice", "aux_title", "aux_next_keywords")


def interacted_items(data: dict[str, pd.DataFrame]) -> dict[int, set[int]]:
    """user -> every item it interacted with, in any split (kept out of its negatives)."""
    seen: dict[int, set[int]] = {}
    for user, seq in zip(data["train"]["user"], data["train"]["items"]):
        seen.setdefault(int(user), set()).update(int(i) for i in seq)
    for split in ("valid", "test"):
        frame = data.get(split)
        if frame is None:
            continue
        for user, hist, target in zip(frame["user"], frame["history"], frame["target"]):
            seen.setdefault(int(user), set()).update([*(int(i) for i in hist), int(target)])
    return seen


def task_counts(cfg: RankConfig, n_positions: int, n_items: int) -> dict[str, int]:
    """Examples per task: the configured shares of max_examples (or, uncapped, of what the main task
    makes from every sampled position), limited by the cases available."""
    shares = cfg.tasks.shares()
    group = 1 + cfg.neg_per_pos
    if cfg.max_examples:
        counts = {task: int(round(share * cfg.max_examples)) for task, share in shares.items()}
    else:
        n_main = n_positions * group
        counts = {task: int(round(n_main * share / shares["main"])) for task, share in shares.items()}
    counts["main"] = min(n_positions, max(1, counts["main"] // group)) * group
    for task in ("aux_choice", "aux_next_keywords"):
        counts[task] = min(counts[task], n_positions)
    counts["aux_title"] = min(counts["aux_title"], n_items)
    return counts


def build_examples(data: dict[str, pd.DataFrame], catalog: Catalog, cfg: RankConfig, seed: int,
                   context: Context | None = None, is_vlm: bool = False, notes: NoteSource | None = None,
                   positions: list | None = None):
    """The SFT dataset (see the module docstring); deterministic given `seed`. notes: shown on the
    candidate lines of the main and choice tasks (rank.candidate_votes, candidate_cf_rank). positions: the
    training cases (default: training_positions(train, cfg.examples_per_user, seed))."""
    context = context or (lambda user, t: "")
    if positions is None:
        positions = training_positions(data["train"], cfg.examples_per_user, seed)
    if not positions:
        raise ValueError("no training sequence has two items: there is nothing to build SFT examples from")
    pool, interactions = item_counts(data["train"]["items"])
    seen = interacted_items(data)
    weights = interactions if cfg.negatives == "popularity" else None
    stand_ins = stand_in_items(pool, cfg.stand_in_cold, seed)
    builder = _Builder(catalog, cfg, context, is_vlm, seen, pool, seed, notes, weights, stand_ins)
    if len(stand_ins):
        positions = [p for p in positions if len(builder.history(p[2], p[1]))]  # a history is left
        if not positions:
            raise ValueError("rank.stand_in_cold leaves no training case with a history: lower it")
    counts = task_counts(cfg, len(positions), len(pool) - len(stand_ins))
    rows: list[dict] = []
    order = {task: np.random.default_rng([seed, i, 99]).permutation(len(positions)) for i, task in enumerate(TASKS)}
    for k in order["main"][:counts["main"] // (1 + cfg.neg_per_pos)]:
        rows.extend(builder.main(*positions[k]))
    for k in order["aux_choice"][:counts["aux_choice"]]:
        rows.append(builder.choice(*positions[k]))
    for k in order["aux_next_keywords"][:counts["aux_next_keywords"]]:
        rows.append(builder.next_keywords(*positions[k]))
    described = np.array([i for i in np.setdiff1d(pool, stand_ins) if catalog.descriptions.get(int(i))],
                         dtype=np.int64)
    for item in np.random.default_rng([seed, 98]).permutation(described)[:counts["aux_title"]]:
        rows.append(builder.title(int(item)))
    rows = [rows[i] for i in np.random.default_rng([seed, 97]).permutation(len(rows))]
    return to_dataset(rows, is_vlm)


def stand_in_items(pool: np.ndarray, share: float, seed: int) -> np.ndarray:
    """rank.stand_in_cold: the seeded share of the training items (`pool`, sorted) that the SFT examples
    treat as cold items (sorted; empty when share is 0)."""
    n = int(round(share * len(pool)))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 96]).choice(pool, size=n, replace=False)).astype(np.int64)


class _Builder:
    def __init__(self, catalog: Catalog, cfg: RankConfig, context: Context, is_vlm: bool,
                 seen: dict[int, set[int]], pool: np.ndarray, seed: int, notes: NoteSource | None,
                 weights: np.ndarray | None, stand_ins: np.ndarray):
        self.catalog, self.cfg, self.context, self.is_vlm = catalog, cfg, context, is_vlm
        self.seen, self.seed, self.notes = seen, seed, notes
        # the negatives' pools (and their weights for rank.negatives = popularity; None: uniform): the warm
        # items, and the stand-ins for cold items (rank.stand_in_cold), which only a stand-in's examples draw
        self.stand_in_array, self.stand_ins = stand_ins, set(stand_ins.tolist())
        cold = np.isin(pool, stand_ins)
        self.pools = {False: (pool[~cold], None if weights is None else weights[~cold]),
                      True: (pool[cold], None if weights is None else weights[cold])}

    def _negatives(self, user: int, positive: int, n: int, rng: np.random.Generator) -> list[int]:
        pool, weights = self.pools[positive in self.stand_ins]
        return sample_negatives(pool, self.seen.get(user, set()), n, rng, weights)

    def history(self, seq: np.ndarray, t: int) -> np.ndarray:
        """What an example at position t of `seq` shows as history: seq[:t] less the stand-ins."""
        history = seq[:t]
        return history[~np.isin(history, self.stand_in_array)] if self.stand_ins else history

    def _context(self, user: int, t: int) -> str:
        return self.context(user, t) if self.cfg.use_retrieval else ""

    def _notes(self, user: int, t: int) -> CandidateNotes | None:
        return self.notes(user, t) if self.notes is not None else None

    def _image(self, item: int) -> str:
        return self.catalog.images.get(item, "") if self.is_vlm else ""

    def _row(self, task: str, user: int, t: int, item: int, prompt: list[dict], answer: str,
             images: list[str] = ()) -> dict:
        row = {"task": task, "user": user, "position": t, "item": item, "prompt": prompt,
               "completion": assistant(answer)}
        if self.is_vlm:
            row["images"] = list(images)
        return row

    def main(self, user: int, t: int, seq: np.ndarray) -> list[dict]:
        history, positive = self.history(seq, t), int(seq[t])
        rng = np.random.default_rng([self.seed, user, t, 1])
        negatives = self._negatives(user, positive, self.cfg.neg_per_pos, rng)
        prefix = main_prefix_text(self.catalog, history, self._context(user, t), self.cfg.history_len)
        history_image = self._image(int(history[-1])) if self.cfg.history_image else ""
        notes = self._notes(user, t)
        rows = []
        for item, answer in [(positive, YES), *((n, NO) for n in negatives)]:
            candidate_image = self._image(item) if self.cfg.candidate_image else ""
            messages = main_messages(prefix, candidate_line(self.catalog, item, notes), self.is_vlm,
                                     bool(history_image), bool(candidate_image))
            images = [p for p in (history_image, candidate_image) if p]
            rows.append(self._row("main", user, t, item, messages, answer, images))
        return rows

    def choice(self, user: int, t: int, seq: np.ndarray) -> dict:
        positive = int(seq[t])
        rng = np.random.default_rng([self.seed, user, t, 2])
        options = [positive, *self._negatives(user, positive, self.cfg.choice_candidates - 1, rng)]
        options = [options[i] for i in rng.permutation(len(options))]
        text = choice_text(self.catalog, self.history(seq, t), self._context(user, t), options, self.cfg.history_len,
                           self._notes(user, t))
        return self._row("aux_choice", user, t, positive, [user_message([text], self.is_vlm)],
                         LETTERS[options.index(positive)])

    def next_keywords(self, user: int, t: int, seq: np.ndarray) -> dict:
        positive = int(seq[t])
        text = next_keywords_text(self.catalog, self.history(seq, t), self._context(user, t), self.cfg.history_len)
        answer = self.catalog.descriptions.get(positive) or self.catalog.titles[positive]
        return self._row("aux_next_keywords", user, t, positive, [user_message([text], self.is_vlm)], answer)

    def title(self, item: int) -> dict:
        return self._row("aux_title", -1, -1, item, [user_message([title_text(self.catalog, item)], self.is_vlm)],
                         self.catalog.titles[item])


def example_counts(dataset) -> dict[str, int]:
    tasks = pd.Series(dataset["task"]).value_counts()
    return {task: int(tasks.get(task, 0)) for task in TASKS}

