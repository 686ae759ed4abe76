"""Feature specs and the one embedding bank every model reads its inputs through.

Ids are 1-based; 0 is padding (and "unknown"), so every embedding table has row 0 fixed at zero.
Batches are plain ``dict[str, Tensor]`` keyed by feature name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("mean", "sum", "max", None)


@dataclass(frozen=True)
class SparseFeature:
    """One categorical id per example: ``[B]`` int64 → ``[B, embed_dim]``."""

    name: str
    vocab_size: int
    embed_dim: int
    shared_with: str | None = None

    @property
    def table(self) -> str:
        return self.shared_with or self.name


@dataclass(frozen=True)
class DenseFeature:
    """A float feature: ``[B]`` or ``[B, embed_dim]`` passed through unchanged."""

    name: str
    embed_dim: int = 1


@dataclass(frozen=True)
class SequenceFeature:
    """A variable-length list of ids, left-padded with 0: ``[B, L]`` int64.

    ``pooling`` in ``mean | sum | max`` gives ``[B, embed_dim]``; ``None`` keeps ``[B, L, embed_dim]``
    for sequence encoders. ``shared_with`` names the feature whose table this one reuses
    (e.g. a watch history shares the ``item_id`` table).
    """

    name: str
    vocab_size: int
    embed_dim: int
    pooling: str | None = "mean"
    shared_with: str | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r} for {self.name!r}; choose one of: mean, sum, max, None")

    @property
    def table(self) -> str:
        return self.shared_with or self.name


Feature = SparseFeature | DenseFeature | SequenceFeature
_KINDS = {"sparse": SparseFeature, "dense": DenseFeature, "sequence": SequenceFeature}


def feature_to_dict(f: Feature) -> dict:
    kind = {SparseFeature: "sparse", DenseFeature: "dense", SequenceFeature: "sequence"}[type(f)]
    return {"kind": kind, **asdict(f)}


def feature_from_dict(d: dict) -> Feature:
    d = dict(d)
    kind = d.pop("kind")
    return _KINDS[kind](**d)


def pool_sequence(x: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Masked pooling over the sequence axis. x: (B, L, e), mask: (B, L) bool → (B, e)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    if pooling == "sum":
        return (x * m).sum(1)
    if pooling == "mean":
        return (x * m).sum(1) / m.sum(1).clamp(min=1.0)
    if pooling == "max":
        filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))
    raise ValueError(f"unknown pooling {pooling!r}; choose one of: mean, sum, max")


def pooled_lookup(
    weight: torch.Tensor, ids: torch.Tensor, pooling: str, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Pooled embedding of a left-padded id sequence (B, L) → (B, e); padding id 0 is ignored.

    Uses ``embedding_bag`` (no (B, L, e) intermediate, several times faster to train) except under
    ONNX export, where the equivalent gather + masked pooling is traced instead. ``weights`` (B, L)
    gives a weighted average (e.g. time decay) and requires ``pooling="mean"``.
    """
    if weights is not None:
        if pooling != "mean":
            raise ValueError("per-item weights need pooling='mean'")
        w = weights * (ids > 0).to(weights.dtype)
        w = w / w.sum(1, keepdim=True).clamp(min=1e-6)
        if torch.onnx.is_in_onnx_export():
            return (F.embedding(ids, weight) * w.unsqueeze(-1)).sum(1)
        return F.embedding_bag(ids, weight, mode="sum", per_sample_weights=w.to(weight.dtype))
    if pooling == "max" or torch.onnx.is_in_onnx_export():
        return pool_sequence(F.embedding(ids, weight), ids > 0, pooling)
    return F.embedding_bag(ids, weight, mode=pooling, padding_idx=0)


class EmbeddingBank(nn.Module):
    """One ``nn.Embedding`` per table; features with ``shared_with`` reuse their owner's table."""

    def __init__(self, features: list[Feature]):
        super().__init__()
        self.features = {f.name: f for f in features}
        tables: dict[str, tuple[int, int]] = {}
        for f in features:
            if isinstance(f, DenseFeature):
                continue
            owner = self.features.get(f.table, f)
            vocab, dim = owner.vocab_size, owner.embed_dim
            if f.embed_dim != dim:
                raise ValueError(
                    f"feature {f.name!r} shares table {f.table!r} but has embed_dim {f.embed_dim} != {dim}"
                )
            prev = tables.get(f.table)
            tables[f.table] = (max(vocab, f.vocab_size, prev[0] if prev else 0), dim)
        self.tables = nn.ModuleDict({t: nn.Embedding(v, d, padding_idx=0) for t, (v, d) in tables.items()})
        for emb in self.tables.values():
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[0].zero_()

    def table_for(self, name: str) -> nn.Embedding:
        return self.tables[self.features[name].table]

    def embed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        f = self.features[name]
        if isinstance(f, DenseFeature):
            x = x.float()
            return x.unsqueeze(-1) if x.dim() == 1 else x
        table = self.tables[f.table]
        if isinstance(f, SequenceFeature) and f.pooling is not None:
            return pooled_lookup(table.weight, x, f.pooling)
        return table(x)

    def concat(self, batch: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
        """Embeds and concatenates pooled features: → (B, sum of dims)."""
        return torch.cat([self.embed(n, batch[n]) for n in names], dim=-1)

    def output_dim(self, names: list[str]) -> int:
        return sum(self.features[n].embed_dim for n in names)
