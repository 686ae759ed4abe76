"""Negative samplers. Item indices are 1..N-1; 0 is padding and is never sampled.

Every sampler returns negatives that never equal the row's positive: collisions are resampled
(per-row sampling) or reported in a mask (batch-shared sampling, hard negatives).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .settings import NEGATIVES  # noqa: F401  (re-exported)


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
    """Negatives the current model ranks high, as in Facebook's embedding-based retrieval (Huang et al.,
    2020, §4.2): for each row, a candidate pool is scored with the row's query — ``pool_size`` distinct
    items drawn without replacement, or the whole catalogue when that is not larger — the row's
    positive and (given ``positives``) every training positive of the row's user are dropped, and ``n``
    distinct negatives are drawn uniformly from the ranks ``window`` = [lo, hi) of what is left (rank 0
    = the highest score). ``window=None`` takes the top ``n``. EBR found ranks 101–500 better than the
    very top, which holds many positives nobody labelled. With a pool smaller than the catalogue the
    window is scaled by pool / catalogue, so it stands for the same catalogue ranks.

    ``positives``: each user's training items as CSR ``(indptr (U+1,), items)`` (:func:`user_positives`);
    dropping them costs one scatter per (row, positive), not a lookup per (row, pool item). Row-level
    draws use ``row_generator`` (each rank its own under DDP; the pool draw uses ``generator``, the same
    on every rank).
    """

    def __init__(
        self,
        n_items: int,
        pool_size: int = 2048,
        generator: torch.Generator | None = None,
        window: tuple[int, int] | None = None,
        positives: tuple[torch.Tensor, torch.Tensor] | None = None,
        row_generator: torch.Generator | None = None,
    ):
        if window is not None and not 0 <= window[0] < window[1]:
            raise ValueError(f"the hard-negative rank window must be [lo, hi) with 0 <= lo < hi, got {list(window)}")
        self.n_items, self.pool_size, self.window = n_items, pool_size, window
        self.generator, self.row_generator = generator, row_generator
        self.positives = positives

    def _pool(self) -> torch.Tensor:
        if self.pool_size >= self.n_items - 1:
            return torch.arange(1, self.n_items)
        return torch.randperm(self.n_items - 1, generator=self.generator)[: self.pool_size] + 1

    @torch.no_grad()
    def sample(
        self,
        targets: torch.Tensor,
        n: int,
        score_fn: Callable[[torch.Tensor], torch.Tensor],
        users: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``score_fn(pool (P,))`` → (M, P) scores of each row's query; ``users`` (M,): each row's user
        index, to drop the user's training positives. → ``(negatives (M, n), valid (M, n))``: a row with
        fewer than ``n`` eligible items in the window gets invalid (masked) slots, never a duplicate."""
        dev = targets.device
        pool = self._pool().to(dev)
        P = pool.numel()
        lo, hi = (0, n) if self.window is None else self.window
        if self.window is not None and P < self.n_items - 1:
            scale = P / (self.n_items - 1)
            lo, hi = int(lo * scale), max(int(lo * scale) + n, round(hi * scale))
        hi = min(hi, P)
        if n > hi - lo:
            raise ValueError(f"cannot draw {n} hard negatives from ranks [{lo}, {hi}) of a pool of {P} items")
        s = score_fn(pool).float()
        drop = pool.unsqueeze(0) == targets.view(-1, 1)
        if self.positives is not None and users is not None:
            indptr, items = self.positives
            col = torch.full((self.n_items,), -1, dtype=torch.long, device=dev)
            col[pool] = torch.arange(P, device=dev)  # item → its pool column
            starts, lengths = indptr[users], indptr[users + 1] - indptr[users]
            row = torch.repeat_interleave(torch.arange(users.numel(), device=dev), lengths)
            offset = torch.arange(int(lengths.sum()), device=dev) - (torch.cumsum(lengths, 0) - lengths)[row]
            c = col[items[starts[row] + offset]]
            drop[row[c >= 0], c[c >= 0]] = True
        s = s.masked_fill(drop, float("-inf"))
        top_s, top = torch.topk(s, hi, dim=1)
        top_s, top = top_s[:, lo:], top[:, lo:]
        if hi - lo > n:  # n distinct ranks of the window, uniformly: the n largest of random keys
            keys = torch.rand(top.shape, generator=self.row_generator, device="cpu").to(dev)
            pick = torch.topk(keys.masked_fill(top_s == float("-inf"), -1.0), n, dim=1).indices
            top_s, top = top_s.gather(1, pick), top.gather(1, pick)
        return pool[top], top_s > float("-inf")


def user_positives(users: torch.Tensor, items: torch.Tensor, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's distinct items as CSR ``(indptr (n_users + 1,), items)``: the (user, item) pairs a
    hard sampler never returns."""
    n_items = int(items.max()) + 1 if items.numel() else 1
    keys = torch.unique(users.long() * n_items + items.long())
    indptr = torch.zeros(n_users + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(keys // n_items, minlength=n_users), 0)
    return indptr, keys % n_items


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
