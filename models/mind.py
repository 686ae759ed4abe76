"""MIND (Li et al., 2019): behaviour-to-interest dynamic routing with one shared bilinear map, each
interest capsule concatenated with the user profile and passed through ReLU layers; label-aware
attention picks the interest for a training target."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Batch, MultiInterestModel
from .features import Feature
from .layers import MLP, CapsuleRouting


class MIND(MultiInterestModel):
    name = "mind"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        n_interest: int = 4,
        routing_iterations: int = 3,
        label_power: float = 2.0,
        user_params: dict[str, Any] | None = None,
        temperature: float = 1.0,
    ):
        super().__init__(user_features, item_features, temperature)
        self.routing = CapsuleRouting(self.dim, n_interest, routing_iterations, shared=True)
        self.profile = [f.name for f in self.user_features if f.name != self.hist.name]
        params = {"dims": [2 * self.dim, self.dim], "dropout": 0.0, "activation": "relu", **(user_params or {})}
        self.mlp = MLP(self.dim + self.bank.output_dim(self.profile), **params)
        self.label_power = label_power
        self._remember(
            n_interest=n_interest, routing_iterations=routing_iterations, label_power=label_power, user_params=params
        )

    @classmethod
    def from_schema(cls, schema: Any, embedding_dim: int = 64, **params: Any) -> MIND:
        user = schema.user_profile(embedding_dim, with_user_id=False) + [schema.history(embedding_dim, None)]
        return cls(user, [schema.item_id(embedding_dim)], **params)

    def interests(self, batch: Batch) -> torch.Tensor:
        x, mask = self.history(batch)
        table = self.bank.tables[self.hist.table].weight
        caps = self.routing(x, mask, batch[self.hist.name], table)  # (B, K, d)
        if not self.profile:
            return self.mlp(caps)
        # MLP([capsule; profile]) with the first layer split, W_c·capsule + W_p·profile, so the
        # profile half runs once per user instead of once per interest (same function, less work).
        first = self.mlp.net[0]
        d = caps.size(-1)
        prof = F.linear(self.bank.concat(batch, self.profile), first.weight[:, d:])  # (B, H)
        h = F.linear(caps, first.weight[:, :d], first.bias) + prof.unsqueeze(1)
        return self.mlp.net[1:](h)  # (B, K, d)
