"""Nearest-neighbour search over window vectors: a FAISS index (GPU where faiss has one, else CPU)
or an exact torch matmul + topk where faiss is not installed.

Both answer `search(queries, k) -> (similarities, ids)`, best first, with larger = more similar:
for metric ip the inner product of L2-normalised vectors (cosine); for l2, 1 / (1 + squared distance).
Ids are row numbers of the indexed vectors; -1 where the index returned fewer than k (IVF with a
small nprobe, HNSW with a small efSearch).

Large indexes: training sees a seeded sample (`train_size`), vectors are added in chunks, a stored
index can be memory-mapped (`open_index_file`: faiss IO_FLAG_MMAP_IFC, the codes stay on disk and
the OS pages them in), and with several GPUs faiss splits (shard) or copies (replicate) the index
over all of them (`gpu_mode`; written against faiss's documented API, not run here: no GPU).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from ..errors import ConfigError

Backend = Literal["faiss", "faiss-gpu", "torch"]
GpuMode = Literal["one", "shard", "replicate"]
ADD_CHUNK = 500_000  # vectors per index.add call: bounds the temporary memory of assignment and encoding


class VectorIndex(Protocol):
    backend: Backend
    ntotal: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def to_bytes(self) -> bytes: ...

    def save(self, path: Path) -> None: ...


def save_atomically(path: str | Path, write) -> Path:
    """`write(temp_path)` into a temp file beside `path`, then rename it into place: a killed process
    leaves the old file or the new one, never half of one, and no copy of a large index in memory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def normalise(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous; rows scaled to unit length for ip so inner product = cosine."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "ip":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def resolve_backend(name: str) -> Backend:
    """auto: faiss-gpu where faiss sees a GPU, else faiss (CPU), else torch."""
    if name == "torch":
        return "torch"
    try:
        import faiss
    except ImportError:
        if name == "faiss":
            raise ConfigError("index.backend is 'faiss', but faiss is not installed; "
                              "pip install faiss-cpu, or set index.backend: torch") from None
        return "torch"
    gpu = hasattr(faiss, "index_cpu_to_gpu") and faiss.get_num_gpus() > 0
    return "faiss-gpu" if gpu else "faiss"


def build_index(vectors: np.ndarray, factory: str, metric: str, backend: Backend, nprobe: int = 32,
                ef_search: int = 128, refine_factor: int = 8, seed: int = 0, train_size: int = 1_000_000,
                gpu_mode: GpuMode = "one") -> VectorIndex:
    """An index over `vectors` (already normalised), trained first (on at most `train_size` of them)
    when the factory needs it."""
    if backend == "torch":
        return TorchIndex(vectors, metric)
    index = FaissIndex.build(vectors, factory, metric, backend == "faiss-gpu", seed, train_size, gpu_mode)
    index.set_search_params(nprobe, ef_search, refine_factor)
    return index


def index_from_bytes(data: bytes, backend: Backend, metric: str, nprobe: int = 32, ef_search: int = 128,
                     refine_factor: int = 8, gpu_mode: GpuMode = "one") -> VectorIndex:
    if backend == "torch":
        return TorchIndex(np.load(io.BytesIO(data), allow_pickle=False), metric)
    index = FaissIndex.from_bytes(data, metric, backend == "faiss-gpu", gpu_mode)
    index.set_search_params(nprobe, ef_search, refine_factor)
    return index


def open_index_file(path: str | Path, backend: Backend, metric: str, nprobe: int = 32, ef_search: int = 128,
                    refine_factor: int = 8, gpu_mode: GpuMode = "one") -> VectorIndex:
    """A stored faiss index opened memory-mapped and read-only: its codes (inverted lists, flat
    storage, HNSW graph) stay in the file and are paged in as searches touch them, so resident memory
    is what the queries need, not the index size. On a GPU backend the index is copied to the GPU."""
    import faiss

    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
    index, resources = _maybe_to_gpu(faiss.read_index(str(path), flags), backend == "faiss-gpu", gpu_mode)
    out = FaissIndex(index, metric, resources)
    out.set_search_params(nprobe, ef_search, refine_factor)
    return out


class FaissIndex:
    def __init__(self, index, metric: str, gpu_resources=None):
        self.index, self.metric = index, metric
        self._gpu_resources = gpu_resources  # must outlive a GPU index
        self.backend: Backend = "faiss-gpu" if gpu_resources is not None else "faiss"

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, factory: str, metric: str, gpu: bool, seed: int = 0,
              train_size: int = 1_000_000, gpu_mode: GpuMode = "one") -> "FaissIndex":
        import faiss
        from tqdm.auto import tqdm

        n, dim = vectors.shape
        try:
            index = faiss.index_factory(dim, factory, _faiss_metric(metric))
            resources = None
            if gpu_mode == "one":  # train and add on GPU 0
                index, resources = _maybe_to_gpu(index, gpu, gpu_mode)
            if not index.is_trained:
                # k-means and PQ training subsample further on their own (256 points per centroid)
                rows = slice(None)
                if n > train_size:
                    rows = np.sort(np.random.default_rng(seed).permutation(n)[:train_size])
                index.train(vectors[rows])
            if gpu_mode != "one":  # train once, then split / copy the trained index over all GPUs
                index, resources = _maybe_to_gpu(index, gpu, gpu_mode)
            for start in tqdm(range(0, n, ADD_CHUNK), desc="index add", unit="chunk", disable=n <= ADD_CHUNK):
                index.add(vectors[start:start + ADD_CHUNK])
        except RuntimeError as exc:
            raise ConfigError(
                f"index.factory {factory!r} could not be built over {n:,} vectors of dimension {dim}: "
                f"{_faiss_message(exc)}. Flat (exact) or HNSW32 suit small datasets; IVF<nlist> needs "
                f"at least nlist (better 40 x nlist) vectors, PQ<m> needs m to divide {dim}") from None
        return cls(index, metric, resources)

    @classmethod
    def from_bytes(cls, data: bytes, metric: str, gpu: bool, gpu_mode: GpuMode = "one") -> "FaissIndex":
        import faiss

        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        index, resources = _maybe_to_gpu(index, gpu, gpu_mode)
        return cls(index, metric, resources)

    def set_search_params(self, nprobe: int, ef_search: int, refine_factor: int) -> None:
        import faiss

        space = faiss.GpuParameterSpace() if self.backend == "faiss-gpu" else faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search), ("k_factor_rf", refine_factor)):
            try:
                space.set_index_parameter(self.index, name, value)
            except RuntimeError:
                pass  # this index type has no such knob (Flat has none, HNSW no nprobe, IVF no efSearch)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        distances, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        ids = ids.astype(np.int64)
        sims = distances if self.metric == "ip" else 1.0 / (1.0 + np.maximum(distances, 0.0))
        return np.where(ids >= 0, sims, np.nan).astype(np.float32), ids

    def to_bytes(self) -> bytes:
        import faiss

        return faiss.serialize_index(self._cpu_index()).tobytes()

    def save(self, path: Path) -> None:
        import faiss

        index = self._cpu_index()
        save_atomically(path, lambda tmp: faiss.write_index(index, str(tmp)))

    def _cpu_index(self):
        import faiss

        return faiss.index_gpu_to_cpu(self.index) if self.backend == "faiss-gpu" else self.index


