"""Model-specific checks of the multi-interest blocks and the streaming frequency estimator."""

import torch

from models.layers import CapsuleRouting, RecurrentEncoder, label_aware, squash
from models.samplers import StreamingFrequencyEstimator


def test_squash_keeps_direction_and_norm_below_one():
    x = torch.randn(50, 8) * torch.logspace(-3, 1.5, 50).unsqueeze(1)
    y = squash(x)
    n_in, n_out = x.norm(dim=1), y.norm(dim=1)
    assert (n_out < 1).all()
    assert torch.allclose(n_out, n_in**2 / (1 + n_in**2), rtol=1e-4)
    assert torch.allclose(torch.nn.functional.cosine_similarity(x, y), torch.ones(50), atol=1e-5)


def test_routing_coefficients_sum_to_one_over_interests():
    for shared in (True, False):
        routing = CapsuleRouting(8, n_interest=3, iterations=3, shared=shared)
        x = torch.randn(5, 7, 8)
        mask = torch.ones(5, 7, dtype=torch.bool)
        mask[:, :2] = False  # left padding
        v = routing(x, mask)
        assert v.shape == (5, 3, 8)
        c = routing.last_coupling
        assert torch.allclose(c.sum(1)[mask], torch.ones(int(mask.sum())), atol=1e-6)
        assert (c.sum(1)[~mask] == 0).all()  # padding takes part in no interest
        assert (v.norm(dim=-1) < 1).all()


def test_label_aware_selection_picks_the_closest_interest():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]).expand(3, -1, -1)
    targets = torch.tensor([[0.1, 2.0], [-3.0, 0.2], [1.0, 0.9]])
    chosen = label_aware(interests, targets)
    assert torch.equal(chosen, torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]]))
    soft = label_aware(interests, targets, power=500.0)  # a steep softmax approaches the argmax
    assert torch.allclose(soft, chosen, atol=1e-3)
    flat = label_aware(interests, targets, power=0.0)  # power 0 averages the interests
    assert torch.allclose(flat, interests.mean(1))


def test_recurrent_encoder_ignores_left_padding():
    enc = RecurrentEncoder(4, 6).eval()
    x = torch.randn(1, 3, 4)
    short = enc(x, torch.ones(1, 3, dtype=torch.bool))
    padded = torch.cat([torch.zeros(1, 5, 4), x], 1)
    long = enc(padded, torch.tensor([[False] * 5 + [True] * 3]))
    assert torch.allclose(short, long[:, 5:], atol=1e-6) and (long[:, :5] == 0).all()


def test_streaming_frequency_estimator_converges_to_true_frequencies():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.0, 0.4, 0.25, 0.2, 0.1, 0.05])  # item 0 is padding
    est = StreamingFrequencyEstimator(n_buckets=1024, alpha=0.002)
    batch = 8
    for _ in range(6000):
        est.update(torch.multinomial(probs, batch, replacement=True, generator=g))
    items = torch.arange(1, 6)
    # Probability that an item appears in a batch of 8 draws: 1 - (1 - p)^8.
    expect = 1 - (1 - probs[1:]) ** batch
    assert torch.allclose(est.probability(items), expect, rtol=0.1)
    # It follows drift: item 5 becomes the most frequent.
    drift = torch.tensor([0.0, 0.05, 0.05, 0.05, 0.05, 0.8])
    for _ in range(3000):
        est.update(torch.multinomial(drift, batch, replacement=True, generator=g))
    assert est.probability(torch.tensor([5])) > 0.9 and est.probability(torch.tensor([1])) < 0.5
