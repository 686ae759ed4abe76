"""SINE (Tan et al., 2021, "Sparse-Interest Network for Sequential Recommendation").

A pool of ``n_concepts`` latent concepts C. For a history X (with position embeddings P in the
attention inputs):

1. **Sparse interest activation**: a = softmax_t(w2ᵀ tanh(W1 (x_t + p_t))), z = Σ_t a_t x_t; the user's
   K concepts are the top-K of ⟨z, C⟩, gated: C^u = C[top] ⊙ σ(⟨z, C[top]⟩).
2. **Intention assignment**: P(k | t) = softmax_k(cos(LN(W3 x_t), C^u_k) / τ_a).
3. **Attention weighting**: P(t | k) = softmax_t(W5,k ᵀ tanh(W4 (x_t + p_t))).
4. **Interest embeddings**: φ_k = LN(Σ_t P(k | t) P(t | k) x_t).
5. **Interest aggregation**: the intention sequence X̂_t = Σ_k P(k | t) C^u_k is pooled by attention
   into the current intention C_apt = LN(Σ_t softmax_t(w7ᵀ tanh(W6 (x̂_t + p_t))) x̂_t); the user vector
   is v = Σ_k softmax_k(⟨φ_k, C_apt⟩ / τ) φ_k.

The user vector v (one per user, B × d) is what trains against the target and what is served, as in
the paper (not a max over the K interests). The loss adds λ · L_c, the concept covariance regulariser
L_c = ½ (‖M‖²_F − ‖diag M‖²) with M = C̃ C̃ᵀ / d and C̃ = C minus each concept's mean
(:meth:`aux_loss`), which pushes the concepts apart.

Deviation: the gate σ(·) of step 1 reaches the user vector through step 5 only (as in the official
code; step 2's cosine does not see a scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Batch, SequenceRecallModel
from .features import Feature
from .layers import additive_attention


class _AttentionPool(nn.Module):
    """softmax_t(wᵀ tanh(W h_t)) over the valid slots, (B, L, d) → (B, L, heads)."""

    def __init__(self, dim: int, hidden: int, heads: int = 1):
        super().__init__()
        self.w = nn.Linear(dim, hidden)
        self.v = nn.Linear(hidden, heads, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return additive_attention(self.w, self.v, h, mask)


class SINE(SequenceRecallModel):
    name = "sine"
    causal = False

    def __init__(
        self,
        user_features: list[Feature],
        item_features: list[Feature],
        n_interest: int = 4,
        n_concepts: int = 64,
        hidden_size: int = 128,
        max_len: int = 256,
        assign_temperature: float = 0.1,
        aggregate_temperature: float = 0.1,
        covariance_weight: float = 0.1,
        temperature: float = 1.0,
    ):
        super().__init__(user_features, item_features, temperature)
        if n_interest > n_concepts:
            raise ValueError(f"n_interest {n_interest} must be ≤ n_concepts {n_concepts}")
        d = self.dim
        self.concepts = nn.Parameter(torch.randn(n_concepts, d) * d**-0.5)  # (C, d)
        self.pos = nn.Embedding(max_len, d)
        self.summary = _AttentionPool(d, hidden_size)  # 1: the user's overall intention z
        self.w3 = nn.Linear(d, d, bias=False)  # 2: items in concept space
        self.norm_assign = nn.LayerNorm(d)
        self.per_interest = _AttentionPool(d, hidden_size, n_interest)  # 3: P(t | k)
        self.norm_interest = nn.LayerNorm(d)
        self.intention = _AttentionPool(d, hidden_size)  # 5: the current intention C_apt
        self.norm_intention = nn.LayerNorm(d)
        self.K, self.max_len = n_interest, max_len
        self.assign_temperature, self.aggregate_temperature = assign_temperature, aggregate_temperature
        self.covariance_weight = covariance_weight
        self._remember(n_interest=n_interest, n_concepts=n_concepts, hidden_size=hidden_size, max_len=max_len,
                       assign_temperature=assign_temperature, aggregate_temperature=aggregate_temperature,
                       covariance_weight=covariance_weight)  # fmt: skip

    def _positions(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = x.size(1)
        if L > self.max_len:
            raise ValueError(f"history length {L} exceeds max_len {self.max_len}")
        recency = (L - 1) - torch.arange(L, device=x.device)  # 0 = newest (histories are left-padded)
        return self.pos(recency) * mask.unsqueeze(-1)

    def interests_and_intention(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The K interest embeddings φ (B, K, d) and the current intention C_apt (B, d)."""
        x, mask = self.history(batch)
        pos = self._positions(x, mask)
        xp = x + pos
        z = torch.einsum("blo,bld->bd", self.summary(xp, mask), x)
        s = z @ self.concepts.T  # (B, C)
        top = s.topk(self.K, dim=1)
        cu = self.concepts[top.indices] * torch.sigmoid(top.values).unsqueeze(-1)  # gated concepts, (B, K, d)
        cos = torch.einsum("bld,bkd->blk", F.normalize(self.norm_assign(self.w3(x)), dim=-1), F.normalize(cu, dim=-1))
        p_k_t = torch.softmax(cos / self.assign_temperature, dim=-1) * mask.unsqueeze(-1)  # (B, L, K)
        p_t_k = self.per_interest(xp, mask)  # (B, L, K), softmax over t
        phi = self.norm_interest(torch.einsum("blk,bld->bkd", p_k_t * p_t_k, x))  # (B, K, d)
        x_hat = p_k_t @ cu  # (B, L, d): each slot's intention
        a = self.intention(x_hat + pos, mask)  # (B, L, 1)
        c_apt = self.norm_intention(torch.einsum("blo,bld->bd", a, x_hat))
        return phi, c_apt

    def user_tower(self, batch: Batch) -> torch.Tensor:
        phi, c_apt = self.interests_and_intention(batch)
        e = torch.softmax(torch.einsum("bkd,bd->bk", phi, c_apt) / self.aggregate_temperature, dim=1)
        return torch.einsum("bk,bkd->bd", e, phi)  # (B, d)

    def train_queries(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_tower(batch), batch["target"]  # one target per example, like the point models

    def aux_loss(self) -> torch.Tensor:
        """λ · L_c, the covariance regulariser on the concept pool (added to the training loss)."""
        c = self.concepts - self.concepts.mean(1, keepdim=True)
        m = c @ c.T / c.size(1)
        return self.covariance_weight * 0.5 * (m.pow(2).sum() - torch.diagonal(m).pow(2).sum())
