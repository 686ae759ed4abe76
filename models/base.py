"""The one interface every recall model implements.

A model has a user tower (batch of user features → ``(B, d)`` or ``(B, K, d)`` for multi-interest
models) and an item tower (item features → ``(N, d)``). The score of a user and an item is their
inner product, maxed over interests. The trainer, evaluator and exporter only use this interface.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .features import EmbeddingBank, Feature, SequenceFeature, feature_from_dict, feature_to_dict

Batch = dict[str, torch.Tensor]


def score(user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Inner-product scores. user: (B, d) or (B, K, d); items: (N, d) → (B, N), max over K."""
    if user.dim() == 3:
        return torch.einsum("bkd,nd->bkn", user, items).amax(1)
    return user @ items.T


def score_pairs(user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Row-wise scores. user: (M, d) or (M, K, d); items: (M, d) or (M, n, d) → (M,) or (M, n)."""
    if items.dim() == 2:
        items = items.unsqueeze(1)
        squeeze = True
    else:
        squeeze = False
    if user.dim() == 2 and squeeze:
        return (user * items.squeeze(1)).sum(-1)  # elementwise: much cheaper than a batched matmul
    if user.dim() == 2:
        s = torch.einsum("md,mnd->mn", user, items)
    else:
        s = torch.einsum("mkd,mnd->mkn", user, items).amax(1)
    return s.squeeze(1) if squeeze else s


class RecallModel(nn.Module):
    """Base class: holds the feature specs, the embedding bank and the constructor config.

    Subclasses implement ``user_tower`` and ``item_tower``. Sequence models that predict every
    position of a sequence in one pass set ``causal = True`` and implement ``train_queries``.
    """

    name: ClassVar[str] = "base"
    causal: ClassVar[bool] = False
    multi_interest: ClassVar[bool] = False

    def __init__(self, user_features: list[Feature], item_features: list[Feature], temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.user_features = list(user_features)
        self.item_features = list(item_features)
        self.temperature = temperature
        self.bank = EmbeddingBank(self.user_features + self.item_features)
        self._config: dict[str, Any] = {}

    # --- the interface -------------------------------------------------------------------------
    @property
    def train_context(self) -> int:
        """History-only slots at the start of each causal training window (see models.data)."""
        return 0

    def user_tower(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def item_tower(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def score(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return score(user, items)

    def train_queries(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query vectors and target item ids for every predicted target in the batch.

        Returns ``(queries (M, d) or (M, K, d), targets (M,))``. The default is one target per row
        (``batch["target"]``); causal sequence models return one query per non-padding position.
        """
        return self.user_tower(batch), batch["target"]

    # --- helpers ------------------------------------------------------------------------------
    @property
    def user_feature_names(self) -> list[str]:
        return [f.name for f in self.user_features]

    @property
    def item_feature_names(self) -> list[str]:
        return [f.name for f in self.item_features]

    def sequence_feature(self) -> SequenceFeature:
        seqs = [f for f in self.user_features if isinstance(f, SequenceFeature)]
        if not seqs:
            raise ValueError(f"{self.name} needs a SequenceFeature among its user features")
        return seqs[0]

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model: its registry name and constructor arguments."""
        cfg = dict(self._config)
        cfg["user_features"] = [feature_to_dict(f) for f in self.user_features]
        cfg["item_features"] = [feature_to_dict(f) for f in self.item_features]
        cfg["temperature"] = self.temperature
        return {"model": self.name, "params": cfg}

    def _remember(self, **kwargs: Any) -> None:
        self._config.update(kwargs)

    @staticmethod
    def features_from_config(params: dict[str, Any]) -> dict[str, Any]:
        params = dict(params)
        params["user_features"] = [feature_from_dict(d) for d in params["user_features"]]
        params["item_features"] = [feature_from_dict(d) for d in params["item_features"]]
        return params
