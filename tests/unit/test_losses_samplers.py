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
from models.samplers import HardNegativeSampler, PopularitySampler, UniformSampler


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


def test_popularity_sampler_matches_count_power_alpha():
    counts = torch.tensor([0, 1, 10, 100, 1000])
    s = PopularitySampler(counts, alpha=0.75, generator=torch.Generator().manual_seed(0))
    draws = s._draw(400_000)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    expect = counts.double().pow(0.75)
    expect[0] = 0
    expect /= expect.sum()
    assert freq[0] == 0
    assert torch.allclose(freq, expect, atol=0.004)


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
    neg = hard.sample(torch.tensor([4, 2]), 2, lambda pool: item_scores[pool].expand(2, -1))
    assert neg.tolist() == [[2, 3], [4, 3]]


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
