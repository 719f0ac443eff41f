"""Shared-prefix SFT (sft.pack): the examples of one training case run as one sequence, the way scoring
runs a case's candidates on one prefix (llm/score.py).

A training case (user, position) makes 1 + neg_per_pos main-task examples (the positive and its
negatives), and maybe an aux_choice or aux_next_keywords example: every one of them starts with the same
chat header, history and retrieved keywords, and only the last ~45 tokens (the candidate line and the
answer) differ. Unpacked, each example carries that prefix through the model again. Packed, the row is

    [shared prefix | block 1 | block 2 | ...]     block k = example k's tokens after the shared prefix

with a block attention mask (a block's tokens attend to the prefix and to the earlier tokens of their
own block, nothing else) and position ids that restart after the prefix in every block (block k's
tokens sit at the positions they have in example k). So every answer token sees exactly the tokens,
at exactly the positions, that it sees in its unpacked example: the per-example losses and their
gradients are the unpacked ones (tests/test_packing.py), for a fraction of the tokens.

The shared prefix is the common token prefix of the case's tokenized examples (TRL's own tokenization,
so the blocks hold exactly the tokens that unpacked training would), ended before any example's
first answer token and at least one token before it: a block's first token is never an answer, since
the token before it in the row belongs to another block. Examples of no case (the aux_title task) and
cases left with one example are rows of their own, with plain causal attention.

Text LMs only: a VLM prefix holds image tokens whose processing (and, for Qwen2-VL, 3-D positions)
TRL's vision collator does per example, so VLM examples train unpacked.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

IGNORE = -100
PREFIX = 0   # segment id of the shared prefix (and of a row that is one example)
PAD = -1     # segment id of padding


def case_keys(dataset) -> list[Any]:
    """The training case of each row ((user, position), both >= 0), or the row's own index when it has
    none: the rows that may share a prefix."""
    names = dataset.column_names
    if "user" not in names or "position" not in names:
        return list(range(len(dataset)))
    return [(int(u), int(t)) if u >= 0 and t >= 0 else i
            for i, (u, t) in enumerate(zip(dataset["user"], dataset["position"]))]


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for j in range(n):
        token = first[j]
        if any(s[j] != token for s in sequences[1:]):
            return j
    return n


def pack_case(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> dict:
    """One row from one case's examples: {"input_ids", "labels", "segments", "examples"}; segments[j] is
    0 on the shared prefix and k on block k (1-based). One example, or examples that share no token
    before their answers, come back as one row per example (a list of such dicts is returned then)."""
    if len(input_ids) == 1:
        return {"input_ids": list(input_ids[0]), "labels": list(labels[0]),
                "segments": [PREFIX] * len(input_ids[0]), "examples": 1}
    first_answer = min(next((j for j, y in enumerate(row) if y != IGNORE), len(row)) for row in labels)
    shared = min(common_prefix(input_ids), first_answer - 1)
    if shared < 1:
        raise ValueError("no shared prefix")
    ids, labs, segs = list(input_ids[0][:shared]), [IGNORE] * shared, [PREFIX] * shared
    for k, (row_ids, row_labels) in enumerate(zip(input_ids, labels), start=1):
        ids.extend(row_ids[shared:])
        labs.extend(row_labels[shared:])
        segs.extend([k] * (len(row_ids) - shared))
    return {"input_ids": ids, "labels": labs, "segments": segs, "examples": len(input_ids)}


def pack_dataset(dataset):
    """TRL-prepared rows (input_ids, labels; user, position) -> one row per training case (pack_case), in
    the order of each case's first row. Returns a datasets.Dataset with input_ids, labels, segments and
    examples (how many examples the row holds)."""
    from datasets import Dataset

    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(case_keys(dataset)):
        groups.setdefault(key, []).append(i)
    all_ids, all_labels = dataset["input_ids"], dataset["labels"]
    rows = []
    for members in groups.values():
        ids, labs = [all_ids[i] for i in members], [all_labels[i] for i in members]
        try:
            rows.append(pack_case(ids, labs))
        except ValueError:  # nothing shared before an answer: each example alone
            rows.extend(pack_case([a], [b]) for a, b in zip(ids, labs))
    return Dataset.from_list(rows)


def positions_and_mask(segments):
    """(position ids [B, L], attention mask [B, 1, L, L] bool, True = may attend) of right-padded segment
    ids [B, L] (PAD on padding). Query i attends key j <= i when j is in the shared prefix or in i's block;
    a padding query attends itself alone (a row with nothing to attend would give NaN)."""
    import torch

    segments = torch.as_tensor(segments)
    b, width = segments.shape
    index = torch.arange(width)
    causal = index[None, :] <= index[:, None]
    key = segments[:, None, :]
    query = segments[:, :, None]
    mask = causal[None] & (key != PAD) & (query != PAD) & ((key == PREFIX) | (key == query))
    mask |= torch.eye(width, dtype=torch.bool)[None] & (query == PAD)
    # a block's position continues the prefix: P + (index within the block)
    prefix_len = (segments == PREFIX).sum(1, keepdim=True)
    starts = torch.zeros_like(segments)
    for row in range(b):
        seg = segments[row]
        changes = torch.nonzero(seg[1:] != seg[:-1]).flatten() + 1
        begin = torch.zeros(width, dtype=torch.long)
        begin[changes] = changes
        begin = torch.cummax(begin, 0).values  # the index where each token's run begins
        starts[row] = begin
    in_block = (segments != PREFIX) & (segments != PAD)
    positions = torch.where(in_block, prefix_len + index[None] - starts, index[None].expand(b, width))
    return positions, mask[:, None]


class PackedCollator:
    """Right-pads packed rows: input_ids, labels (-100 on padding), segments (PAD on padding),
    position_ids, and the block attention mask (4-D bool) as attention_mask."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        segments = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            segments[i, :n] = torch.tensor(r["segments"])
        positions, mask = positions_and_mask(segments)
        return {"input_ids": ids, "labels": labels, "segments": segments, "position_ids": positions,
                "attention_mask": mask}


ATTENTION = ("sdpa", "eager")  # the kernels that take a 4-D mask tensor as it is


def model_mask(mask, attn_implementation: str, dtype):
    """The block mask as the model's attention kernel takes it: sdpa a bool mask, eager an additive one
    (0 where attended, the dtype's minimum elsewhere)."""
    import torch

    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(f"sft.pack needs attention 'sdpa' or 'eager' (a 4-D mask), not {attn_implementation!r}: "
                     "set model.attn_implementation to one of them, or sft.pack to false")


def tokens(dataset) -> int:
    return int(np.sum([len(ids) for ids in dataset["input_ids"]]))
