"""summarize stage: batched generation into a resumable store, kill -9 safety, text and VLM paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mmsrarec.config import load_config
from mmsrarec.stages import Runner
from mmsrarec.summarize.stage import merge_keywords
from mmsrarec.summarize.store import ChunkStore

from conftest import with_item_images, write_atomic


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    from mmsrarec.models.tiny import tiny_causal_lm
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def test_merge_keeps_text_first_dedupes_and_caps():
    assert merge_keywords(["a", "b"], ["b", "c", "d"], 3) == ["a", "b", "c"]


def test_store_refuses_duplicates(tmp_path):
    store = ChunkStore(tmp_path / "s")
    store.append(pd.DataFrame({"item": [1, 2], "v": ["x", "y"]}))
    store.append(pd.DataFrame({"item": [3], "v": ["z"]}))
    assert store.done() == {1, 2, 3} and store.merged()["v"].tolist() == ["x", "y", "z"]
    store.append(pd.DataFrame({"item": [2], "v": ["again"]}))
    with pytest.raises(Exception, match="stored twice"):
        store.merged()


def test_summarize_stage_with_a_tiny_lm(toy_overrides, tiny_lm, capsys):
    over = [*toy_overrides, f"summarize.model.name_or_path={tiny_lm}", "summarize.max_new_tokens=8",
            "summarize.batch_size=8"]
    runner = Runner(load_config(None, over))
    runner.run("summarize")
    table = pd.read_parquet(runner.run_dir / "summarize" / "keywords.parquet")
    items = pd.read_parquet(runner.run_dir / "prepare" / "items.parquet")
    assert table["item"].tolist() == items["item"].tolist()
    assert set(table.columns) >= {"keywords", "text_keywords", "image_keywords", "raw_text", "raw_image"}
    assert not (runner.run_dir / "summarize" / "chunks").exists()
    Runner(load_config(None, over)).run("summarize")
    assert "summarize] up to date, skipped" in capsys.readouterr().err


def test_kill_9_midway_then_rerun_loses_and_duplicates_nothing(toy_dataset, tmp_path, tiny_lm):
    args = [sys.executable, "-m", "mmsrarec.cli", "summarize", "--set", f"runs_dir={tmp_path / 'runs'}",
            "--set", "name=k", "--set", "data.source=atomic", "--set", f"data.path={toy_dataset}",
            "--set", "data.name=toy", "--set", "data.num_negatives=5",
            "--set", f"summarize.model.name_or_path={tiny_lm}", "--set", "summarize.batch_size=1",
            "--set", "summarize.max_new_tokens=48"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    chunks = tmp_path / "runs" / "k" / "summarize.partial" / "chunks"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(chunks.glob("chunk-*.parquet"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(chunks.glob("chunk-*.parquet")))
    assert 3 <= written < 40, "the run should have been killed midway"
    done_before = ChunkStore(chunks).done()
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    table = pd.read_parquet(tmp_path / "runs" / "k" / "summarize" / "keywords.parquet")
    items = pd.read_parquet(tmp_path / "runs" / "k" / "prepare" / "items.parquet")
    assert table["item"].tolist() == items["item"].tolist()  # every item exactly once
    assert done_before <= set(table["item"])


def test_vlm_summarizes_text_and_images(tmp_path):
    from mmsrarec.models.tiny import tiny_qwen2_vl

    folder = with_item_images(write_atomic(tmp_path / "img", name="img", n_users=8, n_items=20, length=6), "img", 20,
                              size=lambda i: (64 + i, 48), color=lambda i: (10 * i, 100, 200 - 5 * i))
    vlm = tiny_qwen2_vl(tmp_path / "vlm")
    over = [f"runs_dir={tmp_path / 'runs'}", "name=v", "data.source=atomic", f"data.path={folder}", "data.name=img",
            "data.num_negatives=3", f"summarize.model.name_or_path={vlm}", "summarize.model.kind=vlm",
            "summarize.max_new_tokens=6", "summarize.batch_size=4"]
    runner = Runner(load_config(None, over))
    runner.run("summarize")
    table = pd.read_parquet(runner.run_dir / "summarize" / "keywords.parquet")
    items = pd.read_parquet(runner.run_dir / "prepare" / "items.parquet").set_index("item")
    with_image = table["item"].map(items["image"]) != ""
    assert with_image.sum() >= 5
    assert (table.loc[with_image, "raw_image"] != "").sum() >= 3  # generated for items with an image
    assert (table.loc[~with_image, "raw_image"] == "").all()  # and only for them
