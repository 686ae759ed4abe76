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

    def draw_shared(self, n: int) -> torch.Tensor:
        """n negatives shared by the whole batch; the caller handles collisions with the positives."""
        return self._draw(n)

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


class StreamingFrequencyEstimator:
    """Streaming estimate of each item's sampling probability (Yi et al., 2019, "Sampling-bias-
    corrected neural modeling"), for log-Q correction of in-batch negatives on an unbounded stream.

    For every item seen at global step t: ``B[h] ← (1-α)·B[h] + α·(t - A[h])`` and ``A[h] ← t``, where
    h hashes the item into ``n_buckets`` and B is the average number of steps between occurrences.
    The per-step probability of appearing in a batch is then 1 / B. No table of item counts is
    needed, and the estimate follows drifting popularity.
    """

    def __init__(self, n_buckets: int = 1 << 20, alpha: float = 0.01, device: torch.device | str = "cpu"):
        self.n_buckets, self.alpha = n_buckets, alpha
        self.last = torch.zeros(n_buckets, dtype=torch.float64, device=device)  # A: last step seen
        self.gap = torch.zeros(n_buckets, dtype=torch.float64, device=device)  # B: average gap
        self.step = 0

    def _bucket(self, items: torch.Tensor) -> torch.Tensor:
        return (items * 2654435761) % self.n_buckets  # Knuth multiplicative hash

    @torch.no_grad()
    def update(self, items: torch.Tensor) -> None:
        """Observe one batch of (positive) item ids."""
        self.step += 1
        h = torch.unique(self._bucket(items.to(self.last.device)))
        seen = self.last[h] > 0
        gap = torch.where(seen, self.step - self.last[h], torch.full_like(self.last[h], float(self.step)))
        first = self.gap[h] == 0
        self.gap[h] = torch.where(first, gap, (1 - self.alpha) * self.gap[h] + self.alpha * gap)
        self.last[h] = float(self.step)

    def state(self) -> dict:
        return {"last": self.last.clone(), "gap": self.gap.clone(), "step": self.step}

    def load_state(self, state: dict) -> None:
        self.last.copy_(state["last"])
        self.gap.copy_(state["gap"])
        self.step = int(state["step"])

    def probability(self, items: torch.Tensor) -> torch.Tensor:
        """Estimated probability that each item appears in a batch (1 / average gap)."""
        g = self.gap[self._bucket(items.to(self.gap.device))]
        return torch.where(g > 0, 1.0 / g.clamp(min=1.0), torch.full_like(g, 1.0 / max(self.step, 1))).float()

    def log_q(self, items: torch.Tensor) -> torch.Tensor:
        return torch.log(self.probability(items).clamp(min=1e-12))
