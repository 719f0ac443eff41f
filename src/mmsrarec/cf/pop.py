"""Pop: every user gets the same ranking, by the number of training interactions per item."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .base import Cases, CFModel, Log
from .train import validate


@dataclass
class PopParams:
    """Pop has no hyperparameters."""

    def validate(self) -> None:
        return None


class Pop(CFModel):
    name = "pop"
    Params = PopParams

    def __init__(self, n_items: int, params: PopParams, train, seed: int, device: torch.device):
        super().__init__(n_items, params, train, seed, device)
        self.counts = torch.zeros(n_items + 1)

    def fit(self, sequences: list[np.ndarray], valid: Cases, log: Log) -> dict:
        started = time.perf_counter()
        items = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
        self.counts = torch.from_numpy(np.bincount(items, minlength=self.n_items + 1).astype(np.float32))
        value = validate(self, valid) if len(valid) else None
        log(f"pop: {len(items)} interactions counted, valid {self.train_cfg.valid_metric} {value}")
        return {"epochs_run": 1, "best_epoch": 1, "best_valid": value, "train_time_s": time.perf_counter() - started}

    def full_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        scores = self.counts.clone()
        scores[0] = -math.inf
        return scores.to(self.device).expand(len(histories), -1)

    def state(self) -> dict:
        return {"counts": self.counts}

    def restore(self, state: dict) -> None:
        self.counts = state["counts"].cpu()
