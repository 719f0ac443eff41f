"""Configuration of the evaluate stage: which methods go on the leaderboard, under which protocols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..configtools import InvalidValue, field


@dataclass
class EvaluateConfig:
    methods: list[str] = field(default_factory=lambda: ["pop", "itemknn", "gru4rec", "sasrec"],
                               help="methods on the leaderboard (trained CF models; later stages add more)")
    protocols: list[Literal["sampled", "full"]] = field(
        default_factory=lambda: ["sampled", "full"],
        help="sampled: the stored 1+N candidate lists; full: rank all items except the case's history")
    full_exclude_history: bool = field(
        True, help="full protocol: drop the case's history items from the ranking (false = keep them, as RecBole "
                   "1.2.1 does for sequential models)")
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20], help="cut-offs for HR/NDCG/MRR")
    batch_size: int = field(256, help="cases scored per batch")

    def validate(self) -> None:
        if not self.protocols:
            raise InvalidValue("protocols", "must name at least one protocol")
        if any(k < 1 for k in self.ks):
            raise InvalidValue("ks", f"must be positive, got {self.ks}")
        if self.batch_size < 1:
            raise InvalidValue("batch_size", f"must be >= 1, got {self.batch_size}")
