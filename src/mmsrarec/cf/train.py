"""The training loop and plumbing shared by the neural sequential models (GRU4Rec, SASRec, BERT4Rec).

Training data: each user's training sequence is cut, from its end backwards, into windows of
max_len + 1 items that overlap by one item, so every item (but the first) is a next-item target
exactly once per epoch and each window trains all its positions at once (the SASRec paper's
scheme). That is ~max_len times fewer forward passes per epoch than one sample per prefix
(RecBole), with the same targets. Short windows are left-padded with 0, so the most recent item
always sits at the last position, in training and at inference alike.
"""

from __future__ import annotations

import abc
import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..device import resolve_device
from ..evaluate.protocols import evaluate_full, summarize
from .base import Cases, CFModel, Log


def left_pad(histories: list[np.ndarray], length: int) -> torch.Tensor:
    """[B, length] int64: the last `length` items of each history, right-aligned, 0 before them."""
    out = np.zeros((len(histories), length), dtype=np.int64)
    for row, h in enumerate(histories):
        tail = h[-length:] if length else h[:0]
        out[row, length - len(tail):] = tail
    return torch.from_numpy(out)


def training_windows(sequences: list[np.ndarray], size: int) -> torch.Tensor:
    """[N, size] windows taken from each sequence's end backwards, overlapping by one item."""
    step = size - 1
    windows = [s[max(end - size, 0):end] for s in sequences for end in range(len(s), 1, -step)]
    return left_pad(windows, size)


class NeuralModel(CFModel):
    """A CFModel whose network is trained by `fit_neural`; subclasses define the network and loss."""

    def __init__(self, n_items: int, params, train, seed: int, device: torch.device | str):
        device = device if isinstance(device, torch.device) else resolve_device(device)
        super().__init__(n_items, params, train, seed, device)
        torch.manual_seed(seed)  # the same seed builds the same initial weights
        self.net = self.build().to(self.device)

    @abc.abstractmethod
    def build(self) -> nn.Module:
        """The network, freshly initialised."""

    @abc.abstractmethod
    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a batch of [B, max_len + 1] windows (on self.device)."""

    @abc.abstractmethod
    def encode(self, histories: list[np.ndarray]) -> torch.Tensor:
        """[B, d] user states of the histories (the vectors that are dotted with item vectors)."""

    @abc.abstractmethod
    def item_logits(self, states: torch.Tensor) -> torch.Tensor:
        """[B, n_items] scores of items 1..n_items for [B, d] user states."""

    def fit(self, sequences: list[np.ndarray], valid: Cases, log: Log) -> dict:
        return fit_neural(self, sequences, valid, log)

    @torch.no_grad()
    def full_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        self.net.eval()
        logits = self.item_logits(self.encode(histories)).float()
        return torch.cat([logits.new_full((len(histories), 1), -math.inf), logits], dim=1)

    @torch.no_grad()
    def user_vectors(self, histories: list[np.ndarray], batch_size: int = 1024) -> np.ndarray:
        self.net.eval()
        chunks = [self.encode(histories[i:i + batch_size]).float().cpu() for i in range(0, len(histories), batch_size)]
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)

    def state(self) -> dict:
        return {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def restore(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])


def next_item_loss(model: NeuralModel, hidden: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over all items of the next item, at every position that has an input item.

    hidden: [B, max_len, d] states after reading windows[:, :-1]; targets are windows[:, 1:].
    """
    real = windows[:, :-1] > 0
    return nn.functional.cross_entropy(model.item_logits(hidden[real]), windows[:, 1:][real] - 1)


class NextItemModel(NeuralModel):
    """A left-to-right model whose `net` maps items [B, L] to states [B, L, d] and has an item
    embedding table `net.items`: SASRec and GRU4Rec differ only in `build`."""

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        return next_item_loss(self, self.net(windows[:, :-1]), windows)

    def encode(self, histories: list[np.ndarray]) -> torch.Tensor:
        items = left_pad(histories, self.train_cfg.max_len).to(self.device)
        return self.net(items)[:, -1]

    def item_logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.net.items.weight[1:].T


def _train_epoch(model: NeuralModel, windows: torch.Tensor, opt: torch.optim.Optimizer,
                 rng: np.random.Generator) -> float:
    model.net.train()
    order = torch.from_numpy(rng.permutation(len(windows))).to(windows.device)
    size, total = model.train_cfg.batch_size, 0.0
    for start in range(0, len(windows), size):
        batch = windows[order[start:start + size]]
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(batch)
    return total / len(windows)


def validate(model: CFModel, valid: Cases) -> float:
    """The early-stopping metric: full ranking over all items (outside each case's history unless
    cf.train.valid_exclude_history is off, which matches RecBole's rule for sequential models)."""
    metric = model.train_cfg.valid_metric
    per = evaluate_full(model.full_scores, valid, model.n_items, [metric], batch_size=512, progress=False,
                        exclude_history=model.train_cfg.valid_exclude_history)
    return summarize(per)[metric]


@dataclass
class EarlyStopping:
    """Remembers the best validation value and a copy of the weights that reached it."""

    patience: int
    best: float = -math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    stale: int = 0

    def should_stop(self, epoch: int, value: float, net: nn.Module) -> bool:
        if value > self.best:
            self.best, self.best_epoch, self.stale = value, epoch, 0
            self.best_state = copy.deepcopy(net.state_dict())
            return False
        self.stale += 1
        return self.stale >= self.patience


def fit_neural(model: NeuralModel, sequences: list[np.ndarray], valid: Cases, log: Log) -> dict:
    """Adam on all windows each epoch; early stopping on `valid`; the best weights are kept.

    Without validation cases it trains for all epochs and keeps the last weights.
    """
    cfg, started = model.train_cfg, time.perf_counter()
    torch.manual_seed(model.seed)
    rng = np.random.default_rng(model.seed)
    windows = training_windows(sequences, cfg.max_len + 1).to(model.device)
    if not len(windows):
        raise ValueError(f"{model.name}: no training sequence has two items, so there is nothing to predict")
    opt = torch.optim.Adam(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stopping, epoch = EarlyStopping(cfg.patience), 0
    bar = tqdm(range(1, cfg.epochs + 1), desc=model.name, unit="epoch", leave=False)
    for epoch in bar:
        tick = time.perf_counter()
        loss = _train_epoch(model, windows, opt, rng)
        if not len(valid) or (epoch % cfg.eval_every and epoch != cfg.epochs):
            continue
        value = validate(model, valid)
        log(f"{model.name} epoch {epoch}: loss {loss:.4f}, valid {cfg.valid_metric} {value:.4f}, "
            f"{time.perf_counter() - tick:.1f} s")
        bar.set_postfix(loss=f"{loss:.3f}", valid=f"{value:.4f}")
        if stopping.should_stop(epoch, value, model.net):
            break
    bar.close()
    if stopping.best_state is not None:
        model.net.load_state_dict(stopping.best_state)
    found = stopping.best_state is not None
    return {"epochs_run": epoch, "best_epoch": stopping.best_epoch if found else epoch, "windows": len(windows),
            "best_valid": stopping.best if found else None, "train_time_s": time.perf_counter() - started}
