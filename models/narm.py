"""NARM (Li et al., 2017): a GRU's last state (global intent) plus attention over all its states
keyed by the last one (local intent), mapped bilinearly into item space. Causal: every position
attends only to states at or before it."""

from __future__ import annotations

import torch
from torch import nn

from .base import Batch, SequenceRecallModel
from .features import Feature
from .layers import RecurrentEncoder, causal_mask, masked_softmax


class NARM(SequenceRecallModel):
    name = "narm"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        hidden_size: int = 128,
        attention_size: int = 64,
        dropout: float = 0.25,
        temperature: float = 1.0,
    ):
        super().__init__(user_features, item_features, temperature)
        self.encoder = RecurrentEncoder(self.dim, hidden_size, 1, 0.0)
        self.a1 = nn.Linear(hidden_size, attention_size, bias=False)
        self.a2 = nn.Linear(hidden_size, attention_size, bias=False)
        self.v = nn.Linear(attention_size, 1, bias=False)
        self.drop = nn.Dropout(dropout)
        self.bilinear = nn.Linear(2 * hidden_size, self.dim, bias=False)
        self._remember(hidden_size=hidden_size, attention_size=attention_size, dropout=dropout)

    def encode(self, batch: Batch) -> torch.Tensor:
        x, mask = self.history(batch)
        h = self.encoder(self.drop(x), mask)  # (B, L, H)
        # α[t, j] = v · σ(A1 h_t + A2 h_j), over j ≤ t
        e = self.v(torch.sigmoid(self.a1(h).unsqueeze(2) + self.a2(h).unsqueeze(1))).squeeze(-1)  # (B, L, L)
        alpha = masked_softmax(e, causal_mask(mask))
        local = alpha @ h  # (B, L, H)
        return self.bilinear(self.drop(torch.cat([h, local], -1)))  # (B, L, d)
