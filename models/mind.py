"""MIND (Li et al., 2019): behaviour-to-interest dynamic routing with one shared bilinear map (routing
logits drawn at random per interest and history slot, see :class:`~models.layers.CapsuleRouting`), a
dynamic number of interests per user, K'_u = max(1, min(K, ⌊log2 n_u⌋)) for a history of n_u items,
each interest capsule concatenated with the user profile and passed through ReLU layers; label-aware
attention, softmax(pow(scores, p)) over the user's interests, trains the interests on a target
(``label_power=None``: the argmax, as ComiRec's and torch-rechub's MIND do)."""

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
        label_power: float | None = 1.0,
        user_params: dict[str, Any] | None = None,
        temperature: float = 1.0,
        dynamic_interests: bool = True,
        max_len: int = 256,
    ):
        super().__init__(user_features, item_features, temperature)
        if label_power is not None and (label_power <= 0 or label_power != int(label_power)):
            raise ValueError(f"label_power must be a whole number >= 1 (a power of scores that can be negative) "
                             f"or null (the argmax), got {label_power}")
        self.routing = CapsuleRouting(self.dim, n_interest, routing_iterations, shared=True, max_len=max_len)
        self.dynamic_interests = dynamic_interests
        self.profile = [f.name for f in self.user_features if f.name != self.hist.name]
        params = {"dims": [2 * self.dim, self.dim], "dropout": 0.0, "activation": "relu", **(user_params or {})}
        self.mlp = MLP(self.dim + self.bank.output_dim(self.profile), **params)
        self.label_power = label_power
        self._remember(
            n_interest=n_interest, routing_iterations=routing_iterations, label_power=label_power, user_params=params,
            dynamic_interests=dynamic_interests, max_len=max_len,
        )

    @classmethod
    def from_schema(cls, schema: Any, embedding_dim: int = 64, **params: Any) -> MIND:
        user = schema.user_profile(embedding_dim, with_user_id=False) + [schema.history(embedding_dim, None)]
        return cls(user, [schema.item_id(embedding_dim)], **params)

    def interests(self, batch: Batch) -> torch.Tensor:
        return self.interests_and_active(batch)[0]

    def interests_and_active(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = batch[self.hist.name]
        mask = ids > 0
        active = None
        if self.dynamic_interests:
            n = mask.sum(1).clamp(min=1).float()
            k_u = torch.floor(torch.log2(n)).clamp(1, self.routing.K)  # (B,)
            active = torch.arange(self.routing.K, device=ids.device).unsqueeze(0) < k_u.unsqueeze(1)
        table = self.bank.tables[self.hist.table].weight
        caps = self.routing(None, mask, ids, table, active)  # (B, K, d); embeddings looked up as needed
        return self._h_layer(caps, batch), active

    def _h_layer(self, caps: torch.Tensor, batch: Batch) -> torch.Tensor:
        if not self.profile:
            return self.mlp(caps)
        # MLP([capsule; profile]) with the first layer split, W_c·capsule + W_p·profile, so the
        # profile half runs once per user instead of once per interest (same function, less work).
        first = self.mlp.net[0]
        d = caps.size(-1)
        prof = F.linear(self.bank.concat(batch, self.profile), first.weight[:, d:])  # (B, H)
        h = F.linear(caps, first.weight[:, :d], first.bias) + prof.unsqueeze(1)
        return self.mlp.net[1:](h)  # (B, K, d)
