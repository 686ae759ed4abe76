"""Exact full-corpus evaluation: Recall, Precision, NDCG, Hit and MRR at K.

Every item in the catalogue (index 1..N-1; 0 is padding) is scored; nothing is sampled. Ranks are
pessimistic: an item that ties with the target counts as ranked above it, and NaN scores are
treated as -inf, so a collapsed (constant) or diverged (NaN) model ranks every target last and can
never look good. Scoring is chunked over users and items, so the full (users × items) score matrix
is never materialised.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from .base import score, score_pairs

DEFAULT_KS = (10, 20, 50, 100)
METRICS = ("recall", "precision", "ndcg", "hit", "mrr")
# The rank of a target that no cut-off reaches: a padded target slot (and, in components.compare, a
# target outside the fetched top K). Not N: with K > N, rank N would count as a hit.
NOT_RANKED = 2**31 - 1


def _exclusion_mask(indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Boolean (len(rows), hi-lo) mask of excluded items for a chunk of rows and items."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    mask = torch.zeros(len(rows), hi - lo, dtype=torch.bool)
    if int(lengths.sum()) == 0:
        return mask
    row_ids = torch.repeat_interleave(torch.arange(len(rows)), lengths)
    offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    cols = indices[torch.repeat_interleave(starts, lengths) + offsets]
    keep = (cols >= lo) & (cols < hi)
    mask[row_ids[keep], cols[keep] - lo] = True
    return mask


@torch.no_grad()
def target_ranks(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    targets: torch.Tensor,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    row_chunk: int = 1024,
    item_chunk: int = 16384,
) -> torch.Tensor:
    """0-based pessimistic rank of every target among all non-excluded catalogue items.

    Args:
        user_emb: (R, d) or (R, K, d) user vectors, one row per evaluated user.
        item_emb: (N, d) item vectors; row 0 is padding and never ranked.
        targets: (R,) or (R, T) target item indices; -1 pads rows with fewer targets.
        exclude: optional CSR ``(indptr (R+1,), indices)`` of items to drop from each row's ranking
            (e.g. already-seen items). A row's own targets are never excluded.
        row_chunk, item_chunk: chunk sizes that bound memory to row_chunk × item_chunk scores.

    Returns:
        (R, T) int64 ranks; padded targets get :data:`NOT_RANKED` (never a hit, whatever K). Rank r means r items are
        scored at least as high as the target.
    """
    if targets.dim() == 1:
        targets = targets.unsqueeze(1)
    user_emb, item_emb = user_emb.float().cpu(), item_emb.float().cpu()
    R, T = targets.shape
    N = item_emb.size(0)
    valid = targets > 0
    safe_t = targets.clamp(min=0)
    ranks = torch.zeros(R, T, dtype=torch.int64)
    for r0 in range(0, R, row_chunk):
        rows = torch.arange(r0, min(R, r0 + row_chunk))
        u = user_emb[rows]
        t = safe_t[rows]
        t_scores = torch.nan_to_num(score_pairs(u, item_emb[t]), nan=float("-inf"))  # (b, T)
        count = torch.zeros(len(rows), T, dtype=torch.int64)
        for lo in range(1, N, item_chunk):
            hi = min(N, lo + item_chunk)
            s = torch.nan_to_num(score(u, item_emb[lo:hi]), nan=float("-inf"))  # (b, c)
            ge = s.unsqueeze(1) >= t_scores.unsqueeze(2)  # (b, T, c)
            in_chunk = (t >= lo) & (t < hi)
            r_idx, t_idx = in_chunk.nonzero(as_tuple=True)
            if exclude is not None:
                excl = _exclusion_mask(exclude[0], exclude[1], rows, lo, hi)
                excl[r_idx, t[r_idx, t_idx] - lo] = False  # a row's targets are never excluded
                ge &= ~excl.unsqueeze(1)
            ge[r_idx, t_idx, t[r_idx, t_idx] - lo] = False  # a target does not rank against itself
            count += ge.sum(2)
        ranks[rows] = count
    return torch.where(valid, ranks, torch.full_like(ranks, NOT_RANKED))


def row_metrics(
    ranks: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS, n_targets: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Recall/Precision/NDCG/Hit/MRR@K of each row (float64, shape (R,)) from 0-based target ranks;
    :func:`metrics_from_ranks` averages them. Per-row values are what paired comparisons of two
    rankers on the same rows need (:func:`paired_difference`).

    Args:
        ranks: (R,) or (R, T) ranks from :func:`target_ranks` (padded targets hold :data:`NOT_RANKED`).
        ks: cut-offs.
        n_targets: (R,) number of real targets per row; inferred as T when not given.

    Precision@K divides by K even when K exceeds the catalogue, the usual convention.
    """
    if ranks.dim() == 1:
        ranks = ranks.unsqueeze(1)
    R, T = ranks.shape
    if n_targets is None:
        n_targets = torch.full((R,), T)
    n_targets = n_targets.double()
    out: dict[str, torch.Tensor] = {}
    r = ranks.double()
    best = ranks.min(1).values.double()
    for k in ks:
        hit_mask = ranks < k
        hits = hit_mask.sum(1).double()
        dcg = torch.where(hit_mask, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).sum(1)
        ideal_n = torch.minimum(n_targets, torch.tensor(float(k)))
        idcg = torch.tensor([sum(1.0 / math.log2(i + 2) for i in range(int(n))) for n in ideal_n.tolist()])
        out[f"recall@{k}"] = hits / n_targets.clamp(min=1)
        out[f"precision@{k}"] = hits / k
        out[f"ndcg@{k}"] = dcg / idcg.clamp(min=1e-12)
        out[f"hit@{k}"] = (hits > 0).double()
        out[f"mrr@{k}"] = torch.where(best < k, 1.0 / (best + 1.0), torch.zeros_like(best))
    return out


