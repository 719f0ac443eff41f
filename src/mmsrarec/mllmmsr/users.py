"""summarize-users: recurrent user-preference summaries for every user state a later stage needs.

A user state is a history window: `history_items` items of the history before a target, in time order:
the most recent ones (users.history 'recent'), or the ones with the most training interactions
('frequent', the official preprocessing's top-K by item frequency; counted in train.parquet alone).
- train: positions t of a training sequence s (sampled by llm.examples.training_positions, or the last
  ones with users.train_positions 'last'), window of s[:t], whose target s[t] becomes an SFT positive.
  Only train.parquet is read, so no valid or test interaction can enter a training summary.
- valid / test: every case of the prepare tables, window of its history (never the target).

A window is cut into blocks of `block_size` items from its oldest item (the official code's
`range(0, len(items), 3)`); block k is summarized in one LLM call that sees its items and the
summary of blocks 0..k-1. The summary of blocks 0..k depends only on their items, so it is stored
once under a chain key ("4,5,6|7,8,9" = two blocks) and shared by every state whose window starts
with those blocks. Chains are generated level by level (all first blocks, then all second blocks,
...), in batches sorted by prompt length, into a ChunkStore: a killed run resumes with what is left.
The batches of a level are fixed up front from all its chains (plan_batches), so a resumed run, or one
whose store removed an unreadable chunk, generates each chain in the batch, and with users.do_sample
under the seed, of an uninterrupted run: its summaries are the uninterrupted run's.
Each chain row keeps its prompt, its previous chain and its share of its batch's wall time; a state's
summary time is the sum over its chain's blocks, i.e. what summarizing that user alone would cost.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import faults
from ..llm.examples import training_positions
from ..summarize.store import ChunkStore
from .config import UserSettings
from .generator import Generator, timed
from .prompts import block_prompt

SPLITS = ("valid", "test", "train")  # generation order; the evaluation splits first


def training_counts(train: pd.DataFrame) -> dict[int, int]:
    """Interactions per item in the training sequences (train.parquet): what users.history 'frequent' ranks by."""
    items = [np.asarray(s, dtype=np.int64) for s in train["items"]]
    values, counts = np.unique(np.concatenate(items) if items else np.zeros(0, np.int64), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def history_window(history: Sequence[int], n: int, mode: str, counts: Mapping[int, int] | None = None) -> list[int]:
    """The n items of `history` (oldest first) a state summarizes, in time order: the last n ('recent'), or
    the n with the highest counts[item] ('frequent'; an item without a count has 0; ties: the later one)."""
    history = [int(i) for i in history]
    if mode == "recent" or len(history) <= n:
        return history[-n:]
    if counts is None:
        raise ValueError("users.history 'frequent' needs the training interaction counts")
    top = sorted(range(len(history)), key=lambda k: (-counts.get(history[k], 0), -k))[:n]
    return [history[k] for k in sorted(top)]


def window_blocks(window: Sequence[int], cfg: UserSettings) -> list[tuple[int, ...]]:
    """A state's window (already cut to history_items items) in blocks of block_size, oldest first."""
    window = [int(i) for i in window]
    return [tuple(window[i:i + cfg.block_size]) for i in range(0, len(window), cfg.block_size)]


def chain_keys(blocks: Sequence[Sequence[int]]) -> list[str]:
    """The key of each prefix chain of blocks: blocks 0..k -> 'items of 0|items of 1|...|items of k'."""
    keys, parts = [], []
    for block in blocks:
        parts.append(",".join(str(int(i)) for i in block))
        keys.append("|".join(parts))
    return keys


def user_states(data: dict[str, pd.DataFrame], cfg: UserSettings, seed: int) -> pd.DataFrame:
    """Columns split, user, key (train: the target's position t; valid/test: the case's row in the
    prepare table), history (the window), chain (its full chain key; '' without history), blocks."""
    rows = []
    if cfg.train_positions == "last":
        positions = last_positions(data["train"], cfg.examples_per_user)
    else:
        positions = training_positions(data["train"], cfg.examples_per_user, seed)
    if cfg.max_train_states and len(positions) > cfg.max_train_states:
        keep = np.sort(np.random.default_rng([seed, 31]).choice(len(positions), cfg.max_train_states, replace=False))
        positions = [positions[k] for k in keep]
    for user, t, seq in positions:
        rows.append(("train", user, t, [int(i) for i in seq[:t]]))
    for split in ("valid", "test"):
        for case, (user, history) in enumerate(zip(data[split]["user"], data[split]["history"])):
            rows.append((split, int(user), case, [int(i) for i in history]))
    states = pd.DataFrame(rows, columns=["split", "user", "key", "history"])
    counts = training_counts(data["train"]) if cfg.history == "frequent" else None
    windows = states["history"].map(lambda h: history_window(h, cfg.history_items, cfg.history, counts))
    blocks = windows.map(lambda w: window_blocks(w, cfg))
    return states.assign(history=[[i for b in bs for i in b] for bs in blocks],
                         chain=[(chain_keys(bs) or [""])[-1] for bs in blocks], blocks=blocks.map(len))


