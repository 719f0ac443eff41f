"""One worker process of tests/test_sharding.py, as torchrun would start it (RANK / WORLD_SIZE in
the environment): summarizes its share of <folder>/items.parquet into <folder>/items_store; once
every item is stored (by any process) builds the keyword catalog from the merged table and scores
its share of <folder>/cases.parquet into <folder>/cases_store; writes all scores to
<folder>/scores-<rank>.npy.

    python tests/shard_worker.py <folder> <model>
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmsrarec.models.config import ModelConfig
from mmsrarec.rank.config import RankConfig
from mmsrarec.rank.prompts import Catalog
from mmsrarec.llm.score import Scorer, load_model
from mmsrarec.sharding import Shard, current_shard, wait_until_stored
from mmsrarec.summarize.config import SummarizeConfig
from mmsrarec.summarize.stage import summarize_items
from mmsrarec.summarize.store import ChunkStore

torch.set_num_threads(1)
SCORING = "naive"  # the slowest method: keeps each share long enough to be killed midway


def summarize_config(model: str) -> SummarizeConfig:
    return SummarizeConfig(model=ModelConfig(name_or_path=model, device="cpu"), max_new_tokens=32, batch_size=1)


def keywords_table(folder: Path, model: str, shard: Shard) -> pd.DataFrame:
    items = pd.read_parquet(folder / "items.parquet")
    store = ChunkStore(folder / "items_store", writer=shard.tag)
    summarize_items(items, summarize_config(model), store, log=lambda m: None, shard=shard)
    wait_until_stored(store, items["item"].tolist(), poll_s=0.05)
    return store.merged()


def scorer_and_catalog(items: pd.DataFrame, keywords: pd.DataFrame, model: str) -> tuple[Scorer, Catalog]:
    lm, tokenizer, is_vlm = load_model(ModelConfig(name_or_path=model, device="cpu"))
    return (Scorer.from_model(lm, tokenizer, is_vlm),
            Catalog.build(items, dict(zip(keywords["item"], keywords["keywords"])), use_keywords=True))


def main(folder: Path, model: str) -> None:
    from mmsrarec.rank.sharded import score_frame_sharded

    shard = current_shard()
    keywords = keywords_table(folder, model, shard)
    scorer, catalog = scorer_and_catalog(pd.read_parquet(folder / "items.parquet"), keywords, model)
    scores = score_frame_sharded(scorer, catalog, pd.read_parquet(folder / "cases.parquet"), {}, RankConfig(),
                                 SCORING, folder / "cases_store", progress=False, shard=shard, flush_cases=1)
    np.save(folder / f"scores-{shard.tag}.npy", scores)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
