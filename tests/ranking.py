"""Comparing two top-K lists "same items, same order up to ties"."""

import numpy as np


def assert_same_topk(rows_a, scores_a, rows_b, scores_b, tol: float = 1e-5) -> None:
    """Scores agree rank by rank; where the items differ, the score at that rank is tied (within ``tol``)
    with another rank, or with the list's last score (a tie that the cut at K breaks either way)."""
    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    assert rows_a.shape == rows_b.shape, (rows_a.shape, rows_b.shape)
    assert np.allclose(scores_a, scores_b, atol=tol), np.abs(scores_a - scores_b).max()
    for u in range(rows_a.shape[0]):
        for j in np.nonzero(rows_a[u] != rows_b[u])[0]:
            tied = np.abs(scores_a[u] - scores_a[u, j]) <= tol
            assert tied.sum() > 1 or j == rows_a.shape[1] - 1, f"user {u} rank {j}: {rows_a[u, j]} vs {rows_b[u, j]}"
        only = set(rows_a[u]) ^ set(rows_b[u])  # items in one list only: must tie with the last score
        last = min(scores_a[u, -1], scores_b[u, -1])
        for i in only:
            s = scores_a[u][rows_a[u] == i] if i in rows_a[u] else scores_b[u][rows_b[u] == i]
            assert abs(s[0] - last) <= tol, f"user {u}: item {i} is in one list only at score {s[0]} (last {last})"
