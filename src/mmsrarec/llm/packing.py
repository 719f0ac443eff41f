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

VLMs of the Qwen2-VL family (PackedVisionCollator; `packs` says which models pack): TRL's vision
collator processes a case's examples (images and text, as unpacked training would), then they are
packed the same way when their images are the same and all image tokens lie in the shared prefix (rank.history_image: the last history item's image before the
text); the row keeps one copy of the image. Examples with an image of their own (rank.candidate_image)
stay rows of their own. Qwen2-VL and Qwen2.5-VL use 3-D (mrope) positions, where an image advances the
position by its grid, not its token count: the prefix's come from the model's get_rope_index and every
block continues at their maximum + 1 on all three axes, what generate (and llm/score.py) do.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

IGNORE = -100
PREFIX = 0   # segment id of the shared prefix (and of a row that is one example)
PAD = -1     # segment id of padding


def _rope_index(model: Any) -> Any:
    """The get_rope_index of a (PEFT-wrapped) Qwen2-VL-family model's inner model, or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "model", None), "get_rope_index", None)


def packs(model: Any, is_vlm: bool) -> bool:
    """Whether sft.pack can pack this model's examples: a text LM always; a VLM when it places image tokens
    by get_rope_index (Qwen2-VL, Qwen2.5-VL: a flat pixel layout with image_grid_thw). Other VLMs (LLaVA,
    Idefics3) train unpacked."""
    return not is_vlm or _rope_index(model) is not None


def case_keys(dataset) -> list[Any]:
    """The training case of each row ((user, position), both >= 0; with an `images` column, and the paths
    of the row's images), or the row's own index when it has none: the rows that may share a prefix."""
    names = dataset.column_names
    if "user" not in names or "position" not in names:
        return list(range(len(dataset)))
    images = [()] * len(dataset)
    if "images" in names:  # paths, not pixels
        from datasets import Image, List

        images = [tuple(i["path"] or "" for i in row)
                  for row in dataset.cast_column("images", List(Image(decode=False)))["images"]]
    return [(int(u), int(t), paths) if u >= 0 and t >= 0 else i
            for i, (u, t, paths) in enumerate(zip(dataset["user"], dataset["position"], images))]


def case_groups(dataset) -> list[list[int]]:
    """The rows of each training case (case_keys), cases in the order of their first row."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(case_keys(dataset)):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


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
    0 on the shared prefix and k on block k (1-based). One example is a row of segment 0 (plain causal
    attention). Raises ValueError when the examples share no token before their first answer."""
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

    all_ids, all_labels = dataset["input_ids"], dataset["labels"]
    rows = []
    for members in case_groups(dataset):
        ids, labs = [all_ids[i] for i in members], [all_labels[i] for i in members]
        try:
            rows.append(pack_case(ids, labs))
        except ValueError:  # nothing shared before an answer: each example alone
            rows.extend(pack_case([a], [b]) for a, b in zip(ids, labs))
    return Dataset.from_list(rows)


def positions(segments):
    """Position ids [B, L] of right-padded segment ids [B, L] (PAD on padding): the shared prefix counts
    from 0, each block continues it (prefix length + index within the block), padding is at 0."""
    import torch

    segments = torch.as_tensor(segments)
    index = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    run_start = torch.cummax(torch.where(starts, index, 0), dim=1).values  # where each token's run begins
    prefix_len = (segments == PREFIX).sum(1, keepdim=True)
    in_block = (segments != PREFIX) & (segments != PAD)
    out = torch.where(in_block, prefix_len + index - run_start, index)
    return out.masked_fill(segments == PAD, 0)


def block_mask(segments):
    """The attention mask [B, 1, L, L] (bool, True = may attend) of right-padded segment ids [B, L]: query i
    attends key j <= i when j is in the shared prefix or in i's block; a padding query attends itself alone
    (a row with nothing to attend would give NaN). Built where `segments` is (the model's device)."""
    import torch

    segments = torch.as_tensor(segments)
    width = segments.shape[1]
    index = torch.arange(width, device=segments.device)
    causal = index[None, :] <= index[:, None]
    key = segments[:, None, :]
    query = segments[:, :, None]
    mask = causal[None] & (key != PAD) & (query != PAD) & ((key == PREFIX) | (key == query))
    mask |= (index[None, :] == index[:, None])[None] & (query == PAD)
    return mask[:, None]


class PackedCollator:
    """Right-pads packed rows: input_ids, labels (-100 on padding), segments (PAD on padding) and
    position_ids. The block mask is built from the segments on the model's device (AnswerLossSFTTrainer)."""

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
        return {"input_ids": ids, "labels": labels, "segments": segments, "position_ids": positions(segments)}


class GroupedExamples:
    """A map-style dataset over `dataset` (raw VLM examples) whose item i is the list of case i's
    examples (case_keys order of first appearance); the trainer's sampler shuffles cases."""

    def __init__(self, dataset):
        self.dataset, self.groups = dataset, case_groups(dataset)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[dict]:
        return [self.dataset[j] for j in self.groups[i]]


class PackedVisionCollator:
    """Packs VLM examples: `inner` (TRL's vision collator) processes each case's examples as unpacked
    training would; a case whose examples have the same image pixels, all of whose image tokens lie in
    the shared prefix, becomes one packed row (pack_case) with one copy of the image, any other case a
    row per example. Returns input_ids, labels, segments, mm_token_type_ids, pixel_values and
    image_grid_thw (the rows' images in row order) and images_per_row; the positions need the model
    (vision_positions, in the trainer)."""

    def __init__(self, inner: Any, pad_token_id: int):
        self.inner, self.pad_rows = inner, PackedCollator(pad_token_id)

    def _rows(self, members: list[dict]) -> list[dict]:
        import torch

        batch = self.inner([dict(m) for m in members])
        mask = batch["attention_mask"].bool()
        grid = batch.get("image_grid_thw")
        patches = grid.prod(-1).tolist() if grid is not None else []
        per_member = [len(m.get("images") or []) for m in members]
        bounds = np.cumsum([0, *per_member])
        examples = []
        for i in range(len(members)):
            imgs = range(bounds[i], bounds[i + 1])
            start = sum(patches[:bounds[i]])
            n_pixels = sum(patches[j] for j in imgs)
            examples.append({
                "input_ids": batch["input_ids"][i][mask[i]].tolist(), "labels": batch["labels"][i][mask[i]].tolist(),
                "mm": batch["mm_token_type_ids"][i][mask[i]].tolist() if "mm_token_type_ids" in batch else None,
                "pixels": batch["pixel_values"][start:start + n_pixels] if n_pixels else None,
                "grid": grid[bounds[i]:bounds[i + 1]] if grid is not None and len(imgs) else None})
        first = examples[0]
        same_images = all((e["pixels"] is None) == (first["pixels"] is None) and
                          (e["pixels"] is None or (e["pixels"].shape == first["pixels"].shape
                                                   and torch.equal(e["pixels"], first["pixels"])))
                          for e in examples)
        if len(examples) > 1 and same_images and all(e["mm"] is not None for e in examples):
            try:
                row = pack_case([e["input_ids"] for e in examples], [e["labels"] for e in examples])
            except ValueError:
                row = None
            if row is not None:
                shared = row["segments"].count(PREFIX)
                if all(not any(e["mm"][shared:]) for e in examples):  # every image token in the prefix
                    row["mm"] = first["mm"][:shared] + [0] * (len(row["input_ids"]) - shared)
                    return [{**row, "pixels": first["pixels"], "grid": first["grid"]}]
        return [{**pack_case([e["input_ids"]], [e["labels"]]), "mm": e["mm"], "pixels": e["pixels"],
                 "grid": e["grid"]} for e in examples]

    def __call__(self, cases: list[list[dict]]) -> dict:
        import torch

        rows = [row for members in cases for row in self._rows(members)]
        out = self.pad_rows(rows)
        if all(r["mm"] is not None for r in rows):
            mm = torch.zeros_like(out["input_ids"])
            for i, r in enumerate(rows):
                mm[i, :len(r["mm"])] = torch.tensor(r["mm"])
            out["mm_token_type_ids"] = mm
        pixels = [r["pixels"] for r in rows if r["pixels"] is not None]
        if pixels:
            out["pixel_values"] = torch.cat(pixels)
            out["image_grid_thw"] = torch.cat([r["grid"] for r in rows if r["grid"] is not None])
        out["images_per_row"] = torch.tensor([0 if r["grid"] is None else len(r["grid"]) for r in rows])
        return out


def vision_positions(model: Any, batch: dict):
    """Position ids of packed VLM rows: 1-D ones (positions()) for a model without get_rope_index; for
    Qwen2-VL / Qwen2.5-VL [3, B, L] mrope ones: each row's prefix through get_rope_index (an arange on
    all three axes when the row has no image), each block at the prefix's maximum + 1 + its index, padding 0."""
    import torch

    flat = positions(batch["segments"])
    rope_index = _rope_index(model)
    if rope_index is None:
        return flat
    segments = batch["segments"]
    out = flat[None].repeat(3, 1, 1)
    grids = batch.get("image_grid_thw")
    first_image = 0
    for row, n_images in enumerate(batch["images_per_row"].tolist()):
        if not n_images:
            continue
        prefix = segments[row] == PREFIX
        ids = batch["input_ids"][row][prefix][None]
        at, _ = rope_index(input_ids=ids, mm_token_type_ids=batch["mm_token_type_ids"][row][prefix][None],
                           image_grid_thw=grids[first_image:first_image + n_images],
                           attention_mask=torch.ones_like(ids))
        first_image += n_images
        n = int(prefix.sum())
        out[:, row, :n] = at[:, 0]
        block = (segments[row] != PREFIX) & (segments[row] != PAD)
        out[:, row, block] = int(at.max()) + 1 + flat[row, block] - n
    return out


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


def rows_per_batch(batch_size: int, keys: Sequence[Any]) -> int:
    """sft.batch_size counts examples: the packed rows per batch that hold about that many (at least 1), given
    each example's case key (case_keys), so that an epoch has about as many steps packed as not."""
    return max(1, round(batch_size * len(set(keys)) / max(1, len(keys))))
