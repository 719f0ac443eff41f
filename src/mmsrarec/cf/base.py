"""The one interface every ID-based model shares (RecBole-style, CPU and CUDA).

Items are 1..n_items; 0 is padding. A history is a 1-D int array of item indices, oldest first.
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