def metrics_from_ranks(
    ranks: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS, n_targets: torch.Tensor | None = None
) -> dict[str, float]:
    """Average Recall/Precision/NDCG/Hit/MRR@K over rows from 0-based target ranks (see :func:`row_metrics`)."""
    return {name: v.mean().item() for name, v in row_metrics(ranks, ks, n_targets).items()}


def paired_difference(a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor | None = None) -> dict[str, float]:
    """Mean of ``a − b`` over the same rows (two rankers' per-row values of one metric) and its standard
    error: ``{"diff", "se", "rows"}``. Pairing removes the spread between users that both rankers share,
    so the error is much smaller than that of two separate means; :func:`interval` turns it into a
    normal two-sided interval. With fewer than two rows (or groups) the error is infinite.

    ``groups``: one label per row (the user) when a user has several rows. Rows of one user are not
    independent, so the error is the cluster-robust one: with residual sums ``s_g = Σ_{i∈g} (d_i − d̄)``
    over the ``G`` groups, ``se² = G / (G − 1) · Σ_g s_g² / n²`` (``"groups": G`` is added). With one row
    per group it is the plain error."""
    d = (torch.as_tensor(a).double() - torch.as_tensor(b).double()).flatten()
    n = d.numel()
    mean = d.mean().item() if n else 0.0
    if groups is None:
        se = d.std(unbiased=True).item() / math.sqrt(n) if n >= 2 else math.inf
        return {"diff": mean, "se": se, "rows": n}
    _, g = torch.unique(torch.as_tensor(groups).flatten(), return_inverse=True)
    G = int(g.max().item()) + 1 if n else 0
    sums = torch.zeros(G, dtype=torch.float64).index_add_(0, g, d - mean)
    se = math.sqrt(G / (G - 1) * float((sums**2).sum()) / n**2) if G >= 2 else math.inf
    return {"diff": mean, "se": se, "rows": n, "groups": G}


def interval(d: dict[str, float], confidence: float) -> tuple[float, float]:
    """The two-sided normal interval of a :func:`paired_difference` at ``confidence`` (0 → the point)."""
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * d["se"] if confidence > 0 else 0.0
    return d["diff"] - half, d["diff"] + half


def evaluate_embeddings(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    targets: torch.Tensor,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, float]:
    """Full-corpus metrics for precomputed user and item vectors (see :func:`target_ranks`)."""
    ranks = target_ranks(user_emb, item_emb, targets, exclude)
    n_targets = (targets > 0).sum(1) if targets.dim() == 2 else None
    return metrics_from_ranks(ranks, ks, n_targets)


@torch.no_grad()
def topk(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    k: int,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    row_chunk: int = 1024,
    item_chunk: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k items per user over the full catalogue, chunked. → (scores (R, k), indices (R, k)).

    Excluded items and padding (index 0) are never returned; NaN scores rank last. When fewer than
    k items are eligible the tail holds index 0 with score -inf.
    """
    user_emb, item_emb = user_emb.float().cpu(), item_emb.float().cpu()
    R, N = user_emb.size(0), item_emb.size(0)
    out_s = torch.full((R, k), float("-inf"))
    out_i = torch.zeros(R, k, dtype=torch.int64)
    for r0 in range(0, R, row_chunk):
        rows = torch.arange(r0, min(R, r0 + row_chunk))
        best_s = torch.full((len(rows), 0), float("-inf"))
        best_i = torch.zeros(len(rows), 0, dtype=torch.int64)
        for lo in range(1, N, item_chunk):
            hi = min(N, lo + item_chunk)
            s = torch.nan_to_num(score(user_emb[rows], item_emb[lo:hi]), nan=float("-inf"))
            if exclude is not None:
                s = s.masked_fill(_exclusion_mask(exclude[0], exclude[1], rows, lo, hi), float("-inf"))
            idx = torch.arange(lo, hi).expand(len(rows), -1)
            cat_s, cat_i = torch.cat([best_s, s], 1), torch.cat([best_i, idx], 1)
            top = torch.topk(cat_s, min(k, cat_s.size(1)), dim=1)
            best_s, best_i = top.values, cat_i.gather(1, top.indices)
        n = best_s.size(1)
        valid = torch.isfinite(best_s) | (best_s > float("-inf"))
        out_s[rows, :n] = best_s
        out_i[rows, :n] = torch.where(valid, best_i, torch.zeros_like(best_i))
    return out_s, out_i
