"""The evaluator against hand-worked cases."""

import math

import pytest
import torch

from models.metrics import (
    NOT_RANKED,
    evaluate_embeddings,
    interval,
    metrics_from_ranks,
    paired_difference,
    row_metrics,
    target_ranks,
    topk,
)


def items(scores):
    """Item vectors whose inner product with the user vector [1] is the given score (row 0 = padding)."""
    return torch.tensor([[0.0]] + [[s] for s in scores])


ONE = torch.ones(1, 1)


def test_rank_counts_items_scored_above():
    # scores: item1=0.9 item2=0.5 item3=0.7 item4=0.1; target item3 → one item (item1) above it.
    assert target_ranks(ONE, items([0.9, 0.5, 0.7, 0.1]), torch.tensor([3])).item() == 1


def test_ties_count_against_the_target():
    # item1 and item2 tie with target item3 → rank 2, not 0.
    assert target_ranks(ONE, items([0.7, 0.7, 0.7, 0.1]), torch.tensor([3])).item() == 2


def test_constant_model_ranks_every_target_last():
    r = target_ranks(torch.ones(3, 1), items([1.0] * 5), torch.tensor([1, 3, 5]))
    assert r.tolist() == [[4], [4], [4]]


def test_nan_scores_rank_last():
    # A NaN target ranks behind everything, NaN items rank behind the target.
    assert target_ranks(ONE, items([0.1, float("nan"), 0.2]), torch.tensor([2])).item() == 2
    assert target_ranks(ONE, items([float("nan"), 0.5, float("nan")]), torch.tensor([2])).item() == 0
    m = evaluate_embeddings(torch.full((2, 1), float("nan")), items([0.1, 0.2, 0.3]), torch.tensor([1, 2]), ks=(10,))
    assert m["recall@10"] == 1.0  # K ≥ catalogue: everything is "retrieved", even last
    m = evaluate_embeddings(torch.full((2, 1), float("nan")), items([0.1] * 20), torch.tensor([1, 2]), ks=(10,))
    assert m["recall@10"] == 0.0 and m["ndcg@10"] == 0.0


def test_masking_removes_seen_items_but_never_the_target():
    emb = items([0.9, 0.8, 0.7, 0.1])
    excl = (torch.tensor([0, 3]), torch.tensor([1, 2, 3]))  # seen: 1, 2 and the target 3 itself
    assert target_ranks(ONE, emb, torch.tensor([3]), excl).item() == 0
    assert target_ranks(ONE, emb, torch.tensor([3])).item() == 2


def test_metric_values_hand_worked():
    # Two users, single target: ranks 0 and 3.
    m = metrics_from_ranks(torch.tensor([0, 3]), ks=(1, 5))
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["hit@5"] == pytest.approx(1.0)
    assert m["precision@5"] == pytest.approx((1 / 5 + 1 / 5) / 2)
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(5)) / 2)
    assert m["mrr@5"] == pytest.approx((1.0 + 1 / 4) / 2)
    assert m["mrr@1"] == pytest.approx(0.5)


