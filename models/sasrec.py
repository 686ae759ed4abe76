"""SASRec (Kang & McAuley, 2018): a causal transformer over the item history; the query at each
position predicts the next item, the item tower is the shared item-id embedding.

Training predicts every position of a sequence in one pass; serving uses the newest position.
"""

from __future__ import annotations

import torch

from .base import Batch, SequenceRecallModel
from .features import Feature
from .layers import CausalTransformer


class SASRec(SequenceRecallModel):
    name = "sasrec"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        embedding_dim: int = 64,
        num_heads: int = 2,
        num_layers: int = 2,
        hidden_size: int = 128,
        dropout: float = 0.2,
        temperature: float = 1.0,
        max_len: int = 50,
    ):
        super().__init__(user_features, item_features, temperature)
        if self.dim != embedding_dim:
            raise ValueError(f"embedding_dim {embedding_dim} != history embedding size {self.dim}")
        self.encoder = CausalTransformer(self.dim, num_heads, num_layers, hidden_size, dropout, max_len)
        self._remember(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            hidden_size=hidden_size,
            dropout=dropout,
            max_len=max_len,
        )

    @classmethod
    def from_schema(cls, schema, embedding_dim: int = 64, **params):  # type: ignore[override]
        params.setdefault("max_len", schema.max_len)
        user, item = [schema.history(embedding_dim, None)], [schema.item_id(embedding_dim)]
        return cls(user, item, embedding_dim=embedding_dim, **params)

    def encode(self, batch: Batch) -> torch.Tensor:
        x, mask = self.history(batch)
        return self.encoder(x, mask)  # (B, L, d)
