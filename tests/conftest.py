"""Shared fixtures: small datasets written in the real formats, and configs pointing at tmp runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)


def write_atomic(folder: Path, name: str = "toy", n_users: int = 30, n_items: int = 40, length: int = 12,
                 seed: int = 0, with_item: bool = True) -> Path:
    """A RecBole atomic dataset where each user walks forward through the items (i -> i+1)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        start = int(rng.integers(0, n_items - length))
        for j in range(length):
            lines.append(f"u{u}\ti{start + j}\t{1000 + 10 * j}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if with_item:
        rows = ["item_id:token\ttitle:token_seq\tgenre:token_seq"]
        rows += [f"i{i}\tItem number {i}\tgenre{i % 3}" for i in range(n_items)]
        (folder / f"{name}.item").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def write_held_out_dataset(folder: Path, name: str, n_users: int, pool: int, train_len: int, pool_item,
                           held_out_item, fields: tuple[str, ...] = ("title",), seed: int = 0) -> Path:
    """Users walk through a shared pool of items in training (p0, p1, ...); each user's valid and test
    targets are items of their own (valid<u>, test<u>) that nobody has in training. The .item file has
    `fields`, whose values are pool_item(i) and held_out_item(kind, u) (tab-separated)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        start = int(rng.integers(0, pool))
        walk = [f"p{(start + j) % pool}" for j in range(train_len)] + [f"valid{u}", f"test{u}"]
        lines += [f"u{u}\t{item}\t{1000 + 10 * j}" for j, item in enumerate(walk)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["\t".join(["item_id:token", *(f"{f}:token_seq" for f in fields)])]
    rows += [f"p{i}\t{pool_item(i)}" for i in range(pool)]
    rows += [f"{kind}{u}\t{held_out_item(kind, u)}" for u in range(n_users) for kind in ("valid", "test")]
    (folder / f"{name}.item").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def with_item_images(folder: Path, name: str, n_items: int, size, color) -> Path:
    """Rewrite <name>.item with an image column: even items get pics/<i>.png of size(i) and color(i),
    odd items none (a VLM sees both kinds)."""
    from PIL import Image

    (folder / "pics").mkdir(exist_ok=True)
    rows = ["item_id:token\ttitle:token_seq\timage:token"]
    for i in range(n_items):
        if i % 2 == 0:
            Image.new("RGB", size(i), color(i)).save(folder / "pics" / f"{i}.png")
        rows.append(f"i{i}\tItem {i}\t" + (f"pics/{i}.png" if i % 2 == 0 else ""))
    (folder / f"{name}.item").write_text("\n".join(rows) + "\n")
    return folder


def load_script(path: str):
    """A script of the repository (e.g. tools/lent_gpu.py, experiments/ranker_ab.py) as a module: benchmarks/,
    experiments/ and tools/ hold scripts, not packages."""
    import importlib.util

    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(f"script_{name}", Path(__file__).resolve().parents[1] / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_atomic(tmp_path / "toy")


@pytest.fixture
def toy_overrides(toy_dataset: Path, tmp_path: Path) -> list[str]:
    """--set overrides for a run on the toy dataset in a private runs folder."""
    return [f"runs_dir={tmp_path / 'runs'}", "name=toy", "data.source=atomic", f"data.path={toy_dataset}",
            "data.name=toy", "data.num_negatives=5"]
