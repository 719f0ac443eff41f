"""GRU4Rec (Hidasi et al., ICLR 2016) as RecBole 1.2.1 builds it.

Item embedding (dropout) -> GRU -> linear projection back to the embedding size; an item is scored
by the dot product of the last step's projection with the item's embedding; cross-entropy over all
items at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configtools import InvalidValue, field
from .train import NextItemModel


@dataclass
class GRU4RecParams:
    embedding_size: int = field(64, help="item embedding size (also the user vector size)")
    hidden_size: int = field(128, help="GRU state size")
    num_layers: int = field(1, help="stacked GRU layers")
    dropout: float = field(0.3, help="dropout on the input item embeddings")

    def validate(self) -> None:
        for key in ("embedding_size", "hidden_size", "num_layers"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise InvalidValue("dropout", f"must be in [0, 1), got {self.dropout}")


class GRU4RecNet(nn.Module):
    def __init__(self, n_items: int, p: GRU4RecParams):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, p.embedding_size, padding_idx=0)
        self.dropout = nn.Dropout(p.dropout)
        self.gru = nn.GRU(p.embedding_size, p.hidden_size, p.num_layers, bias=False, batch_first=True)
        self.project = nn.Linear(p.hidden_size, p.embedding_size)
        nn.init.xavier_normal_(self.items.weight)  # RecBole's init
        for weight in self.gru.parameters():
            nn.init.xavier_uniform_(weight)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """[B, T] right-aligned items -> [B, T, embedding_size].

        Left padding is exact: the padding embedding is zero and the GRU has no bias, so the state
        stays zero until the first real item.
        """
        states, _ = self.gru(self.dropout(self.items(items)))
        return self.project(states)


class GRU4Rec(NextItemModel):
    name = "gru4rec"
    Params = GRU4RecParams

    def build(self) -> nn.Module:
        return GRU4RecNet(self.n_items, self.params)
