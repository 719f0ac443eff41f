"""BERT4Rec (Sun et al., CIKM 2019) with RecBole 1.2.1's defaults.

A bidirectional Transformer trained as a cloze task: a random share of the items in a window is
replaced by a mask token (id n_items + 1) and predicted from both sides; some windows mask only
their last item, which is the inference task. At inference the mask token is appended after the
history, so the model fills in the next item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..configtools import InvalidValue, field
from .sasrec import SASRecParams, TransformerNet
from .train import NeuralModel, left_pad


@dataclass
class BERT4RecParams(SASRecParams):
    dropout: float = field(0.2, help="dropout on embeddings, attention probabilities and block outputs")
    mask_prob: float = field(0.2, help="share of a window's items replaced by the mask token in training")
    ft_ratio: float = field(0.5, help="share of windows that mask only their last item, as at inference "
                                      "(RecBole's fine-tuning samples)")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.mask_prob <= 1:
            raise InvalidValue("mask_prob", f"must be in (0, 1], got {self.mask_prob}")
        if not 0 <= self.ft_ratio <= 1:
            raise InvalidValue("ft_ratio", f"must be in [0, 1], got {self.ft_ratio}")


class BERT4RecNet(nn.Module):
    """The bidirectional encoder plus BERT's output transform (dense, GELU, LayerNorm) and item bias."""

    def __init__(self, n_items: int, max_len: int, p: BERT4RecParams):
        super().__init__()
        self.encoder = TransformerNet(n_items + 2, max_len, p, causal=False)
        self.head = nn.Sequential(nn.Linear(p.hidden_size, p.hidden_size), nn.GELU(),
                                  nn.LayerNorm(p.hidden_size, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(items))


class BERT4Rec(NeuralModel):
    name = "bert4rec"
    Params = BERT4RecParams

    @property
    def mask_token(self) -> int:
        return self.n_items + 1

    def build(self) -> nn.Module:
        return BERT4RecNet(self.n_items, self.train_cfg.max_len, self.params)

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        items = windows[:, 1:]  # max_len items, the input length used at inference
        masked = (torch.rand(items.shape, device=items.device) < self.params.mask_prob) & (items > 0)
        last_only = torch.rand(len(items), device=items.device) < self.params.ft_ratio
        masked[last_only] = False
        masked[last_only | ~masked.any(1), -1] = True  # the last item is never padding
        states = self.net(items.masked_fill(masked, self.mask_token))
        return nn.functional.cross_entropy(self.item_logits(states[masked]), items[masked] - 1)

    def encode(self, histories: list[np.ndarray]) -> torch.Tensor:
        items = left_pad(histories, self.train_cfg.max_len - 1).to(self.device)
        items = torch.cat([items, items.new_full((len(histories), 1), self.mask_token)], dim=1)
        return self.net(items)[:, -1]

    def item_logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.net.encoder.items.weight[1:self.n_items + 1].T + self.net.bias
