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

    def aux_loss(self) -> torch.Tensor | None:
        """A model's own term added to the training loss (e.g. SINE's concept regulariser), or None."""
        return None

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

    @property
    def user_inputs(self) -> list[str]:
        """Batch keys the user tower reads, in a fixed order (the exported tower's input names)."""
        return self.user_feature_names

    @property
    def item_inputs(self) -> list[str]:
        """Batch keys the item tower reads, in a fixed order."""
        return self.item_feature_names

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


class SequenceRecallModel(RecallModel):
    """Models whose user side is the behaviour sequence and whose item tower is the item-id embedding
    the sequence shares (SASRec, GRU4Rec, NARM, STAMP and the multi-interest models).

    Causal subclasses implement ``encode``: one query per history slot, (B, L, d), where slot t sees
    only slots ≤ t; serving takes the newest slot and training uses every slot that has a target.
    """

    causal: ClassVar[bool] = True

    def __init__(self, user_features: list[Feature], item_features: list[Feature], temperature: float = 1.0):
        super().__init__(user_features, item_features, temperature)
        self.hist = self.sequence_feature()
        self.dim = self.bank.table_for(self.hist.name).embedding_dim

    @classmethod
    def from_schema(cls, schema: Any, embedding_dim: int = 64, **params: Any) -> RecallModel:
        user = [schema.history(embedding_dim, None)]
        return cls(user, [schema.item_id(embedding_dim)], **params)

    def history(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Item embeddings of the history and its padding mask: (B, L, d), (B, L)."""
        ids = batch[self.hist.name]
        return self.bank.tables[self.hist.table](ids), ids > 0

    def encode(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def user_tower(self, batch: Batch) -> torch.Tensor:
        return self.encode(batch)[:, -1]  # the newest slot, (B, d)

    def item_tower(self, batch: Batch) -> torch.Tensor:
        return self.bank.embed("item_id", batch["item_id"])  # (N, d)

    def train_queries(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode(batch)
        tgt = batch["target_seq"]
        keep = tgt > 0
        return h[keep], tgt[keep]  # (M, d), (M,)


class MultiInterestModel(SequenceRecallModel):
    """K interest vectors per user from the whole history (not causal: one target per example).

    Training picks, for each target, the interest that matches it (label-aware, ``label_power``:
    None = argmax, a number = softmax attention); serving returns all K and scores take the max.
    """

    causal: ClassVar[bool] = False
    multi_interest: ClassVar[bool] = True
    label_power: float | None = None

    def interests(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def interests_and_active(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K, d) interests and which of them each user has ((B, K) bool; None: all K)."""
        return self.interests(batch), None

    def user_tower(self, batch: Batch) -> torch.Tensor:
        v, active = self.interests_and_active(batch)
        if active is None:
            return v  # (B, K, d)
        # A user with fewer interests serves copies of the first in the other slots: the max over
        # interests is then over that user's own interests, whatever the scores' sign.
        return torch.where(active.unsqueeze(-1), v, v[:, :1])

    def train_queries(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        from .layers import label_aware

        target = batch["target"]
        v, active = self.interests_and_active(batch)
        return label_aware(v, self.bank.embed("item_id", target), self.label_power, active), target
