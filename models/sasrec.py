"""SASRec (Kang & McAuley, 2018): a causal transformer over the item history; the query at each
position predicts the next item, the item tower is the shared item-id embedding.

Training predicts every position of a sequence in one pass (``causal = True``); serving uses the
newest position's state as the user vector.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Batch, RecallModel
from .features import Feature
from .layers import CausalTransformer
from .schema import Schema


class SASRec(RecallModel):
    name = "sasrec"
    causal = True

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
        self.hist = self.sequence_feature()
        d = self.bank.table_for(self.hist.name).embedding_dim
        if d != embedding_dim:
            raise ValueError(f"embedding_dim {embedding_dim} != history embedding size {d}")
        self.encoder = CausalTransformer(d, num_heads, num_layers, hidden_size, dropout, max_len)
        self._remember(
            embedding_dim=embedding_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            hidden_size=hidden_size,
            dropout=dropout,
            max_len=max_len,
        )

    @classmethod
    def from_schema(cls, schema: Schema, embedding_dim: int = 64, **params: Any) -> SASRec:
        params.setdefault("max_len", schema.max_len)
        user = [schema.history(embedding_dim, None)]
        return cls(user, [schema.item_id(embedding_dim)], embedding_dim=embedding_dim, **params)

    def _encode(self, batch: Batch) -> torch.Tensor:
        ids = batch[self.hist.name]
        return self.encoder(self.bank.tables[self.hist.table](ids), ids > 0)  # (B, L, d)

    def user_tower(self, batch: Batch) -> torch.Tensor:
        return self._encode(batch)[:, -1]  # newest position, (B, d)

    def item_tower(self, batch: Batch) -> torch.Tensor:
        return self.bank.embed("item_id", batch["item_id"])  # (N, d)

    def train_queries(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._encode(batch)
        tgt = batch["target_seq"]
        keep = tgt > 0
        return h[keep], tgt[keep]  # (M, d), (M,)
