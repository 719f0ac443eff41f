"""The one interface every ID-based model shares (RecBole-style, CPU and CUDA).

Items are 1..n_items; 0 is padding. A history is a 1-D int array of item indices, oldest first.

Items a CF model never saw (docs/protocols.md): an item with no training interaction (in no sequence of
prepare's train.parquet) tells a model nothing, and whatever score its untrained parameters give it is
noise. Wherever CF scores rank items (score-cf's protocols, the rerank protocol's CF lists, the ranker's
candidate CF ranks), the model is wrapped in SeenItemsOnly: every never-seen item gets, in every case, one
finite score below every seen item's (unseen_last), so all never-seen items tie with each other and rank
below the rest. A list of never-seen items only (a cold test list, data.split=cold) is then all ties: chance.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd
import torch

from ..errors import ArtifactError
from .config import CFTrainConfig


@dataclass
class Cases:
    """Held-out cases: for each, a user's history and the target item (and its stored negatives)."""

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray
    negatives: np.ndarray | None = None  # [n_cases, N]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "Cases":
        negatives = np.array(frame["negatives"].tolist(), dtype=np.int64) if "negatives" in frame else None
        return cls(users=frame["user"].to_numpy(np.int64),
                   histories=[np.asarray(h, dtype=np.int64) for h in frame["history"]],
                   targets=frame["target"].to_numpy(np.int64), negatives=negatives)

    def __len__(self) -> int:
        return len(self.targets)

    def candidates(self) -> np.ndarray:
        """[n_cases, 1 + N]: the target first, then the stored negatives."""
        assert self.negatives is not None, "these cases carry no negatives"
        return np.concatenate([self.targets[:, None], self.negatives], axis=1)


Log = Callable[[str], None]


def seen_items(sequences, n_items: int) -> np.ndarray:
    """[n_items + 1] bool: True for the items of at least one training sequence (padding, 0, never)."""
    seen = np.zeros(n_items + 1, dtype=bool)
    for s in sequences:
        seen[np.asarray(s, dtype=np.int64)] = True
    seen[0] = False
    return seen


def unseen_last(scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """[B, n_items + 1] float32 scores where every never-seen item (seen[i] False; column 0, padding, is left as
    it is) scores the same finite value per row, below every seen item: the row's lowest finite seen score
    minus (1 + its magnitude), so that it stays below in float32 at any scale (0 when the row has none)."""
    scores = scores.float()
    seen = seen.to(scores.device)
    if bool(seen[1:].all()):
        return scores
    finite_seen = seen & torch.isfinite(scores)
    low = scores.masked_fill(~finite_seen, float("inf")).min(dim=1).values
    floor = torch.where(torch.isfinite(low), low - (1.0 + low.abs()), torch.zeros_like(low))
    unseen = ~seen
    unseen[0] = False
    return torch.where(unseen.unsqueeze(0), floor.unsqueeze(1), scores)


class CFModel(abc.ABC):
    """fit on training sequences; score candidates; score all items; embed histories."""

    name: ClassVar[str]
    Params: ClassVar[type]  # the model's hyperparameter dataclass (cf.params.<name> in the config)

    def __init__(self, n_items: int, params: Any, train: CFTrainConfig, seed: int, device: torch.device):
        self.n_items, self.params, self.train_cfg, self.seed, self.device = n_items, params, train, seed, device

    @abc.abstractmethod
    def fit(self, sequences: list[np.ndarray], valid: Cases, log: Log) -> dict:
        """Train; early-stop on `valid` (never on test). Returns facts for the manifest (epochs, best metric)."""

    @abc.abstractmethod
    def full_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        """[B, n_items + 1] scores for every item given each history (column 0, padding, is ignored)."""

    def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """[B, C] scores of the given candidate items."""
        full = self.full_scores(histories)
        return full.gather(1, torch.as_tensor(candidates, device=full.device)).float().cpu().numpy()

    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        """[B, d] embeddings of histories, for the retrieval index (sequential models only)."""
        raise NotImplementedError(f"{self.name} has no user vectors; use sasrec or gru4rec for retrieval")

    @abc.abstractmethod
    def state(self) -> dict:
        """Everything needed to restore the fitted model (tensors and plain values)."""

    @abc.abstractmethod
    def restore(self, state: dict) -> None:
        ...

    def save(self, path: Path) -> None:
        import io
        from ..artifacts import atomic_write_bytes
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        atomic_write_bytes(path, buf.getvalue())

    def load(self, path: Path) -> "CFModel":
        """Restore from `path`. Only tensors and plain values are read (`weights_only=True`): a run folder
        is shared and linked between runs, and a pickle placed in one must never run code here."""
        import pickle

        try:
            self.restore(torch.load(path, map_location=self.device, weights_only=True))
        except pickle.UnpicklingError:
            raise ArtifactError(f"{path}: refused to load: it holds objects other than tensors and plain values, "
                                f"which this project never writes (unpickling them could run code). Delete it and "
                                f"rerun `mmsrarec train-cf`") from None
        except (RuntimeError, EOFError, OSError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot be read as a {self.name} model ({type(exc).__name__}: {exc}); "
                                f"delete it and rerun `mmsrarec train-cf`") from None
        return self


class SeenItemsOnly:
    """A fitted CFModel whose item scores follow the never-seen rule (module docstring): full_scores and score
    go through unseen_last with the items of the model's training sequences; everything else (user_vectors,
    name, n_items, ...) is the model's own."""

    def __init__(self, model: CFModel, seen: np.ndarray):
        self.model = model
        self.seen = torch.as_tensor(np.asarray(seen, dtype=bool))

    def full_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        return unseen_last(self.model.full_scores(histories), self.seen)

    def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        full = self.full_scores(histories)
        return full.gather(1, torch.as_tensor(candidates, device=full.device)).cpu().numpy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)
