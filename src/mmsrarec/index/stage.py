"""The index stage: embed every training window with the CF model, index the vectors, and store
for every case (each training position, each valid and test case) its k most similar training users.

Writes the index (index.faiss), windows.parquet, neighbours_{train,valid,test}.parquet and
index_manifest.json (see store.py). The neighbour tables hold item ids only; turning them into
context text is context.py's job, at prompt time. A killed run resumes after the last file written.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import faults
from ..artifacts import read_json
from ..cf.stage import load_trained
from ..data.prepare import load_prepared
from ..errors import ArtifactError
from .backends import build_index, resolve_backend
from .neighbours import UserIndex, similar_users
from .store import MANIFEST, add_table, load_index, write_index
from .windows import Windows, embed_histories, training_windows


def run(ctx) -> None:
    cfg = ctx.cfg.index
    if ctx.cfg.threads:
        _set_faiss_threads(ctx.cfg.threads)
    data = load_prepared(ctx.input("prepare"))
    cf_dir = ctx.input("train-cf")
    model_file = cf_dir / f"{cfg.cf_model}.pt"
    if not model_file.is_file():
        raise ArtifactError(f"{model_file} is missing: train-cf did not save {cfg.cf_model!r}")
    model, _ = load_trained(cf_dir, cfg.cf_model, ctx.cfg, len(data["items"]))
    windows = training_windows(data["train"], cfg.n)
    if not len(windows):
        raise ArtifactError("no training sequence has two items, so there is no window to index")

    vectors, index = None, None
    if (ctx.out / MANIFEST).is_file():  # resuming: the index was finished before the kill
        try:
            index = load_index(ctx.out, cfg, model_file)
            ctx.log(f"index already built ({index.vectors.ntotal:,} windows), kept")
        except ArtifactError as exc:
            ctx.log(f"the index left by the killed run is unusable ({exc}); rebuilding")
            for path in ctx.out.glob("neighbours_*.parquet"):
                path.unlink()
    if index is None:
        vectors, index = _build(ctx, model, windows, model_file)
        faults.step("index")  # the index is written, no neighbours table yet

    todo = [s for s in ("train", "valid", "test") if not (ctx.out / f"neighbours_{s}.parquet").is_file()]
    for split in todo:
        t0 = time.perf_counter()
        if split == "train":
            if vectors is None:
                vectors = embed_histories(model, windows.histories(), cfg.mode, cfg.metric, cfg.batch_size)
            found = index.search(vectors, windows.users, cfg.k, cfg.batch_size)  # case (u, t) = window (u, t)
            frame = pd.DataFrame({"user": windows.users, "position": windows.positions, "target": windows.next_items,
                                  **found.columns()})
        else:
            cases = data[split]
            found = similar_users(index, model, list(cases["history"]), cases["user"].to_numpy(np.int64), cfg)
            frame = pd.DataFrame({"case": np.arange(len(cases), dtype=np.int64),
                                  "user": cases["user"].to_numpy(np.int64), **found.columns()})
        add_table(ctx.out, split, frame)
        faults.step("index")
        took = time.perf_counter() - t0
        short = int((found.users[:, -1] < 0).sum())
        ctx.summary[f"{split}_cases"] = len(frame)
        ctx.summary[f"{split}_fewer_than_k"] = short
        ctx.log(f"{split}: neighbours of {len(frame):,} cases in {took:.1f} s "
                f"({len(frame) / max(took, 1e-9):,.0f} queries/s); {short} with fewer than k={cfg.k}")
    ctx.summary["counts"] = read_json(ctx.out / MANIFEST)["counts"]  # complete after a resume too


def _build(ctx, model, windows: Windows, model_file) -> tuple[np.ndarray, UserIndex]:
    cfg = ctx.cfg.index
    t0 = time.perf_counter()
    vectors = embed_histories(model, windows.histories(), cfg.mode, cfg.metric, cfg.batch_size)
    embed_s = time.perf_counter() - t0
    backend = resolve_backend(cfg.backend)
    if backend == "torch" and cfg.factory != "Flat":
        ctx.log(f"backend torch searches exactly; index.factory {cfg.factory!r} is not used")
    t1 = time.perf_counter()
    vindex = build_index(vectors, cfg.factory, cfg.metric, backend, cfg.nprobe, cfg.ef_search, cfg.refine_factor,
                         ctx.cfg.seed, cfg.train_size, cfg.gpu_mode)
    build_s = time.perf_counter() - t1
    manifest = write_index(ctx.out, vindex, windows.frame(), cfg, model_file, extra={
        "dim": int(vectors.shape[1]), "embed_time_s": round(embed_s, 3), "build_time_s": round(build_s, 3)})
    ctx.log(f"indexed {len(windows):,} windows of {manifest['counts']['train_users']:,} training users "
            f"({cfg.mode} mode, n={cfg.n}, d={vectors.shape[1]}) with {vindex.backend} {cfg.factory!r}: "
            f"embedding {embed_s:.1f} s, build {build_s:.1f} s, {manifest['index_bytes'] / 2**20:.1f} MiB")
    ctx.summary.update({"windows": len(windows), "backend": vindex.backend, "dim": int(vectors.shape[1]),
                        "build_time_s": round(build_s, 3), "index_bytes": manifest["index_bytes"]})
    return vectors, UserIndex(vindex, windows.frame(), manifest)


def _set_faiss_threads(threads: int) -> None:
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)
