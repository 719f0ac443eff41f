"""Large collaborative indexes on CPU: bytes per vector of each FAISS index type, and IVF-PQ at
10M vectors (build time, memory and disk, queries/s, recall@10 against exact search), with the
full vectors re-ranking from a memory-mapped file.

d = 64 (SASRec's hidden_size, the vectors the index stage stores); the same clustered synthetic data
as benchmarks/index_bench.py (1,000 Gaussian clusters, spread 0.6, L2-normalised, inner product).
Memory-conscious: the vectors are generated in chunks from seeded generators (never all in memory
as one array), IVF / PQ training sees a sample, vectors are added chunk by chunk, and the exact top
10 of the recall queries is kept up to date chunk by chunk (torch matmul + topk), so the truth needs
no second pass and no copy of the 10M vectors.

    python benchmarks/index_bench_large.py --n 10000000 --threads 2       # the run in results/ (11 min, 2 loaded cores)
    python benchmarks/index_bench_large.py --n 200000 --memory-sizes 20000 40000   # smoke run

Parts:
  memory  build Flat, HNSW32, IVF1024,Flat, IVF1024,PQ16, IVF1024,PQ32 at two sizes; the serialized
          size difference / vector-count difference is the per-vector cost, the rest is fixed.
  large   IVF<nlist>,PQ16,RFlat at --n: trained on --train vectors, added in chunks; written to disk;
          reopened (a) the IVF-PQ part alone, in memory, (b) the whole index memory-mapped
          (faiss IO_FLAG_MMAP_IFC, as index.storage: mmap does), searched with several nprobe and
          re-rank factors (k_factor_rf = 1 is plain IVF-PQ: the re-rank then only reorders its top 10).

Writes benchmarks/results/index_bench_large.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

D, CLUSTERS, SPREAD, K = 64, 1000, 0.6, 10
CHUNK = 500_000


def memory_status() -> dict[str, float]:
    """MiB of anonymous (heap) and file-backed (mapped file, page cache) resident memory, and the peak."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def centres() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((CLUSTERS, D), dtype=np.float32)


