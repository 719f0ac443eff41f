"""SASRec (Kang & McAuley, ICDM 2018) with RecBole 1.2.1's defaults and structure.

Learned positional embeddings + post-LN Transformer blocks (GELU, layer-norm eps 1e-12) under a
causal mask; an item is scored by the dot product of the last position's output with the item's
(shared input) embedding; cross-entropy over all items at every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configtools import InvalidValue, field
from .train import NextItemModel


@dataclass
class SASRecParams:
    hidden_size: int = field(64, help="item embedding and Transformer width")
    n_layers: int = field(2, help="Transformer blocks")
    n_heads: int = field(2, help="attention heads; must divide hidden_size")
    inner_size: int = field(256, help="feed-forward width inside each block")
    dropout: float = field(0.5, help="dropout on embeddings, attention probabilities and block outputs")

    def validate(self) -> None:
        for key in ("hidden_size", "n_layers", "n_heads", "inner_size"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        if self.hidden_size % self.n_heads:
            raise InvalidValue("n_heads", f"must divide hidden_size {self.hidden_size}, got {self.n_heads}")
        if not 0 <= self.dropout < 1:
            raise InvalidValue("dropout", f"must be in [0, 1), got {self.dropout}")


def attention_mask(items: torch.Tensor, n_heads: int, causal: bool) -> torch.Tensor:
    """[B * n_heads, T, T] True where a query may not attend a key: padding keys (and the future).

    Every position may attend itself, so a padding query never has all keys blocked (that gives NaN);
    padding outputs are never read.
    """
    length = items.shape[1]
    blocked = (items == 0)[:, None, :].expand(-1, length, -1)
    if causal:
        blocked = blocked | torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
    blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=items.device)
    return blocked.repeat_interleave(n_heads, dim=0)


class TransformerNet(nn.Module):
    """Item + position embeddings, LayerNorm, dropout, Transformer blocks: [B, T] items -> [B, T, d]."""

    def __init__(self, n_embeddings: int, max_len: int, p: SASRecParams, causal: bool):
        super().__init__()
        self.items = nn.Embedding(n_embeddings, p.hidden_size, padding_idx=0)
        self.positions = nn.Embedding(max_len, p.hidden_size)
        self.norm = nn.LayerNorm(p.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(p.dropout)
        block = nn.TransformerEncoderLayer(p.hidden_size, p.n_heads, p.inner_size, p.dropout, activation="gelu",
                                           layer_norm_eps=1e-12, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, p.n_layers, enable_nested_tensor=False)
        self.n_heads, self.causal = p.n_heads, causal
        for emb in (self.items, self.positions):  # RecBole's init: N(0, 0.02)
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # inputs are right-aligned, so the most recent item always gets the last position embedding
        x = self.dropout(self.norm(self.items(items) + self.positions.weight[-items.shape[1]:]))
        return self.encoder(x, mask=attention_mask(items, self.n_heads, self.causal))


class SASRec(NextItemModel):
    name = "sasrec"
    Params = SASRecParams

    def build(self) -> nn.Module:
        return TransformerNet(self.n_items + 1, self.train_cfg.max_len, self.params, causal=True)
