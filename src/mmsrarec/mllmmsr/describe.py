"""describe-items: one short paragraph per item, from its text and, with a VLM, its image.

Items are generated in batches sorted by prompt length (items with an image and items without form
separate batches) into a ChunkStore, one chunk per batch, so a killed run resumes with the items not
yet described. Each row records the prompt it came from and its share of the batch's wall time.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from .. import faults
from ..summarize.store import ChunkStore
from .config import ItemSettings
from .generator import Generator, timed
from .prompts import item_prompt


def describe_items(items: pd.DataFrame, cfg: ItemSettings, load: Callable[[], Generator], store: ChunkStore,
                   log: Callable[[str], None] = print) -> int:
    """Describe the items of `items` not yet in `store`; returns how many were generated now."""
    from ..data.images import load_image

    todo = items[~items["item"].isin(store.done())]
    if todo.empty:
        return 0
    generator = load()
    with_images = bool(generator.is_vlm and cfg.use_images)
    images = pd.Series("", index=todo.index)
    if with_images and "image" in todo:
        images = todo["image"].fillna("").astype(str)
    prompts = [item_prompt(cfg.image_prompt if path else cfg.text_prompt, title, text, cfg.max_text_words)
               for title, text, path in zip(todo["title"], todo["text"], images)]
    todo = todo.assign(prompt=prompts, picture=images.to_numpy(), length=[len(p) for p in prompts])
    todo = todo.assign(has_picture=todo["picture"] != "").sort_values(["has_picture", "length", "item"])
    log(f"describing {len(todo):,} items ({len(items) - len(todo):,} already done), batch {cfg.batch_size}"
        + (f", {int(todo['has_picture'].sum()):,} with their image" if with_images else ""))
    bar = tqdm(total=len(todo), desc="describe-items", unit="item")
    for _, group in todo.groupby("has_picture", sort=True):
        for start in range(0, len(group), cfg.batch_size):
            batch = group.iloc[start:start + cfg.batch_size]
            store.append(_describe_batch(batch, cfg, generator, load_image))
            faults.step("describe-items")
            bar.update(len(batch))
    bar.close()
    return len(todo)


def _describe_batch(batch: pd.DataFrame, cfg: ItemSettings, generator: Generator, load_image) -> pd.DataFrame:
    pictures = [load_image(path) if path else None for path in batch["picture"]]
    prompts = list(batch["prompt"])
    for i, (title, text, picture) in enumerate(zip(batch["title"], batch["text"], pictures)):
        if picture is None:  # no image, or one that no longer loads: describe from the text
            prompts[i] = item_prompt(cfg.text_prompt, title, text, cfg.max_text_words)
    answers, seconds = [""] * len(batch), [0.0] * len(batch)
    for with_picture in (True, False):
        idx = [i for i, p in enumerate(pictures) if (p is not None) == with_picture]
        if not idx:
            continue
        out, share = timed(generator, [prompts[i] for i in idx],
                           [pictures[i] for i in idx] if with_picture else None, cfg.max_new_tokens)
        for i, answer in zip(idx, out):
            answers[i], seconds[i] = answer, share
    return pd.DataFrame({"item": batch["item"].astype("int64").to_numpy(), "description": answers,
                         "with_image": [p is not None for p in pictures], "prompt": prompts, "seconds": seconds})


def read_descriptions(path) -> dict[int, str]:
    frame = pd.read_parquet(path, columns=["item", "description"])
    return {int(i): str(d or "") for i, d in zip(frame["item"], frame["description"])}
