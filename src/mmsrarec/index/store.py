"""The index on disk, and the checks that keep a stale or damaged one from being used.

Files (under runs/<name>/index/):
  index.faiss (faiss.write_index format) or index.npy (torch backend: the vectors)
  windows.parquet                  row i of the index: user, position, next_item
  neighbours_{train,valid,test}.parquet
  index_manifest.json              config, cf model hash, counts, sha256 of every file above

`load_index` recomputes the checksums and compares the manifest with the current config and CF
model file; any difference raises ArtifactError, so a corrupted or mismatched index is never used.
`load_retriever` opens it with the CF model that embeds queries, to search it again at any k.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..artifacts import read_json, sha256_file, write_json, write_parquet
from ..errors import ArtifactError
from .backends import VectorIndex, index_from_bytes, open_index_file, resolve_backend
from .config import IndexConfig
from .neighbours import Neighbours, UserIndex, similar_users

MANIFEST = "index_manifest.json"
WINDOWS = "windows.parquet"
FORMAT_VERSION = 1
# the config fields the stored index and neighbour tables depend on
BUILD_FIELDS = ("cf_model", "mode", "n", "k", "factory", "metric", "nprobe", "ef_search", "refine_factor",
                "train_size")


def write_index(folder: Path, vectors: VectorIndex, windows: pd.DataFrame, cfg: IndexConfig, cf_model_file: Path,
                extra: dict | None = None) -> dict:
    """Write the index file, the window table and the manifest (last, so its presence means complete)."""
    kind = "torch" if vectors.backend == "torch" else "faiss"
    index_file = "index.npy" if kind == "torch" else "index.faiss"
    vectors.save(folder / index_file)  # streamed to disk: a large index is not copied in memory
    write_parquet(folder / WINDOWS, windows)
    manifest = {
        "format_version": FORMAT_VERSION, **{f: getattr(cfg, f) for f in BUILD_FIELDS},
        "cf_model_sha256": sha256_file(cf_model_file), "backend": vectors.backend, "index_format": kind,
        "index_file": index_file, "index_sha256": sha256_file(folder / index_file),
        "index_bytes": (folder / index_file).stat().st_size,
        "windows_sha256": sha256_file(folder / WINDOWS),
        "counts": {"windows": len(windows), "train_users": int(windows["user"].nunique())},
        "tables": {}, **(extra or {}),
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def add_table(folder: Path, split: str, frame: pd.DataFrame) -> None:
    """Write neighbours_<split>.parquet and record its checksum and row count in the manifest."""
    path = folder / f"neighbours_{split}.parquet"
    write_parquet(path, frame)
    manifest = read_json(folder / MANIFEST)
    manifest["tables"][split] = {"file": path.name, "sha256": sha256_file(path), "rows": len(frame)}
    manifest["counts"][f"{split}_cases"] = len(frame)
    write_json(folder / MANIFEST, manifest)


def load_index(folder: str | Path, cfg: IndexConfig, cf_model_file: str | Path) -> UserIndex:
    """The stored index, after checking its files' checksums and that it was built with this config
    and this exact CF model file. Raises ArtifactError otherwise."""
    folder = Path(folder)
    manifest = _manifest(folder)
    _check_matches(folder, manifest, cfg, Path(cf_model_file))
    path = folder / manifest["index_file"]
    windows_bytes = _read_verified(folder / WINDOWS, manifest["windows_sha256"])
    windows = pd.read_parquet(io.BytesIO(windows_bytes))
    backend = "torch" if manifest["index_format"] == "torch" else resolve_backend("faiss")
    search = (manifest["metric"], cfg.nprobe, cfg.ef_search, cfg.refine_factor, cfg.gpu_mode)
    try:
        if cfg.storage == "mmap" and backend != "torch":
            _check_file(path, manifest["index_sha256"])  # streamed: the index is never all in memory
            return UserIndex(open_index_file(path, backend, *search), windows, manifest)
        vectors = index_from_bytes(_read_verified(path, manifest["index_sha256"]), backend, *search)
        return UserIndex(vectors, windows, manifest)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{folder / manifest['index_file']}: could not be read as an index ({exc}); "
                            f"rebuild it with `mmsrarec index --force`") from None


@dataclass
class Retriever:
    """A stored index and the CF model that embeds its queries: the index stage's search, repeatable
    at any k (the stored tables hold index.k neighbours per case)."""

    index: UserIndex
    model: Any  # the CFModel named by cfg.cf_model
    cfg: IndexConfig

    def search(self, histories: Sequence, users, k: int | None = None) -> Neighbours:
        """The k (default cfg.k) most similar training users of each history, never its own user."""
        return similar_users(self.index, self.model, list(histories), np.asarray(users, np.int64), self.cfg, k=k)


def load_retriever(index_dir: str | Path, cf_dir: str | Path, run_cfg: Any, n_items: int,
                   device: str | None = None) -> Retriever:
    """The index in index_dir (checked as load_index does) with run_cfg.index.cf_model loaded from the
    train-cf folder cf_dir, on `device` (default: cf.train.device)."""
    from ..cf.stage import load_trained  # late: the CF stage imports the pipeline

    cfg = run_cfg.index
    model_file = Path(cf_dir) / f"{cfg.cf_model}.pt"
    if not model_file.is_file():
        raise ArtifactError(f"{model_file} is missing: train-cf did not save {cfg.cf_model!r}")
    index = load_index(index_dir, cfg, model_file)
    model, _ = load_trained(Path(cf_dir), cfg.cf_model, run_cfg, n_items, device)
    return Retriever(index, model, cfg)


def load_neighbours(folder: str | Path, split: str) -> pd.DataFrame:
    """neighbours_<split>.parquet after checking it against the manifest's checksum."""
    folder = Path(folder)
    manifest = _manifest(folder)
    entry = manifest["tables"].get(split)
    if entry is None:
        raise ArtifactError(f"{folder}: the index stage stored no neighbour table for split {split!r} "
                            f"(has: {', '.join(manifest['tables']) or 'none'})")
    return pd.read_parquet(io.BytesIO(_read_verified(folder / entry["file"], entry["sha256"])))


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {folder} holds no finished index; run `mmsrarec index`")
    try:
        manifest = read_json(path)
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); rebuild with `mmsrarec index --force`") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: index format {manifest.get('format_version')!r}, this code reads "
                            f"{FORMAT_VERSION}; rebuild with `mmsrarec index --force`")
    return manifest


