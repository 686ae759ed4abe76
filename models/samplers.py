"""Negative samplers. Item indices are 1..N-1; 0 is padding and is never sampled.

Every sampler returns negatives that never equal the row's positive: collisions are resampled
(per-row sampling) or reported in a mask (batch-shared sampling).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NEGATIVES = ("uniform", "popularity", "inbatch", "hard")


class Sampler:
    """Draws negatives from a fixed distribution ``probs`` over item indices (probs[0] = 0)."""

    def __init__(self, probs: torch.Tensor, generator: torch.Generator | None = None):
        probs = probs.double().clone()
        probs[0] = 0.0
        if probs.sum() <= 0:
            raise ValueError("sampler needs at least one item with positive probability")
        self.probs = (probs / probs.sum()).float()
        self.log_q = torch.log(self.probs.clamp(min=1e-12))
        self.generator = generator

    def _draw(self, n: int) -> torch.Tensor:
        return torch.multinomial(self.probs, n, replacement=True, generator=self.generator)

    def sample(self, targets: torch.Tensor, n: int, max_tries: int = 100) -> torch.Tensor:
        """Per-row negatives: (M, n), resampling any that equal the row's positive."""
        M = targets.numel()
        neg = self._draw(M * n).view(M, n)
        for _ in range(max_tries):
            bad = neg == targets.view(-1, 1)
            if not bad.any():
                return neg
            neg[bad] = self._draw(int(bad.sum()))
        raise RuntimeError("could not draw negatives different from the positives; is the catalogue one item?")

    def sample_shared(self, targets: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n negatives shared by the whole batch plus an (M, n) mask that drops collisions."""
        neg = self._draw(n)
        return neg, neg.unsqueeze(0) != targets.view(-1, 1)


class UniformSampler(Sampler):
    def __init__(self, n_items: int, generator: torch.Generator | None = None):
        super().__init__(torch.ones(n_items), generator)


class PopularitySampler(Sampler):
    """q(i) ∝ count(i)^alpha (word2vec's 0.75 by default); items never seen get count 0."""

    def __init__(self, counts: torch.Tensor, alpha: float = 0.75, generator: torch.Generator | None = None):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        c = counts.double()
        super().__init__(torch.where(c > 0, c.pow(alpha), torch.zeros_like(c)), generator)
        self.alpha = alpha


class HardNegativeSampler:
    """Mines the highest-scoring non-positive items of the current model.

    For each row, scores a random candidate pool (the whole catalogue when ``pool_size`` ≥ N) with
    the row's query and keeps the top ``n`` that are not the positive.
    """

    def __init__(self, n_items: int, pool_size: int = 2048, generator: torch.Generator | None = None):
        self.n_items = n_items
        self.pool_size = pool_size
        self.generator = generator

    @torch.no_grad()
    def sample(
        self,
        targets: torch.Tensor,
        n: int,
        score_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """score_fn(candidate item indices (P,)) → (M, P) scores of each row's query."""
        if self.pool_size >= self.n_items - 1:
            pool = torch.arange(1, self.n_items)
        else:
            pool = torch.randint(1, self.n_items, (self.pool_size,), generator=self.generator)
        if n > pool.numel() - 1:
            raise ValueError(f"cannot mine {n} hard negatives from a pool of {pool.numel()} items")
        s = score_fn(pool.to(targets.device)).float()
        s = s.masked_fill(pool.to(targets.device).unsqueeze(0) == targets.view(-1, 1), float("-inf"))
        top = torch.topk(s, n, dim=1).indices
        return pool.to(targets.device)[top]
