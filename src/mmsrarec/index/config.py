"""Configuration of the index stage: which CF model embeds histories, how the FAISS index is built
and searched, and how many neighbours and context keywords each case gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..configtools import InvalidValue, field


@dataclass
class IndexConfig:
    cf_model: str = field("sasrec", help="trained CF model (in cf.models) whose user vectors build the index: "
                                         "sasrec (the paper) or gru4rec (its ablation)")
    mode: Literal["user", "item"] = field(
        "user", help="user: a window is embedded by cf_model's user vector of its last n items; "
                     "item: by the item embedding of its last item (neighbours of the last item)")
    n: int = field(5, help="history window: the last n items embed a user (the paper's n)")
    k: int = field(3, help="similar training users retrieved per case (the paper's k)")
    factory: str = field("Flat", help="faiss.index_factory string: Flat (exact), HNSW32, IVF1024,PQ16, ...")
    metric: Literal["ip", "l2"] = field(
        "ip", help="ip: cosine (vectors are L2-normalised, similarity = cosine); "
                   "l2: Euclidean (similarity = 1 / (1 + squared distance))")
    nprobe: int = field(32, help="IVF indexes: inverted lists visited per query")
    ef_search: int = field(128, help="HNSW indexes: search beam width (efSearch)")
    refine_factor: int = field(8, help="indexes with an exact refine stage (e.g. IVF1024,PQ32x4fs,RFlat): "
                                       "candidates re-ranked exactly per result wanted (k_factor_rf)")
    backend: Literal["auto", "faiss", "torch"] = field(
        "auto", help="auto: faiss on GPU where faiss has one, else faiss-cpu, else exact torch; "
                     "torch: exact matmul + topk (ignores factory)")
    train_size: int = field(1_000_000, help="vectors (a seeded random sample) that IVF / PQ training sees; "
                                            "k-means subsamples further to 256 per centroid")
    storage: Literal["memory", "mmap"] = field(
        "memory", help="how a stored faiss index is opened: memory: read into RAM; mmap: memory-mapped "
                       "read-only (faiss IO_FLAG_MMAP_IFC), the codes stay in index.faiss and are paged in as "
                       "searched, for indexes larger than RAM (use an IVF factory, e.g. IVF65536,PQ32: a query "
                       "then touches nprobe lists, not the whole file)")
    gpu_mode: Literal["one", "shard", "replicate"] = field(
        "one", help="faiss on GPUs: one: GPU 0; shard: the vectors split over all visible GPUs (faiss "
                    "IndexShards), for an index larger than one GPU's memory; replicate: a full copy per GPU, "
                    "queries split (more queries/s). Not run on GPUs by this project yet")
    max_context_keywords: int = field(20, help="context keywords kept per case, best first")
    batch_size: int = field(4096, help="histories embedded / queries searched per batch")

    def validate(self) -> None:
        from ..cf import MODELS, model_class  # the registry; imported late to keep config import light
        from ..cf.base import CFModel

        if self.cf_model not in MODELS:
            raise InvalidValue("cf_model", f"must be one of {', '.join(MODELS)}, got {self.cf_model!r}")
        if model_class(self.cf_model).user_vectors is CFModel.user_vectors:
            raise InvalidValue("cf_model", f"names {self.cf_model!r}, which has no user vectors; use sasrec or gru4rec")
        for key in ("n", "k", "nprobe", "ef_search", "refine_factor", "train_size", "max_context_keywords",
                    "batch_size"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        if not self.factory.strip():
            raise InvalidValue("factory", "must be a faiss index_factory string such as Flat or HNSW32")