def _check_matches(folder: Path, manifest: dict, cfg: IndexConfig, cf_model_file: Path) -> None:
    if not cf_model_file.is_file():
        raise ArtifactError(f"the CF model file {cf_model_file} the index is checked against is missing")
    current = {f: getattr(cfg, f) for f in BUILD_FIELDS}
    current["cf_model_sha256"] = sha256_file(cf_model_file)
    diffs = [f"{key}: index has {manifest.get(key)!r}, now {value!r}" for key, value in current.items()
             if manifest.get(key) != value]
    if diffs:
        raise ArtifactError(f"the index in {folder} does not match the current config / CF model "
                            f"({cf_model_file}): " + "; ".join(diffs) + ". Rebuild it with `mmsrarec index --force`")


def _read_verified(path: Path, expected: str) -> bytes:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; rebuild with `mmsrarec index --force`")
    data = path.read_bytes()
    _compare(path, hashlib.sha256(data).hexdigest(), expected)
    return data


def _check_file(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; rebuild with `mmsrarec index --force`")
    _compare(path, sha256_file(path), expected)


def _compare(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ArtifactError(f"{path} is corrupted: sha256 {actual[:12]}..., the manifest says {expected[:12]}...; "
                            f"it will not be used. Rebuild it with `mmsrarec index --force`")

