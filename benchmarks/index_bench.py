"""FAISS settings for the collaborative index: build time, queries/s, recall@10 against exact search,
and memory, at 10k, 100k and 1M user vectors.

Data: d = 64 vectors from a mixture of 1,000 isotropic Gaussian clusters (centres ~ N(0, 1), spread
0.6 per dimension), L2-normalised, searched by inner product (cosine), as the index stage does. The
queries are 10k further draws from the same mixture, not in the index. Exact search (Flat) is the
ground truth and the speed baseline.

    python benchmarks/index_bench.py                      # 10k, 100k, 1M (a few minutes on 2 cores)
    python benchmarks/index_bench.py --sizes 10000 --queries 1000   # smoke run

Writes benchmarks/results/index_bench.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

D, CLUSTERS, SPREAD, K = 64, 1000, 0.6, 10


def mixture(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, D), dtype=np.float32)
    out = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 200_000):  # chunks keep the temporary arrays small
        stop = min(start + 200_000, n)
        out[start:stop] = centres[rng.integers(0, CLUSTERS, stop - start)]
        out[start:stop] += SPREAD * rng.standard_normal((stop - start, D), dtype=np.float32)
    faiss.normalize_L2(out)
    return out


def nlist_for(n: int) -> int:
    """~4 sqrt(n) inverted lists, a power of two, capped at 1024 (k-means on 2 cores stays under a minute)."""
    return int(min(1024, 2 ** round(np.log2(4 * np.sqrt(n)))))


def settings(n: int) -> list[tuple[str, list[str]]]:
    """(factory, [search parameter strings]) to measure; the first is exact search."""
    nlist = nlist_for(n)
    return [
        ("Flat", [""]),
        ("HNSW32", ["efSearch=64", "efSearch=128", "efSearch=256"]),
        (f"IVF{nlist},Flat", ["nprobe=32", "nprobe=64"]),
        (f"IVF{nlist},PQ32np", ["nprobe=32"]),  # np: no polysemous training (slow); the memory-light option
        (f"IVF{nlist},PQ32x4fs,RFlat", ["nprobe=64,k_factor_rf=16", "nprobe=128,k_factor_rf=16"]),
    ]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def timed_search(index, queries: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    best, ids = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        _, ids = index.search(queries, K)
        best = min(best, time.perf_counter() - t0)
    return best, ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def run_size(n: int, n_queries: int, repeat: int, log) -> list[dict]:
    data = mixture(n + n_queries, seed=n)
    base, queries = data[:n], np.ascontiguousarray(data[n:])
    rows, truth, exact_qps = [], None, None
    for factory, params in settings(n):
        before = rss_bytes()
        t0 = time.perf_counter()
        index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(base)
        index.add(base)
        build_s = time.perf_counter() - t0
        rss_delta = rss_bytes() - before
        size = int(faiss.serialize_index(index).size)
        for param in params:
            if param:
                faiss.ParameterSpace().set_index_parameters(index, param)
            seconds, ids = timed_search(index, queries, repeat)
            qps = n_queries / seconds
            if truth is None:
                truth, exact_qps = ids, qps
            row = {"n": n, "factory": factory, "search": param or "-", "build_s": round(build_s, 2),
                   "qps": round(qps), "speedup": round(qps / exact_qps, 1), "recall@10": round(recall_at_k(ids, truth), 4),
                   "index_bytes": size, "rss_delta_bytes": rss_delta}
            rows.append(row)
            log(f"{n:>9,} {factory:28s} {row['search']:24s} build {build_s:7.1f} s  {qps:9,.0f} q/s "
                f"x{row['speedup']:<6} recall@10 {row['recall@10']:.4f}  {size / 2**20:8.1f} MiB")
        del index
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Collaborative index: FAISS settings",
        "",
        f"{meta['machine']}; faiss {meta['faiss']}, {meta['threads']} OpenMP threads; {meta['queries']:,} queries "
        f"per setting, k = {K}, best of {meta['repeat']} search runs. Data: {meta['data']}.",
        f"1-minute load average at start / end: {meta.get('load_average', '?')} (other jobs on the same cores "
        "slow every timing; speed-ups compare runs minutes apart).",
        "Recall@10: share of the exact top 10 found. Speed-up: queries/s over exact (Flat) search at the same size. "
        "Memory: serialized index size; RSS delta: resident memory added by building it.",
        "",
        "| vectors | factory | search params | build s | queries/s | speed-up | recall@10 | index MiB | RSS delta MiB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['n']:,} | `{r['factory']}` | `{r['search']}` | {r['build_s']:.1f} | {r['qps']:,} | "
                     f"{r['speedup']:.1f} | {r['recall@10']:.4f} | {r['index_bytes'] / 2**20:.1f} | "
                     f"{r['rss_delta_bytes'] / 2**20:.1f} |")
    largest = max(r["n"] for r in rows)
    ok = [r for r in rows if r["n"] == largest and r["recall@10"] >= 0.95 and r["speedup"] >= 10]
    lines += ["", f"Goal at {largest:,} vectors (recall@10 >= 0.95 at >= 10x exact queries/s): " + (
        ", ".join(f"`{r['factory']}` `{r['search']}` ({r['recall@10']:.3f}, {r['speedup']:.1f}x)" for r in ok)
        if ok else "not met by any setting"), ""]
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="search runs per setting; the fastest counts")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    meta = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "faiss": faiss.__version__, "threads": args.threads,
            "queries": args.queries, "repeat": args.repeat,
            "data": f"d = {D}, {CLUSTERS:,} Gaussian clusters (centres N(0, 1), spread {SPREAD}), L2-normalised, "
                    f"inner product"}
    rows = []
    for n in args.sizes:
        rows += run_size(n, args.queries, args.repeat, lambda m: print(m, flush=True))
    meta["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]  # others' work skews timings
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index_bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "index_bench.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
