"""Sharded summarization and scoring: two processes split the work by rank, write into one
ChunkStore, one is killed (SIGKILL) midway, its rerun does only what is missing, and the merged
table equals a single-process run's, every key exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsrarec.errors import ConfigError
from mmsrarec.sharding import Shard, current_shard
from mmsrarec.summarize.store import ChunkStore

WORKER = Path(__file__).with_name("shard_worker.py")
sys.path.insert(0, str(WORKER.parent))
import shard_worker  # noqa: E402


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    from mmsrarec.models.tiny import tiny_causal_lm
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def test_shares_partition_the_keys():
    keys = np.arange(1, 1001)
    for world in (1, 2, 3, 4):
        owners = np.stack([Shard(r, world).owns(keys) for r in range(world)])
        assert (owners.sum(0) == 1).all()  # every key has exactly one owner
        assert owners.sum(1).max() - owners.sum(1).min() <= 1  # and the shares are even
    with pytest.raises(ConfigError, match="RANK"):
        Shard(2, 2)


def test_current_shard_reads_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert current_shard() == Shard(1, 3) and current_shard().tag == "r001"
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert current_shard() == Shard(0, 1)


def test_writers_never_collide_and_resume_their_numbering(tmp_path):
    a, b = ChunkStore(tmp_path, writer="r000"), ChunkStore(tmp_path, writer="r001")
    a.append(pd.DataFrame({"item": [2], "v": ["a"]}))
    b.append(pd.DataFrame({"item": [1], "v": ["b"]}))
    a.append(pd.DataFrame({"item": [4], "v": ["c"]}))
    again = ChunkStore(tmp_path, writer="r000")  # a rerun of rank 0 continues after its chunk 1
    assert again.append(pd.DataFrame({"item": [6], "v": ["d"]})).name == "chunk-r000-000002.parquet"
    assert ChunkStore(tmp_path).done() == {1, 2, 4, 6}
    assert again.rows_per_writer() == {"r000": 3, "r001": 1}
    assert ChunkStore(tmp_path).merged()["v"].tolist() == ["b", "a", "c", "d"]


def _start(folder: Path, model: Path, rank: int) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(folder), str(model)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when_stored(proc: subprocess.Popen, store: ChunkStore, chunks: int, share: int) -> None:
    """SIGKILL rank 1 once it has stored `chunks` chunks in `store`, and check it was midway."""
    deadline = time.time() + 120
    while time.time() < deadline and len(list(store.folder.glob("chunk-r001-*.parquet"))) < chunks:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = store.rows_per_writer().get("r001", 0)
    assert chunks <= stored < share, f"rank 1 should have been killed midway ({stored} of {share} stored)"


def test_two_processes_killed_midway_and_rerun_equal_one_process(tmp_path, tiny_lm):
    """Rank 1 is killed while summarizing, its rerun is killed while scoring, its second rerun finishes;
    rank 0 runs throughout. Items and cases are each stored exactly once, and keywords and scores equal
    a single process's (greedy decoding at batch 1, per-case scoring: the same computation)."""
    from mmsrarec.rank.config import RankConfig
    from mmsrarec.rank.sharded import score_frame
    from mmsrarec.summarize.stage import summarize_items

    rng = np.random.default_rng(0)
    n_items, n_cases = 24, 30
    items = pd.DataFrame({"item": range(1, n_items + 1), "title": [f"Item number {i}" for i in range(1, n_items + 1)],
                          "text": [f"Item number {i} genre{i % 3}" for i in range(1, n_items + 1)],
                          "image": [""] * n_items})
    cases = pd.DataFrame({"history": [rng.choice(n_items, 5, replace=False) + 1 for _ in range(n_cases)],
                          "target": rng.integers(1, n_items + 1, n_cases),
                          "negatives": [rng.choice(n_items, 8, replace=False) + 1 for _ in range(n_cases)]})
    items.to_parquet(tmp_path / "items.parquet")
    cases.to_parquet(tmp_path / "cases.parquet")

    single = ChunkStore(tmp_path / "single")
    summarize_items(items, shard_worker.summarize_config(str(tiny_lm)), single, log=lambda m: None)
    expected_keywords = single.merged()
    scorer, catalog = shard_worker.scorer_and_catalog(items, expected_keywords, str(tiny_lm))
    expected_scores = score_frame(scorer, catalog, cases, {}, RankConfig(), shard_worker.SCORING, progress=False)

    item_store, case_store = ChunkStore(tmp_path / "items_store"), ChunkStore(tmp_path / "cases_store", key="case")
    rank0 = _start(tmp_path, tiny_lm, 0)
    _kill_when_stored(_start(tmp_path, tiny_lm, 1), item_store, 3, n_items // 2)
    _kill_when_stored(_start(tmp_path, tiny_lm, 1), case_store, 3, n_cases // 2)
    for proc in (_start(tmp_path, tiny_lm, 1), rank0):
        assert proc.wait(timeout=180) == 0, proc.communicate()[1][-2000:]

    assert item_store.rows_per_writer() == {"r000": n_items // 2, "r001": n_items // 2}  # each item once
    assert case_store.rows_per_writer() == {"r000": n_cases // 2, "r001": n_cases // 2}  # each case once
    pd.testing.assert_frame_equal(item_store.merged(), expected_keywords)
    for rank in ("r000", "r001"):  # every process returns all scores, in case order
        np.testing.assert_array_equal(np.load(tmp_path / f"scores-{rank}.npy"), expected_scores)
    for rank in (0, 1):  # a rerun finds nothing left (and so loads no model)
        assert summarize_items(items, None, item_store, shard=Shard(rank, 2)) == {"items_generated": 0}