def test_paired_difference_and_its_interval_hand_worked():
    # Per-row hits of two rankers on the same 4 rows: d = (1, 0, 0, 1), mean 0.5, sd √(1/3), se √(1/3)/2.
    a, b = torch.tensor([1.0, 0, 1, 1]), torch.tensor([0.0, 0, 1, 0])
    d = paired_difference(a, b)
    assert d["diff"] == 0.5 and d["rows"] == 4 and d["se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    lo, hi = interval(d, 0.95)
    assert lo == pytest.approx(0.5 - 1.959964 * math.sqrt(1 / 3) / 2) and hi - 0.5 == pytest.approx(0.5 - lo)
    assert interval(d, 0.0) == (0.5, 0.5)
    assert paired_difference(a[:1], b[:1])["se"] == math.inf  # one row: no interval


def test_paired_difference_clustered_by_user_hand_worked():
    # d = (1, 1, 0, 0): user 7 gained twice, user 9 never. Mean 0.5; residual sums per user +1 and −1;
    # se² = G/(G−1) · Σ s² / n² = 2 · 2 / 16 = 0.25 — wider than the 0.2887 that treats the rows as independent.
    a, b = torch.tensor([1.0, 1, 0, 1]), torch.tensor([0.0, 0, 0, 1])
    d = paired_difference(a, b, torch.tensor([7, 7, 9, 9]))
    assert d == {"diff": 0.5, "se": pytest.approx(0.5), "rows": 4, "groups": 2}
    assert paired_difference(a, b)["se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    # One row per user: the plain error (with the G/(G−1) small-sample factor it is the same).
    assert paired_difference(a, b, torch.arange(4))["se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert paired_difference(a, b, torch.zeros(4))["se"] == math.inf  # one user: no interval


def test_row_metrics_average_to_the_metrics():
    ranks = torch.tensor([0, 3, 50])
    rows, means = row_metrics(ranks, (5,)), metrics_from_ranks(ranks, (5,))
    assert rows["ndcg@5"].tolist() == pytest.approx([1.0, 1 / math.log2(5), 0.0])
    assert rows["mrr@5"].tolist() == pytest.approx([1.0, 0.25, 0.0])
    assert {k: v.mean().item() for k, v in rows.items()} == means


def test_multi_target_ndcg_and_recall():
    # One user with 2 targets at ranks 0 and 2; a padded third slot.
    emb = items([0.9, 0.8, 0.7, 0.1])  # targets 1 (rank 0) and 3 (rank 2)
    m = evaluate_embeddings(ONE, emb, torch.tensor([[1, 3, -1]]), ks=(2, 3))
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(1.0)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg)
    assert m["precision@3"] == pytest.approx(2 / 3)


def test_k_larger_than_catalogue():
    m = metrics_from_ranks(torch.tensor([2]), ks=(100,))
    assert m["recall@100"] == 1.0 and m["precision@100"] == pytest.approx(0.01)


def test_a_padded_target_is_never_a_hit_even_when_k_exceeds_the_catalogue():
    # 4 items; one real target (item 3, rank 2) and a padded slot. At K = 10 > 4 the padded slot must
    # not count: recall 1 (not 1.5), precision 1/10, NDCG = (1/log2 4) / 1, hit 1, MRR 1/3.
    m = evaluate_embeddings(ONE, items([0.9, 0.8, 0.7, 0.1]), torch.tensor([[3, -1]]), ks=(10,))
    assert m["recall@10"] == 1.0 and m["precision@10"] == pytest.approx(0.1)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(4)) and m["hit@10"] == 1.0
    assert m["mrr@10"] == pytest.approx(1 / 3)
    assert target_ranks(ONE, items([0.9, 0.8]), torch.tensor([[2, -1]]))[0, 1] == NOT_RANKED


def test_chunking_gives_identical_ranks():
    g = torch.Generator().manual_seed(0)
    u, it = torch.randn(37, 8, generator=g), torch.randn(101, 8, generator=g)
    t = torch.randint(1, 101, (37,), generator=g)
    seen_len = torch.randint(0, 10, (37,), generator=g)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), seen_len.cumsum(0)])
    excl = (indptr, torch.randint(1, 101, (int(seen_len.sum()),), generator=g))
    a = target_ranks(u, it, t, excl, row_chunk=1000, item_chunk=1000)
    b = target_ranks(u, it, t, excl, row_chunk=5, item_chunk=7)
    assert torch.equal(a, b)
    # Brute force: count non-excluded, non-target items scoring ≥ the target.
    s = u @ it.T
    for r in range(37):
        banned = set(excl[1][indptr[r] : indptr[r + 1]].tolist()) | {0, int(t[r])}
        expect = sum(1 for j in range(101) if j not in banned and s[r, j] >= s[r, t[r]])
        assert a[r].item() == expect


def test_multi_interest_scores_take_the_max():
    user = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two interests
    emb = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.9], [0.5, 0.5]])
    assert target_ranks(user, emb, torch.tensor([2])).item() == 0


def test_topk_excludes_seen_and_padding():
    emb = items([0.9, 0.8, 0.7, 0.1])
    s, i = topk(ONE, emb, 3, (torch.tensor([0, 1]), torch.tensor([1])))
    assert i.tolist() == [[2, 3, 4]]
    s, i = topk(torch.ones(1, 1), emb, 6)
    assert i[0, :4].tolist() == [1, 2, 3, 4] and i[0, 4:].tolist() == [0, 0]