def last_positions(train: pd.DataFrame, per_user: int) -> list[tuple[int, int, np.ndarray]]:
    """(user, t, sequence) for the last `per_user` positions t >= 1 of each training sequence (0 = all)."""
    out = []
    for user, seq in zip(train["user"].to_numpy(np.int64), train["items"]):
        s = np.asarray(seq, dtype=np.int64)
        ts = np.arange(1, len(s))
        out.extend((int(user), int(t), s) for t in (ts[-per_user:] if per_user else ts))
    return out


def batch_seed(seed: int, chains: Sequence[str]) -> int:
    """The seed of one sampled batch: from the run's seed and the chain keys of its batch in the fixed plan
    (plan_batches), so a rerun, a resumed run and a repaired one draw the same samples."""
    digest = hashlib.sha256(("|".join([str(seed), *chains])).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def plan_batches(keys: Sequence[str], prompts: Sequence[str], batch_size: int) -> list[list[int]]:
    """The batches of one level of one split, as indices: every chain of the level, done or not, sorted
    by prompt length (then key) and cut into batch_size pieces. Done chains stay in the plan, so the
    batches of the rest do not depend on what an earlier run stored."""
    order = sorted(range(len(keys)), key=lambda i: (len(prompts[i]), keys[i]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def stored_summaries(store: ChunkStore) -> dict[str, str]:
    if not store.done():
        return {}
    frame = store.merged()
    return dict(zip(frame[store.key], frame["summary"]))


def summarize_states(states: pd.DataFrame, item_line: Callable[[int], str], cfg: UserSettings,
                     load: Callable[[], Generator], store: ChunkStore, log: Callable[[str], None] = print,
                     seed: int = 0) -> int:
    """Generate every chain the states need and `store` lacks; returns how many were generated now.

    The batches are fixed up front (plan_batches over every chain a split needs that no earlier split
    needs, done or not), and one batch is one chunk. A run generates the batches with a chain missing,
    each whole (a batch stored in part, which no run writes today, is generated whole and only its
    missing rows are stored). So every chain is generated in the same batch, with
    the same neighbours and, with cfg.do_sample, under the same batch_seed(seed, the batch's chains),
    whether the run was uninterrupted, resumed after a kill, or repaired (ChunkStore removed a chunk
    from the middle): sampled summaries are as reproducible as greedy ones, i.e. as far as the
    generator is deterministic for a given batch and seed."""
    summaries = stored_summaries(store)
    generator: Generator | None = None
    generated = 0
    earlier: set[str] = set()  # the chains of the earlier splits' plans
    for split in SPLITS:
        needed: dict[str, tuple[int, tuple[int, ...], str]] = {}  # chain -> (level, its block, previous chain)
        for history in states.loc[states["split"] == split, "history"]:
            blocks = window_blocks(history, cfg)
            keys = chain_keys(blocks)
            for level, (key, block) in enumerate(zip(keys, blocks)):
                if key not in earlier:
                    needed.setdefault(key, (level, block, keys[level - 1] if level else ""))
        earlier.update(needed)
        todo = [k for k in needed if k not in summaries]
        if not todo:
            continue
        log(f"{split}: {len(todo):,} summary blocks to generate ({len(needed) - len(todo):,} already done)")
        generator = generator or load()
        bar = tqdm(total=len(todo), desc=f"summarize-users {split}", unit="block")
        for level in sorted({needed[k][0] for k in todo}):
            chains = [(k, block, prev) for k, (lv, block, prev) in needed.items() if lv == level]
            prompts = [block_prompt(cfg, [item_line(i) for i in block], summaries[prev] if prev else None)
                       for _, block, prev in chains]
            for idx in plan_batches([c[0] for c in chains], prompts, cfg.batch_size):
                if all(chains[i][0] in summaries for i in idx):
                    continue
                sampling = cfg.sampling()
                if sampling:
                    sampling["seed"] = batch_seed(seed, [chains[i][0] for i in idx])
                answers, share = timed(generator, [prompts[i] for i in idx], None, cfg.max_new_tokens, **sampling)
                rows = [{"chain": chains[i][0], "summary": answer, "level": level, "items": list(chains[i][1]),
                         "previous": chains[i][2], "prompt": prompts[i], "split": split, "seconds": share}
                        for i, answer in zip(idx, answers) if chains[i][0] not in summaries]
                store.append(pd.DataFrame(rows))
                faults.step("summarize-users")
                summaries.update((r["chain"], r["summary"]) for r in rows)
                generated += len(rows)
                bar.update(len(rows))
        bar.close()
    return generated


def chain_prefixes(chain: str) -> list[str]:
    """'a|b|c' -> ['a', 'a|b', 'a|b|c']: the chains whose summaries a state's summary is built on."""
    parts = chain.split("|") if chain else []
    return ["|".join(parts[:k + 1]) for k in range(len(parts))]


def attach_summaries(states: pd.DataFrame, chains: pd.DataFrame) -> pd.DataFrame:
    """states + summary (of its full chain; '' without history) + summary_s (the seconds of its blocks)."""
    seconds = dict(zip(chains["chain"], chains["seconds"]))
    text = dict(zip(chains["chain"], chains["summary"]))
    missing = sorted({c for c in states["chain"] if c and c not in text})
    if missing:
        raise RuntimeError(f"{len(missing)} user summaries were not generated, e.g. chain {missing[0]!r}")
    return states.assign(summary=[text.get(c, "") for c in states["chain"]],
                         summary_s=[float(sum(seconds[k] for k in chain_prefixes(c))) for c in states["chain"]])
