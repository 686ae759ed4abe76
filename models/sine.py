"""SINE (Tan et al., 2021): a large pool of latent concepts; each user activates only the top-K
concepts that match their history (sparse interest activation), every history item is softly
assigned to the active concepts (intention assignment), and each active concept's interest is an
attention-weighted sum of the items assigned to it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Batch, MultiInterestModel
from .features import Feature
from .layers import masked_softmax


class SINE(MultiInterestModel):
    name = "sine"

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        n_interest: int = 4,
        n_concepts: int = 64,
        hidden_size: int = 128,
        temperature: float = 1.0,
    ):
        super().__init__(user_features, item_features, temperature)
        if n_interest > n_concepts:
            raise ValueError(f"n_interest {n_interest} must be ≤ n_concepts {n_concepts}")
        d = self.dim
        self.concepts = nn.Parameter(torch.randn(n_concepts, d) * d**-0.5)  # (C, d)
        self.w1 = nn.Linear(d, hidden_size, bias=False)  # self-attention that summarises the user
        self.w2 = nn.Linear(hidden_size, 1, bias=False)
        self.w3 = nn.Linear(d, hidden_size, bias=False)  # per-concept item weighting
        self.w4 = nn.Linear(hidden_size, n_interest, bias=False)
        self.assign = nn.Linear(d, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.K = n_interest
        self._remember(n_interest=n_interest, n_concepts=n_concepts, hidden_size=hidden_size)

    def activate(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse concept activation: indices (B, K) of the user's top concepts and gates (B, K)."""
        a = masked_softmax(self.w2(torch.tanh(self.w1(x))).squeeze(-1), mask)  # (B, L)
        z = torch.einsum("bl,bld->bd", a, x)  # the user's overall intention
        s = z @ self.concepts.T  # (B, C)
        top = s.topk(self.K, dim=1)
        return top.indices, torch.sigmoid(top.values)

    def interests(self, batch: Batch) -> torch.Tensor:
        x, mask = self.history(batch)
        idx, gate = self.activate(x, mask)
        c = self.concepts[idx] * gate.unsqueeze(-1)  # active concepts, (B, K, d)
        # Intention assignment: P(k | item t) by cosine between the item and each active concept.
        p_assign = torch.softmax(
            torch.einsum("bld,bkd->blk", F.normalize(self.norm(self.assign(x)), dim=-1), F.normalize(c, dim=-1)) * 10.0,
            dim=-1,
        )  # (B, L, K)
        w = masked_softmax(self.w4(torch.tanh(self.w3(x))).transpose(1, 2), mask.unsqueeze(1).expand(-1, self.K, -1))
        weight = w * p_assign.transpose(1, 2) * mask.unsqueeze(1)  # (B, K, L)
        weight = weight / weight.sum(2, keepdim=True).clamp(min=1e-9)
        return (weight @ x) * gate.unsqueeze(-1)  # (B, K, d); weakly activated concepts score lower
