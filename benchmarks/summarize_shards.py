"""Sharded summarization throughput: the same items summarized by 1 process and by P processes
(RANK / WORLD_SIZE, as torchrun sets them) writing into one ChunkStore; items/s end to end (process
start to the last item stored, model loading included) and while generating.

    python benchmarks/summarize_shards.py                                 # 64 ML-100K items, SmolLM2-135M
    python benchmarks/summarize_shards.py --items 16 --processes 2 --batch-size 4    # smoke

Items: the first --items of runs/<--run>/prepare/items.parquet (run `mmsrarec prepare --config
configs/ml100k.yaml` first). Every process uses --threads torch threads. Checks that every item is
stored exactly once, and counts the items whose keywords equal the 1-process run's (greedy decoding;
batches differ between the runs, and so do their padding and float summation order).
Writes benchmarks/results/summarize_shards.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd


def worker(args: argparse.Namespace) -> None:
    """One process: its share of the items into the shared store; facts as JSON on stdout."""
    import torch

    from mmsrarec.models.config import ModelConfig
    from mmsrarec.sharding import current_shard
    from mmsrarec.summarize.config import SummarizeConfig
    from mmsrarec.summarize.stage import summarize_items
    from mmsrarec.summarize.store import ChunkStore

    torch.set_num_threads(args.threads)
    shard = current_shard()
    items = pd.read_parquet(args.run / "prepare" / "items.parquet").head(args.items)
    cfg = SummarizeConfig(model=ModelConfig(name_or_path=args.model, device="cpu"), batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens)
    facts = summarize_items(items, cfg, ChunkStore(args.store, writer=shard.tag), log=lambda m: None, shard=shard)
    print(json.dumps(facts), flush=True)


def launch(args: argparse.Namespace, processes: int, store: Path) -> dict:
    store.mkdir(parents=True, exist_ok=False)
    base = [sys.executable, __file__, "--worker", "--store", str(store), "--run", str(args.run),
            "--items", str(args.items), "--batch-size", str(args.batch_size), "--max-new-tokens",
            str(args.max_new_tokens), "--threads", str(args.threads), "--model", args.model]
    env = {**os.environ, "WORLD_SIZE": str(processes), "OMP_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(base, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(processes)]
    facts = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed:\n{err[-3000:]}")
        facts.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - t0
    generating = max(f["generation_s"] for f in facts)
    return {"processes": processes, "wall_s": round(wall, 1), "items_per_s_end_to_end": round(args.items / wall, 3),
            "generation_s_slowest": generating, "items_per_s_generating": round(args.items / generating, 3),
            "per_process": facts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/ml100k"))
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--model", default="embedded:smollm2")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/summarize_shards"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from mmsrarec.summarize.store import ChunkStore
    sys.path.insert(0, str(Path(__file__).parent))
    from index_bench import cpu_name

    stamp = time.strftime("%Y%m%d-%H%M%S")
    load = os.getloadavg()[0]
    rows, tables = [], {}
    for processes in (1, args.processes):
        store = args.folder / f"{stamp}-p{processes}"
        rows.append(launch(args, processes, store))
        tables[processes] = ChunkStore(store).merged()  # refuses an item stored twice
        assert len(tables[processes]) == args.items, "an item is missing"
        print(json.dumps(rows[-1]), flush=True)
    one, many = tables[1], tables[args.processes]
    same = int((one["keywords"].map(list) == many["keywords"].map(list)).sum())
    meta = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs, no GPU", "model": args.model, "items": args.items,
            "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
            "load_average": [round(load, 1), round(os.getloadavg()[0], 1)], "same_keywords": same,
            "command": "python benchmarks/summarize_shards.py " + " ".join(sys.argv[1:])}
    lines = ["# Sharded summarization throughput", "",
             f"{meta['machine']}; {args.model}, {args.items} ML-100K items, batch {args.batch_size}, "
             f"{args.max_new_tokens} new tokens, {args.threads} torch thread(s) per process; 1-minute load average "
             f"at start / end {meta['load_average']} (other jobs share the cores). `{meta['command']}`.", "",
             "| processes | wall s (start to last item) | items/s end to end | slowest process generating s | "
             "items/s generating |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['processes']} | {r['wall_s']} | {r['items_per_s_end_to_end']} | "
                     f"{r['generation_s_slowest']} | {r['items_per_s_generating']} |")
    lines += ["", f"Every item stored exactly once in both runs; {same} of {args.items} items got the same keywords "
              f"from {args.processes} processes as from 1 (the batches differ, see the docstring).", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summarize_shards.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "summarize_shards.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
