"""Configuration of the text-embedding baseline (the `score-text` stage)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..configtools import InvalidValue, field
from ..models.config import EmbedderConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # it becomes part of sampled/<name>_<split>.parquet


@dataclass
class TextConfig:
    name: str = field("text", help="its leaderboard row (put it in evaluate.methods to score it)")
    history_len: int = field(50, help="the user's profile is built from the case's last N history items")
    decay: float = field(0.9, help="weight of the j-th most recent history item in the profile is decay**j "
                                   "(the most recent has j = 0), in (0, 1]; 1 = plain mean")
    batch_size: int = field(256, help="cases scored per batch (the full protocol scores every item per case)")
    fuse_cf: str = field("sasrec", help=(
        "a CF model of cf.models and evaluate.methods whose sampled scores are blended with the text scores in a "
        "second row '<name>+<fuse_cf>', the weight picked on valid by evaluate.fuse_metric (evaluate/fusion.py); "
        "with 'sampled' in evaluate.protocols; empty = no blended row"))
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)

    @property
    def fused_name(self) -> str:
        """The blended row's method name."""
        return f"{self.name}+{self.fuse_cf}"

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidValue("name", f"must be letters, digits, '_', '.' or '-' (no '+': the blend's row is "
                                       f"'<name>+<fuse_cf>'), got {self.name!r}")
        if self.history_len < 1:
            raise InvalidValue("history_len", f"must be >= 1, got {self.history_len}")
        if not 0.0 < self.decay <= 1.0:
            raise InvalidValue("decay", f"must be in (0, 1] (1 = plain mean), got {self.decay}")
        if self.batch_size < 1:
            raise InvalidValue("batch_size", f"must be >= 1, got {self.batch_size}")
