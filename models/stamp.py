"""STAMP (Liu et al., 2018): short-term attention (keyed by the last item and the session mean)
over the history, combined multiplicatively with the last item's own representation. Causal: the
query at each position uses only the items up to it."""

from __future__ import annotations

import torch
from torch import nn

from .base import Batch, SequenceRecallModel
from .features import Feature
from .layers import causal_mask, masked_softmax


class STAMP(SequenceRecallModel):
    name = "stamp"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        dropout: float = 0.1,
        temperature: float = 1.0,
    ):
        super().__init__(user_features, item_features, temperature)
        d = self.dim
        self.w1, self.w2, self.w3 = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.w0 = nn.Linear(d, 1, bias=False)
        self.mlp_a, self.mlp_b = nn.Linear(d, d), nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self._remember(dropout=dropout)

    def encode(self, batch: Batch) -> torch.Tensor:
        x, mask = self.history(batch)
        x = self.drop(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        m_s = torch.cumsum(x * m, 1) / torch.cumsum(m, 1).clamp(min=1.0)  # running session mean, (B, L, d)
        # α[t, j] = w0 · σ(W1 x_j + W2 x_t + W3 m_s(t)), over j ≤ t
        key = self.w1(x).unsqueeze(1)  # (B, 1, L, d)
        query = (self.w2(x) + self.w3(m_s)).unsqueeze(2)  # (B, L, 1, d)
        alpha = masked_softmax(self.w0(torch.sigmoid(key + query)).squeeze(-1), causal_mask(mask))
        m_a = alpha @ x  # (B, L, d)
        return torch.tanh(self.mlp_a(m_a)) * torch.tanh(self.mlp_b(x))  # h_s ⊙ h_t
