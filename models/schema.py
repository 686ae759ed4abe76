"""What a dataset offers the models: vocabulary sizes of the user/item features and the history length.

Every model builds its default feature specs from a ``Schema`` in ``from_schema``, so the registry,
the trainer and the tests can construct any model for any dataset without per-model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .features import Feature, SequenceFeature, SparseFeature

# Features of the prediction's moment rather than of the user (see feature_repo/context.py): a batch
# has each for its prediction (B,) and, in causal training, for every target slot as ``<name>_seq``.
CONTEXT_FEATURES = ("hour_of_day", "day_of_week", "is_weekend", "month")


@dataclass(frozen=True)
class Schema:
    n_users: int  # including padding row 0
    n_items: int  # including padding row 0
    user_sparse: dict[str, int] = field(default_factory=dict)  # profile features → vocab size
    item_sparse: dict[str, int] = field(default_factory=dict)
    item_multi: dict[str, int] = field(default_factory=dict)  # multi-valued item features (e.g. genres)
    max_len: int = 50
    context: dict[str, int] = field(default_factory=dict)  # context of the prediction's moment → vocab size

    def item_id(self, dim: int) -> SparseFeature:
        return SparseFeature("item_id", self.n_items, dim)

    def history(self, dim: int, pooling: str | None) -> SequenceFeature:
        return SequenceFeature("hist_item_ids", self.n_items, dim, pooling=pooling, shared_with="item_id")

    def user_profile(self, dim: int, with_user_id: bool = True) -> list[Feature]:
        feats: list[Feature] = [SparseFeature("user_id", self.n_users, dim)] if with_user_id else []
        feats += [SparseFeature(n, v, max(4, dim // 4)) for n, v in self.user_sparse.items()]
        return feats

    def context_features(self, dim: int) -> list[Feature]:
        """The moment's context (hour, weekday, …) as small embeddings: a user-tower option."""
        if not self.context:
            raise ValueError("this dataset's schema has no context features (encode the events with their times)")
        return [SparseFeature(n, v, max(4, dim // 4)) for n, v in self.context.items()]

    def item_side(self, dim: int) -> list[Feature]:
        feats: list[Feature] = [SparseFeature(n, v, max(4, dim // 4)) for n, v in self.item_sparse.items()]
        feats += [SequenceFeature(n, v, max(4, dim // 4), pooling="mean") for n, v in self.item_multi.items()]
        return feats