class TorchIndex:
    """Exact search by matmul + topk (on CUDA when torch has it), in query batches of bounded memory."""

    backend: Backend = "torch"

    def __init__(self, vectors: np.ndarray, metric: str):
        self.metric = metric
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        self.sq_norms = (self.vectors * self.vectors).sum(1)

    @property
    def ntotal(self) -> int:
        return int(self.vectors.shape[0])

    @torch.no_grad()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        step = max(1, (1 << 26) // max(self.ntotal, 1))  # ~256 MB of scores per batch
        sims, ids = [], []
        for start in range(0, len(queries), step):
            q = torch.from_numpy(np.ascontiguousarray(queries[start:start + step], dtype=np.float32)).to(self.device)
            scores = q @ self.vectors.T
            if self.metric == "l2":  # rank by -||q - v||^2
                scores = 2 * scores - self.sq_norms[None, :] - (q * q).sum(1, keepdim=True)
            top, idx = scores.topk(k, dim=1)
            if self.metric == "l2":
                top = 1.0 / (1.0 + (-top).clamp_min(0))
            sims.append(top.float().cpu().numpy())
            ids.append(idx.cpu().numpy().astype(np.int64))
        if not sims:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(sims), np.concatenate(ids)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.save(buf, self.vectors.cpu().numpy(), allow_pickle=False)
        return buf.getvalue()

    def save(self, path: Path) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, self.vectors.cpu().numpy(), allow_pickle=False)

        save_atomically(path, write)


def _faiss_metric(metric: str):
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def _maybe_to_gpu(index, gpu: bool, gpu_mode: GpuMode = "one"):
    """(index on the GPU(s), what keeps their resources alive) when asked and faiss supports this index
    type there (HNSW is CPU-only); else (index, None).

    one: GPU 0. shard / replicate with more than one GPU: faiss.index_cpu_to_all_gpus splits the
    vectors over all GPUs (IndexShards: each holds 1/G of them, results merged; for indexes larger
    than one GPU's memory) or copies the whole index to each (IndexReplicas: queries split; for
    throughput). Untested here (no GPU): follows faiss's GPU wiki and benchs/bench_gpu_1bn.py."""
    if not gpu:
        return index, None
    import faiss

    try:
        if gpu_mode != "one" and faiss.get_num_gpus() > 1:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = gpu_mode == "shard"
            options.useFloat16 = True  # IVF-PQ with many sub-quantizers needs float16 lookup tables on GPU
            multi = faiss.index_cpu_to_all_gpus(index, co=options)
            return multi, multi  # the python wrapper keeps its per-GPU resources on the returned index
        resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(resources, 0, index), resources
    except (RuntimeError, AttributeError):
        return index, None


def _faiss_message(exc: Exception) -> str:
    """The useful last part of a faiss C++ error ('Error in ... at file:line: Error: ...')."""
    text = str(exc).strip()
    return text.rsplit(": ", 1)[-1] if "Error" in text else text
