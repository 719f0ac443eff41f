"""The score-text stage: a training-free content baseline on the same cases, lists and metrics.

Every item's text (items.parquet `text`, else its title) is embedded once by the sentence embedder
(text.embedder, all-MiniLM-L6-v2 by default) into a unit vector; an item with neither has the zero vector
(it scores 0 against everything). A case's profile is the recency-weighted mean of the embeddings of its
last text.history_len history items, the j-th most recent (j = 0 the latest) weighted decay**j; a
candidate's score is the cosine of its embedding to that profile. No training, no sampling: the same
inputs give the same scores.

Writes the per-case files of the sampled and full protocols (those of evaluate.protocols) under
text.name, item_embeddings.npy ([n_items + 1, dim] float32, row i = item i, row 0 = padding, zeros) and
methods.json. With text.fuse_cf (when score-cf scored that model: this stage then needs it), also the
sampled files of '<text.name>+<fuse_cf>': both methods' per-case z-scores blended with the weight picked on
valid by evaluate.fuse_metric (evaluate/fusion.py), reported on test with that weight.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cf.base import Cases
from ..data.prepare import load_prepared
from ..device import resolve_device
from ..errors import ArtifactError
from ..evaluate.casefiles import read_scores, write_cases, write_methods, write_scored_lists
from ..evaluate.fusion import fuse, pick_weight
from ..evaluate.protocols import full_counts, sampled_scores
from ..reward.common import embed_texts

SPLITS = ("valid", "test")
EMBEDDINGS_FILE = "item_embeddings.npy"


def item_texts(items) -> list[str]:
    """Each item's text in item order (items.parquet rows are items 1..n): its text, else its title, else ''."""
    items = items.sort_values("item")
    text = items["text"].fillna("").astype(str).str.strip()
    title = items["title"].fillna("").astype(str).str.strip() if "title" in items else text
    return [t or h for t, h in zip(text, title)]


def embed_items(embedder: Any, texts: Sequence[str], batch_size: int, progress: bool = True) -> torch.Tensor:
    """[len(texts) + 1, dim] float32: row 0 (padding) and rows of empty texts are zeros, others unit vectors."""
    if hasattr(embedder, "eval"):
        embedder.eval()  # no dropout: the same texts give the same vectors
    present = [i for i, t in enumerate(texts) if t]
    dim = (getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension)()
    out = torch.zeros(len(texts) + 1, dim, dtype=torch.float32)
    chunk = batch_size * 16
    starts = range(0, len(present), chunk)
    for start in tqdm(starts, desc="embed items", unit="chunk", leave=False, disable=not progress or len(starts) < 4):
        rows = present[start:start + chunk]
        with torch.no_grad():
            out[[i + 1 for i in rows]] = embed_texts(embedder, [texts[i] for i in rows], batch_size)
    return out


def profiles(embeddings: torch.Tensor, histories: Sequence[np.ndarray], history_len: int, decay: float) -> torch.Tensor:
    """[B, dim]: each history's unit profile, the direction of the recency-weighted mean of its last
    `history_len` items' embeddings (weight decay**j for the j-th most recent); zeros when that mean is zero."""
    width = max([min(len(h), history_len) for h in histories] or [1]) or 1
    index = torch.zeros(len(histories), width, dtype=torch.long)
    weight = torch.zeros(len(histories), width, dtype=torch.float64)
    for row, h in enumerate(histories):
        last = np.asarray(h, dtype=np.int64)[-history_len:][::-1].copy()  # most recent first
        index[row, :len(last)] = torch.from_numpy(last)
        weight[row, :len(last)] = torch.as_tensor(decay, dtype=torch.float64) ** torch.arange(len(last))
    mean = (weight[..., None] * embeddings.double()[index]).sum(1) / weight.sum(1, keepdim=True).clamp_min(1e-300)
    norm = mean.norm(dim=1, keepdim=True)
    return torch.where(norm > 1e-12, mean / norm.clamp_min(1e-12), torch.zeros_like(mean))


