"""Losses and negative samplers against their definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import (
    full_softmax_loss,
    inbatch_logits,
    listwise_loss,
    logq_correct,
    pairwise_loss,
    pointwise_loss,
    resolve_mode,
)
from models.samplers import HardNegativeSampler, PopularitySampler, UniformSampler, user_positives


def test_mode_names_and_spec_integers():
    assert [resolve_mode(m) for m in (0, 1, 2, "2", "list-wise", "BPR", "full")] == [
        "pointwise",
        "pairwise",
        "listwise",
        "listwise",
        "listwise",
        "pairwise",
        "full",
    ]
    with pytest.raises(ValueError, match="choose one of"):
        resolve_mode(7)
    with pytest.raises(ValueError, match="unknown training mode 'pairwize'"):
        resolve_mode("pairwize")


def test_pointwise_is_bce():
    pos, neg = torch.tensor([2.0]), torch.tensor([[1.0, -1.0]])
    expect = (
        -math.log(torch.sigmoid(pos).item())
        + (
            -math.log(1 - torch.sigmoid(torch.tensor(1.0)).item())
            - math.log(1 - torch.sigmoid(torch.tensor(-1.0)).item())
        )
        / 2
    )
    assert pointwise_loss(pos, neg, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(expect, rel=1e-5)


def test_pairwise_is_bpr_and_ignores_masked():
    pos, neg = torch.tensor([1.0]), torch.tensor([[0.5, 100.0]])
    mask = torch.tensor([[True, False]])
    assert pairwise_loss(pos, neg, mask).item() == pytest.approx(
        -math.log(torch.sigmoid(torch.tensor(0.5)).item()), rel=1e-5
    )


def test_listwise_is_softmax_ce_and_logq_shifts_logits():
    pos, neg = torch.tensor([1.0]), torch.tensor([[0.0, 2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    expect = -torch.log_softmax(torch.tensor([1.0, 0.0, 2.0]), 0)[0].item()
    assert listwise_loss(pos, neg, mask).item() == pytest.approx(expect, rel=1e-6)
    lq_pos, lq_neg = torch.tensor([math.log(0.5)]), torch.tensor([[math.log(0.1), math.log(0.4)]])
    corrected = torch.tensor([1.0 - math.log(0.5), 0.0 - math.log(0.1), 2.0 - math.log(0.4)])
    assert listwise_loss(pos, neg, mask, lq_pos, lq_neg).item() == pytest.approx(
        -torch.log_softmax(corrected, 0)[0].item(), rel=1e-6
    )
    assert torch.equal(logq_correct(torch.tensor([1.0]), torch.tensor([0.25])), torch.tensor([0.75]))


def test_listwise_masked_negative_does_not_count():
    pos, neg = torch.tensor([1.0]), torch.tensor([[1.0, 50.0]])
    loss = listwise_loss(pos, neg, torch.tensor([[True, False]]))
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_full_softmax_never_predicts_padding():
    logits = torch.tensor([[100.0, 1.0, 0.0]])
    assert full_softmax_loss(logits, torch.tensor([1])).item() == pytest.approx(
        F.cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0])).item(), rel=1e-6
    )


def test_inbatch_masks_duplicate_positives():
    logits = torch.arange(9.0).view(3, 3)
    pos, neg, mask = inbatch_logits(logits, torch.tensor([5, 7, 5]))
    assert pos.tolist() == [0.0, 4.0, 8.0]
    assert mask.tolist() == [[False, True, False], [True, False, True], [False, True, False]]


def test_popularity_sampler_draws_count_power_alpha_within_a_chi_square_bound():
    # counts 1, 16, 81, 256 to the power 0.75 are 1, 8, 27, 64: q = [0, .01, .08, .27, .64] by hand.
    from scipy.stats import chi2

    s = PopularitySampler(torch.tensor([0, 1, 16, 81, 256]), alpha=0.75, generator=torch.Generator().manual_seed(0))
    n = 100_000
    observed = torch.bincount(s._draw(n), minlength=5).double()
    expected = torch.tensor([0.0, 0.01, 0.08, 0.27, 0.64], dtype=torch.float64) * n
    assert observed[0] == 0  # padding is never drawn
    stat = float(((observed[1:] - expected[1:]) ** 2 / expected[1:]).sum())
    assert stat < chi2.ppf(0.999, df=3), stat
    # ... and the test has power: the same draws are far from uniform and from alpha = 1.
    for wrong in ([0.25] * 4, [1 / 354, 16 / 354, 81 / 354, 256 / 354]):
        e = torch.tensor(wrong, dtype=torch.float64) * n
        assert float(((observed[1:] - e) ** 2 / e).sum()) > chi2.ppf(0.999, df=3)


@pytest.mark.parametrize("sampler", [UniformSampler(6), PopularitySampler(torch.tensor([0, 1, 1, 1, 50, 1]))])
def test_negatives_never_equal_the_positive(sampler):
    targets = torch.tensor([4] * 500 + [1] * 500)
    neg = sampler.sample(targets, 20)
    assert neg.shape == (1000, 20)
    assert not (neg == targets.unsqueeze(1)).any()
    assert (neg > 0).all()
    shared, mask = sampler.sample_shared(targets, 50)
    assert torch.equal(mask, shared.unsqueeze(0) != targets.unsqueeze(1))


def test_hard_negatives_are_the_top_scored_non_positives():
    item_scores = torch.tensor([0.0, 0.1, 0.9, 0.8, 0.95, 0.2])
    hard = HardNegativeSampler(6, pool_size=10_000)
    neg, ok = hard.sample(torch.tensor([4, 2]), 2, lambda pool: item_scores[pool].expand(2, -1))
    assert neg.tolist() == [[2, 3], [4, 3]] and ok.all()


def test_hard_negatives_skip_the_users_training_positives_and_draw_from_the_rank_window():
    # Scores rank the items 9 > 8 > ... > 1. User 0 has positives 9 and 7, user 1 has 8.
    item_scores = torch.arange(10.0) / 10
    positives = user_positives(torch.tensor([0, 0, 1]), torch.tensor([9, 7, 8]), 2)
    hard = HardNegativeSampler(10, pool_size=10_000, positives=positives)
    score = lambda pool: item_scores[pool].expand(2, -1)  # noqa: E731
    neg, _ = hard.sample(torch.tensor([1, 2]), 3, score, users=torch.tensor([0, 1]))
    assert neg.tolist() == [[8, 6, 5], [9, 7, 6]]  # without the users' positives and their targets
    # Ranks [1, 4) of what is left: user 0's left are 8, 6, 5, 4, ... → three of {6, 5, 4}, each once.
    windowed = HardNegativeSampler(10, 10_000, window=(1, 4), positives=positives,
                                   row_generator=torch.Generator().manual_seed(0))  # fmt: skip
    for _ in range(20):
        neg, ok = windowed.sample(torch.tensor([1, 2]), 2, score, users=torch.tensor([0, 1]))
        assert set(neg[0].tolist()) <= {6, 5, 4} and set(neg[1].tolist()) <= {7, 6, 5} and ok.all()
        assert neg[0, 0] != neg[0, 1] and neg[1, 0] != neg[1, 1]


def test_hard_negative_pools_smaller_than_the_catalogue_hold_no_duplicates_and_never_the_positive():
    g = torch.Generator().manual_seed(0)
    hard = HardNegativeSampler(1000, pool_size=200, generator=g, row_generator=g)
    targets = torch.randint(1, 1000, (64,), generator=g)
    scores = torch.rand(1000, generator=g)
    neg, ok = hard.sample(targets, 50, lambda pool: scores[pool].expand(64, -1))
    assert ok.all() and (neg > 0).all() and not (neg == targets.unsqueeze(1)).any()
    assert all(len(set(row)) == 50 for row in neg.tolist())
    # The window scales to the pool: catalogue ranks [100, 500) of 999 items ≈ pool ranks [20, 100).
    windowed = HardNegativeSampler(1000, pool_size=200, generator=g, window=(100, 500), row_generator=g)
    neg, ok = windowed.sample(targets, 50, lambda pool: scores[pool].expand(64, -1))
    assert ok.all() and all(len(set(row)) == 50 for row in neg.tolist())
    rank = (scores[1:].unsqueeze(0) > scores[neg].flatten().unsqueeze(1)).sum(1)  # catalogue rank of each
    assert ((rank >= 50) & (rank < 700)).float().mean() > 0.95, rank.float().quantile(torch.tensor([0.05, 0.95]))


@pytest.mark.parametrize("with_logq", [False, True])
def test_fused_shared_softmax_matches_the_reference(with_logq):
    from models.losses import shared_sampled_softmax_loss

    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    hits = (torch.tensor([0, 3]), torch.tensor([2, 4]))
    lq_pos = torch.rand(7, generator=g, dtype=torch.float64).log() if with_logq else None
    lq_neg = torch.rand(5, generator=g, dtype=torch.float64).log() if with_logq else None
    mask = torch.ones(7, 5, dtype=torch.bool)
    mask[hits] = False
    ref = listwise_loss((q * pos).sum(-1), q @ neg.T, mask, lq_pos, None if lq_neg is None else lq_neg.unsqueeze(0))
    got = shared_sampled_softmax_loss(q, pos, neg, hits, lq_pos, lq_neg)
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.autograd.gradcheck(
        lambda a, b, c: shared_sampled_softmax_loss(a, b, c, hits, lq_pos, lq_neg), (q, pos, neg)
    )
