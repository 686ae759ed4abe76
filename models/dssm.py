"""DSSM (Huang et al., 2013): two MLP towers over user and item features, cosine similarity / τ."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Batch, RecallModel
from .features import Feature
from .layers import MLP
from .schema import Schema

DEFAULT_TOWER = {"dims": [128, 64], "dropout": 0.0, "activation": "relu"}


class DSSM(RecallModel):
    name = "dssm"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        temperature: float = 0.05,
        user_params: dict[str, Any] | None = None,
        item_params: dict[str, Any] | None = None,
        normalize: bool = True,
    ):
        super().__init__(user_features, item_features, temperature)
        user_params = {**DEFAULT_TOWER, **(user_params or {})}
        item_params = {**DEFAULT_TOWER, **(item_params or {})}
        self.user_mlp = MLP(self.bank.output_dim(self.user_feature_names), **user_params)
        self.item_mlp = MLP(self.bank.output_dim(self.item_feature_names), **item_params)
        if self.user_mlp.output_dim != self.item_mlp.output_dim:
            raise ValueError(
                f"user tower ends in {self.user_mlp.output_dim} dims but item tower in {self.item_mlp.output_dim}; "
                "the last entries of user_params['dims'] and item_params['dims'] must match"
            )
        self.normalize = normalize
        self._remember(user_params=user_params, item_params=item_params, normalize=normalize)

    @classmethod
    def from_schema(
        cls, schema: Schema, embed_dim: int = 64, user_id: bool = True, context: bool = False, **params: Any
    ) -> DSSM:
        # user_id=False leaves only profile + history, for users unseen in training (cold start);
        # context=True adds the moment's context (hour, weekday, weekend, month) to the user tower.
        user = schema.user_profile(embed_dim, with_user_id=user_id)
        user += (schema.context_features(embed_dim) if context else []) + [schema.history(embed_dim, "mean")]
        item = [schema.item_id(embed_dim)] + schema.item_side(embed_dim)
        return cls(user, item, **params)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def user_tower(self, batch: Batch) -> torch.Tensor:
        return self._out(self.user_mlp(self.bank.concat(batch, self.user_feature_names)))  # (B, d)

    def item_tower(self, batch: Batch) -> torch.Tensor:
        return self._out(self.item_mlp(self.bank.concat(batch, self.item_feature_names)))  # (N, d)
