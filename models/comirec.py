"""ComiRec (Cen et al., 2020): multi-interest extraction by dynamic routing (ComirecDR: a bilinear
map per history slot and interest, W_ij in the paper, zero starting logits) or by multi-head
self-attention (ComirecSA); the interest closest to a training target is the one trained on it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Batch, MultiInterestModel
from .features import Feature
from .layers import CapsuleRouting, SelfAttentiveInterests


class ComirecDR(MultiInterestModel):
    name = "comirec_dr"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        n_interest: int = 4,
        routing_iterations: int = 3,
        max_len: int = 200,
        per_slot: bool = True,
        temperature: float = 1.0,
    ):
        super().__init__(user_features, item_features, temperature)
        self.routing = CapsuleRouting(
            self.dim, n_interest, routing_iterations, shared=False, max_len=max_len, per_slot=per_slot
        )
        self._remember(n_interest=n_interest, routing_iterations=routing_iterations, max_len=max_len, per_slot=per_slot)

    @classmethod
    def from_schema(cls, schema: Any, embedding_dim: int = 64, **params: Any) -> ComirecDR:
        params.setdefault("max_len", schema.max_len)  # one set of maps per history slot
        return super().from_schema(schema, embedding_dim, **params)  # type: ignore[return-value]

    def interests(self, batch: Batch) -> torch.Tensor:
        ids = batch[self.hist.name]
        table = self.bank.tables[self.hist.table].weight
        return self.routing(None, ids > 0, ids, table)  # (B, K, d); embeddings looked up as needed


class ComirecSA(MultiInterestModel):
    name = "comirec_sa"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        n_interest: int = 4,
        hidden_size: int = 256,
        max_len: int = 200,
        temperature: float = 1.0,
    ):
        super().__init__(user_features, item_features, temperature)
        self.pos = nn.Embedding(max_len, self.dim)
        self.attention = SelfAttentiveInterests(self.dim, n_interest, hidden_size)
        self.max_len = max_len
        self._remember(n_interest=n_interest, hidden_size=hidden_size, max_len=max_len)

    def interests(self, batch: Batch) -> torch.Tensor:
        x, mask = self.history(batch)
        L = x.size(1)
        if L > self.max_len:
            raise ValueError(f"history length {L} exceeds max_len {self.max_len}")
        pos = (L - 1) - torch.arange(L, device=x.device)  # recency: 0 = newest
        return self.attention(x + self.pos(pos) * mask.unsqueeze(-1), mask, values=x)  # (B, K, d)