class TextScorer:
    """Cosine of each candidate's embedding to the case's profile, for the protocols of evaluate/protocols.py."""

    def __init__(self, embeddings: torch.Tensor, history_len: int, decay: float, device: str | torch.device = "cpu"):
        self.embeddings, self.history_len, self.decay = embeddings.double(), history_len, decay
        self.device = torch.device(device)
        self._full = embeddings.float().to(self.device)  # every item, float32, where the full protocol ranks

    def score(self, histories: Sequence[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """[B, C] scores of the candidates (the sampled protocol)."""
        p = profiles(self.embeddings, histories, self.history_len, self.decay)
        cands = self.embeddings[torch.as_tensor(np.asarray(candidates, dtype=np.int64))]
        return torch.einsum("bcd,bd->bc", cands, p).numpy()

    def full_scores(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """[B, n_items + 1] float32 scores of every item (column 0 is padding; the protocol masks it)."""
        p = profiles(self.embeddings, histories, self.history_len, self.decay)
        return p.float().to(self.device) @ self._full.T


def run(ctx) -> None:
    ev, text = ctx.cfg.evaluate, ctx.cfg.text
    data = load_prepared(ctx.input("prepare"))
    n_items = len(data["items"])
    cases = {split: Cases.from_frame(data[split]) for split in SPLITS}

    from ..models.loading import load_embedder  # the one loader of embedders (the GRPO rewards use it too)

    t0 = time.perf_counter()
    embedder = load_embedder(text.embedder)
    load_s = time.perf_counter() - t0
    texts = item_texts(data["items"])
    t0 = time.perf_counter()
    embeddings = embed_items(embedder, texts, text.embedder.batch_size)
    embed_s = time.perf_counter() - t0
    del embedder
    np.save(ctx.out / EMBEDDINGS_FILE, embeddings.numpy(), allow_pickle=False)
    embedded = sum(1 for t in texts if t)
    ctx.log(f"embedded {embedded} of {n_items} items with {text.embedder.name_or_path} in {embed_s:.1f} s "
            f"(loaded in {load_s:.1f} s)" + (f"; {n_items - embedded} without text score 0" if embedded < n_items
                                              else ""))

    scorer = TextScorer(embeddings, text.history_len, text.decay, resolve_device(text.embedder.device))
    shared = {"embedder": text.embedder.name_or_path, "embedder_device": str(scorer.device), "items_embedded": embedded,
              "embed_time_s": round(embed_s, 3), "splits": list(SPLITS)}
    facts: dict[str, dict] = {text.name: {}}
    sampled: dict[str, np.ndarray] = {}
    for protocol in (p for p in ev.protocols if p in ("sampled", "full")):
        row = dict(shared)
        for split, c in cases.items():
            t0 = time.perf_counter()
            if protocol == "sampled":
                sampled[split] = sampled_scores(scorer.score, c, text.batch_size)
                write_scored_lists(ctx.out, text.name, split, c.users, c.candidates(), sampled[split])
            else:
                greater, ties, n = full_counts(scorer.full_scores, c, n_items, text.batch_size,
                                               exclude_history=ev.full_exclude_history)
                write_cases(ctx.out, text.name, "full", split, c.users, greater, ties, n)
            row[f"{split}_eval_time_s"] = round(time.perf_counter() - t0, 3)
        facts[text.name][protocol] = row
    ctx.log(f"{text.name}: scored {', '.join(facts[text.name]) or 'no protocol'} on {len(cases['valid'])} valid "
            f"and {len(cases['test'])} test cases")

    if "score-cf" in (ctx.needs or ()) and sampled:  # stages.py: fuse_cf is set and score-cf scored it
        facts[text.fused_name] = {"sampled": fused_row(ctx, cases, sampled)}
    write_methods(ctx.out, facts)
    ctx.summary.update({"methods": list(facts), "items_embedded": embedded})


def fused_row(ctx, cases: dict[str, Cases], text_scores: dict[str, np.ndarray]) -> dict:
    """The text scores blended with text.fuse_cf's (evaluate/fusion.py), the weight picked on valid; writes its
    sampled files and returns its facts."""
    text, metric = ctx.cfg.text, ctx.cfg.evaluate.fuse_metric
    cf_dir, cf_name = ctx.input("score-cf"), text.fuse_cf
    cf_scores = {}
    for split, c in cases.items():
        frame, cf_scores[split] = read_scores(cf_dir, cf_name, split)
        if (frame["user"].tolist() != c.users.tolist()
                or [list(x) for x in frame["candidates"]] != c.candidates().tolist()):
            raise ArtifactError(f"{cf_dir}: {cf_name} scored other {split} lists than the prepared ones; rerun "
                                "score-cf with --force")
    weight, curve = pick_weight(text_scores["valid"], cf_scores["valid"], metric)
    for split, c in cases.items():
        write_scored_lists(ctx.out, text.fused_name, split, c.users, c.candidates(),
                           fuse(text_scores[split], cf_scores[split], weight))
    ctx.log(f"{text.fused_name}: {cf_name} weight {weight:.2f} (valid {metric} {curve[weight]:.4f}; "
            f"{text.name} alone {curve[0.0]:.4f}, {cf_name} alone {curve[1.0]:.4f})")
    return {"splits": list(SPLITS), "fuse_cf": cf_name, "fuse_weight": weight, "fuse_metric": metric,
            "fuse_valid_curve": {f"{w:.2f}": round(v, 6) for w, v in curve.items()}}