def chunk(index: int, size: int, stream: int = 1) -> np.ndarray:
    """Chunk `index` of a stream of mixture draws; the same (stream, index) always gives the same rows."""
    rng = np.random.default_rng([stream, index])
    out = centres()[rng.integers(0, CLUSTERS, size)]
    out += SPREAD * rng.standard_normal((size, D), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def chunks(n: int):
    for i, start in enumerate(range(0, n, CHUNK)):
        yield start, chunk(i, min(CHUNK, n - start))


class ExactTopK:
    """The exact top K (inner product) of fixed queries over vectors seen chunk by chunk."""

    def __init__(self, queries: np.ndarray):
        import torch

        self.torch, self.queries = torch, torch.from_numpy(queries)
        self.scores = torch.full((len(queries), K), -float("inf"))
        self.ids = torch.zeros((len(queries), K), dtype=torch.int64)
        self.seconds = 0.0

    def update(self, start: int, vectors: np.ndarray, block: int = 50_000) -> None:
        t0 = time.perf_counter()
        for offset in range(0, len(vectors), block):  # [queries, block] scores: 200 MB for 1,000 queries
            sims = self.queries @ self.torch.from_numpy(vectors[offset:offset + block]).T
            top, idx = sims.topk(K, dim=1)
            merged_scores = self.torch.cat([self.scores, top], dim=1)
            merged_ids = self.torch.cat([self.ids, idx + start + offset], dim=1)
            best, pos = merged_scores.topk(K, dim=1)
            self.scores, self.ids = best, merged_ids.gather(1, pos)
        self.seconds += time.perf_counter() - t0


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def timed_search(index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    _, ids = index.search(queries, K)
    return time.perf_counter() - t0, ids


# ----------------------------------------------------------------------------- memory per vector

def memory_table(sizes: tuple[int, int], nlist: int, log) -> list[dict]:
    import faiss

    rows = []
    data = np.concatenate([c for _, c in chunks(max(sizes))]) if max(sizes) > CHUNK else chunk(0, max(sizes))
    # np: no polysemous training (it only reorders the codes, for Hamming filtering, and takes minutes)
    for factory in ("Flat", "HNSW32", f"IVF{nlist},Flat", f"IVF{nlist},PQ16np", f"IVF{nlist},PQ32np"):
        size_of, build_s = {}, {}
        for n in sizes:
            t0 = time.perf_counter()
            index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
            if not index.is_trained:
                index.train(data[:min(n, 64 * nlist)])
            index.add(data[:n])
            build_s[n] = time.perf_counter() - t0
            size_of[n] = int(faiss.serialize_index(index).size)
            del index
        small, large = sizes
        per_vector = (size_of[large] - size_of[small]) / (large - small)
        fixed = size_of[large] - per_vector * large
        rows.append({"factory": factory, "bytes_per_vector": round(per_vector, 2), "fixed_bytes": int(round(fixed)),
                     "mib_per_million": round(per_vector * 1e6 / 2**20, 1), "sizes": list(sizes),
                     "index_bytes": size_of, "build_s": {n: round(s, 1) for n, s in build_s.items()}})
        log(f"memory {factory:18s} {per_vector:8.2f} B/vector + {fixed / 2**20:6.2f} MiB fixed "
            f"({per_vector * 1e6 / 2**20:7.1f} MiB per million); build {build_s[large]:.1f} s at {large:,}")
    return rows


# ----------------------------------------------------------------------------- IVF-PQ at scale

def large_run(n: int, nlist: int, train: int, n_queries: int, n_truth: int, folder: Path, threads: int,
              log) -> dict:
    import faiss

    factory = f"IVF{nlist},PQ16np,RFlat"
    queries = chunk(0, n_queries, stream=2)
    truth = ExactTopK(queries[:n_truth])
    facts: dict = {"n": n, "factory": factory, "nlist": nlist, "train_vectors": train, "queries": n_queries,
                   "truth_queries": n_truth, "memory_start_mib": memory_status()}

    t0 = time.perf_counter()
    index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
    sample = np.concatenate([c for _, c in chunks(train)]) if train > CHUNK else chunk(0, train)
    index.train(sample)  # i.i.d. draws: the first `train` vectors are a random sample of all
    del sample
    facts["train_s"] = round(time.perf_counter() - t0, 1)
    log(f"trained {factory} on {train:,} vectors in {facts['train_s']} s")

    add_s, gen_s = 0.0, 0.0
    t_gen = time.perf_counter()
    for start, vectors in chunks(n):
        gen_s += time.perf_counter() - t_gen
        t1 = time.perf_counter()
        index.add(vectors)
        add_s += time.perf_counter() - t1
        truth.update(start, vectors)
        done = start + len(vectors)
        if done % (10 * CHUNK) == 0 or done == n:
            log(f"added {done:,} / {n:,} ({add_s:.0f} s adding, {truth.seconds:.0f} s exact top-{K}, "
                f"{gen_s:.0f} s generating); RSS {memory_status()['RssAnon']:.0f} MiB")
        t_gen = time.perf_counter()
    facts.update({"add_s": round(add_s, 1), "build_s": round(facts["train_s"] + add_s, 1),
                  "exact_truth_s": round(truth.seconds, 1), "generate_s": round(gen_s, 1),
                  "memory_built_mib": memory_status()})
    exact_qps = n_truth / truth.seconds  # the chunked exact search, timed over the whole pass
    facts["exact_qps"] = round(exact_qps, 2)

    folder.mkdir(parents=True, exist_ok=True)
    ivfpq_path, full_path = folder / "ivfpq.faiss", folder / "ivfpq_rflat.faiss"
    faiss.write_index(faiss.downcast_index(index.base_index), str(ivfpq_path))
    faiss.write_index(index, str(full_path))
    facts["disk_bytes"] = {"ivfpq": ivfpq_path.stat().st_size, "ivfpq_rflat": full_path.stat().st_size}
    del index
    np.save(folder / "queries.npy", queries)
    np.save(folder / "truth.npy", truth.ids.numpy())
    facts["memory_peak_build_mib"] = memory_status()["VmHWM"]

    import multiprocessing

    rows = []
    mmap = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
    for label, path, flags, params in (
        ("IVF-PQ, in memory", ivfpq_path, 0, ["nprobe=8", "nprobe=16", "nprobe=32", "nprobe=64"]),
        ("IVF-PQ, mmap", ivfpq_path, mmap, ["nprobe=16"]),
        ("IVF-PQ + exact re-rank, mmap", full_path, mmap,
         ["nprobe=16,k_factor_rf=4", "nprobe=16,k_factor_rf=16", "nprobe=32,k_factor_rf=16"]),
    ):
        # a fresh process per variant, so its memory is that index's, not the build's leftovers
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            found = pool.apply(open_and_search, (str(path), flags, params, folder, threads))
        for row in found:
            row.update({"opened": label, "speedup_vs_exact": round(row["qps"] / exact_qps, 1)})
            log(f"{label:30s} {row['search']:26s} {row['qps']:7,} q/s  recall@10 {row['recall@10']:.4f}  "
                f"heap +{row['anon_mib_after_search']:.0f} MiB, file-backed +{row['file_mib_after_search']:.0f} MiB")
        rows += found
    facts["searches"] = rows
    return facts


def open_and_search(path: str, flags: int, params: list[str], folder: Path, threads: int) -> list[dict]:
    """In a fresh process: open the index (with faiss IO flags), search the queries with each setting."""
    import faiss

    faiss.omp_set_num_threads(threads)
    queries, truth = np.load(folder / "queries.npy"), np.load(folder / "truth.npy")
    before = memory_status()
    t0 = time.perf_counter()
    index = faiss.read_index(path, flags)
    load_s = time.perf_counter() - t0
    loaded = memory_status()
    rows = []
    for param in params:
        faiss.ParameterSpace().set_index_parameters(index, param)
        seconds, ids = timed_search(index, queries)
        after = memory_status()
        rows.append({"search": param, "load_s": round(load_s, 2), "qps": round(len(queries) / seconds),
                     "recall@10": round(recall_at_k(ids[:len(truth)], truth), 4),
                     "anon_mib_loaded": round(loaded["RssAnon"] - before["RssAnon"], 1),
                     "anon_mib_after_search": round(after["RssAnon"] - before["RssAnon"], 1),
                     "file_mib_after_search": round(after["RssFile"] - before["RssFile"], 1)})
    return rows


def markdown(meta: dict, memory: list[dict], large: dict | None) -> str:
    lines = ["# Large collaborative indexes (CPU)", "",
             f"{meta['machine']}; faiss {meta['faiss']}, {meta['threads']} threads (faiss OpenMP and torch); "
             f"1-minute load average at start / end {meta['load_average']} (other jobs share the 2 cores). "
             f"Data: {meta['data']}. `{meta['command']}`, total {meta['total_s'] / 60:.1f} min.", ""]
    if memory:
        sizes = memory[0]["sizes"]
        lines += ["## Memory per vector (d = 64)", "",
                  f"Serialized index size at {sizes[0]:,} and {sizes[1]:,} vectors; per vector = size difference / "
                  "vector difference, fixed = the rest (coarse centroids, PQ codebooks). In memory an index takes "
                  "about its serialized size. The index stage stores one vector per training *window*, not per "
                  "user (ML-100K: 97,171 windows of 943 users, ~103 per user): multiply by windows per user.", "",
                  "| factory | bytes / vector | fixed MiB | MiB per million vectors | GiB at 10M |",
                  "|---|---:|---:|---:|---:|"]
        for r in memory:
            lines.append(f"| `{r['factory']}` | {r['bytes_per_vector']:.1f} | {r['fixed_bytes'] / 2**20:.2f} | "
                         f"{r['mib_per_million']:.1f} | {r['bytes_per_vector'] * 1e7 / 2**30:.2f} |")
        lines.append("")
    if large:
        f = large
        lines += [f"## IVF-PQ at {f['n']:,} vectors", "",
                  f"`{f['factory']}`: coarse quantizer trained on {f['train_vectors']:,} vectors "
                  f"({f['train_s']} s), {f['n']:,} vectors added in chunks of {CHUNK:,} ({f['add_s']} s); build "
                  f"{f['build_s']} s = {f['build_s'] / 60:.1f} min. Peak resident memory of the build "
                  f"{f['memory_peak_build_mib'] / 1024:.2f} GiB (the index being built holds the full vectors "
                  f"for the re-rank: {f['n'] * D * 4 / 2**30:.2f} GiB). On disk: IVF-PQ alone "
                  f"{f['disk_bytes']['ivfpq'] / 2**20:,.0f} MiB, with the re-rank vectors "
                  f"{f['disk_bytes']['ivfpq_rflat'] / 2**20:,.0f} MiB.",
                  f"Exact search (chunked torch matmul + top-k over the {f['n']:,} vectors, {f['truth_queries']:,} "
                  f"queries): {f['exact_qps']} queries/s ({f['exact_truth_s']} s). Recall@10 on those "
                  f"{f['truth_queries']:,} queries; queries/s over {f['queries']:,}.", "",
                  "| opened as | search params | queries/s | speed-up vs exact | recall@10 | heap MiB after search | "
                  "file-backed MiB after search |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in f["searches"]:
            lines.append(f"| {r['opened']} | `{r['search']}` | {r['qps']:,} | {r['speedup_vs_exact']:,} | "
                         f"{r['recall@10']:.4f} | {r['anon_mib_after_search']:.0f} | "
                         f"{r['file_mib_after_search']:.0f} |")
        lines += ["", "Each row group runs in a fresh process. Heap MiB: anonymous resident memory added by "
                  "opening the index and searching (what it costs in RAM). File-backed MiB: pages of the "
                  "memory-mapped file resident after the searches; the OS "
                  "shares and evicts them as memory is needed (page cache), so a memory-mapped index may be "
                  "larger than RAM, at the price of disk reads for pages not cached.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000, help="vectors in the IVF-PQ run (0: skip it)")
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--train", type=int, default=262_144, help="training sample (64 x nlist by default)")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--truth-queries", type=int, default=1_000, help="queries whose recall is measured")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[100_000, 200_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/index_bench_large"), help="where the indexes go")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from index_bench import cpu_name

    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    t0, load = time.perf_counter(), os.getloadavg()[0]
    memory = memory_table(tuple(args.memory_sizes), 1024, log) if args.memory_sizes[0] else []
    large = large_run(args.n, args.nlist, args.train, args.queries, args.truth_queries, args.folder, args.threads,
                      log) \
        if args.n else None
    meta = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs, no GPU", "faiss": faiss.__version__,
            "threads": args.threads, "load_average": [round(load, 1), round(os.getloadavg()[0], 1)],
            "data": f"d = {D}, {CLUSTERS:,} Gaussian clusters (centres N(0, 1), spread {SPREAD}), L2-normalised, "
                    "inner product; queries are further draws, not in the index",
            "command": "python benchmarks/index_bench_large.py " + " ".join(sys.argv[1:]),
            "total_s": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "index_bench_large"
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "memory": memory, "large": large},
                                                      indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text(markdown(meta, memory, large))
    print(markdown(meta, memory, large))


if __name__ == "__main__":
    main()
