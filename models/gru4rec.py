"""GRU4Rec (Hidasi et al., 2016): a GRU over the item history; its state after each item is the
query for the next one. Trained on every position in one pass."""

from __future__ import annotations

import torch
from torch import nn

from .base import Batch, SequenceRecallModel
from .features import Feature
from .layers import RecurrentEncoder


class GRU4Rec(SequenceRecallModel):
    name = "gru4rec"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.2,
        temperature: float = 1.0,
    ):
        super().__init__(user_features, item_features, temperature)
        self.encoder = RecurrentEncoder(self.dim, hidden_size, num_layers, dropout)
        self.out = nn.Linear(hidden_size, self.dim)  # back to item space for the inner product
        self._remember(hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)

    def encode(self, batch: Batch) -> torch.Tensor:
        x, mask = self.history(batch)
        return self.out(self.encoder(x, mask))  # (B, L, d)
