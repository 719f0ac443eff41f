"""The train-cf stage: fit every model in cf.models on the training sequences.

Writes <model>.pt (weights/statistics) and <model>.json (epochs, best validation metric, training
wall time, peak memory) per model. A killed run resumes with the models not yet saved.
"""

from __future__ import annotations

import time

import numpy as np

from .. import faults
from ..artifacts import read_json, write_json
from ..data.prepare import load_prepared
from ..device import resolve_device
from ..profiling import PeakMemory
from . import build_model
from .base import Cases


def run(ctx) -> None:
    cfg = ctx.cfg
    data = load_prepared(ctx.input("prepare"))
    sequences = [np.asarray(s, dtype=np.int64) for s in data["train"]["items"]]
    valid = Cases.from_frame(data["valid"])
    n_items = len(data["items"])
    device = resolve_device(cfg.cf.train.device)
    for name in cfg.cf.models:
        weights, info_path = ctx.out / f"{name}.pt", ctx.out / f"{name}.json"
        if weights.is_file() and info_path.is_file():
            ctx.log(f"{name}: already trained in this run, kept")
            ctx.summary[name] = read_json(info_path)
            continue
        model = build_model(name, n_items, cfg.cf.params.get(name), cfg.cf.train, cfg.seed, device)
        ctx.log(f"{name}: training on {len(sequences):,} sequences, {n_items:,} items, device {device}")
        t0, cpu0 = time.perf_counter(), time.process_time()
        with PeakMemory() as mem:
            info = model.fit(sequences, valid, ctx.log)
        info = {**info, "train_time_s": round(time.perf_counter() - t0, 3),
                "train_cpu_s": round(time.process_time() - cpu0, 3),  # robust to other load on the machine
                "peak_rss_mb": round(mem.peak_mb, 1), "device": str(device)}
        model.save(weights)
        faults.step("train-cf")  # weights written, not yet marked done by <model>.json
        write_json(info_path, info)
        ctx.summary[name] = info
        ctx.log(f"{name}: done {info}")


def load_trained(folder, name: str, cfg, n_items: int, device: str | None = None):
    """A fitted model from a train-cf stage folder, on `device` (default: cf.train.device), and its facts.
    Whatever ranks items by its scores wraps it in base.SeenItemsOnly (never-seen items last, tied)."""
    model = build_model(name, n_items, cfg.cf.params.get(name), cfg.cf.train, cfg.seed,
                        resolve_device(device or cfg.cf.train.device))
    return model.load(folder / f"{name}.pt"), read_json(folder / f"{name}.json")
