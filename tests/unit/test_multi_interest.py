"""Model-specific checks of the multi-interest blocks and the streaming frequency estimator."""

import math

import pytest
import torch

from models.layers import CapsuleRouting, RecurrentEncoder, SelfAttentiveInterests, label_aware, squash
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
    only_two = label_aware(interests, targets, active=torch.tensor([[True, True, False]]).expand(3, -1))
    assert torch.equal(only_two[1], torch.tensor([0.0, 1.0]))  # row 1's best (-1, 0) is not its interest


def test_label_aware_attention_is_softmax_of_pow_scores_hand_worked():
    # Scores of target (1, 0.5) against interests (1, 0), (0, 1), (-1, 0): 1, 0.5, -1.
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    target = torch.tensor([[1.0, 0.5]])
    e = [math.exp(1.0), math.exp(0.5), math.exp(-1.0)]
    w1 = [x / sum(e) for x in e]  # p = 1: softmax(1, 0.5, -1)
    assert torch.allclose(label_aware(interests, target, power=1), torch.tensor([[w1[0] - w1[2], w1[1]]]))
    e2 = [math.exp(1.0), math.exp(0.25), math.exp(1.0)]  # p = 2: softmax(1, 0.25, 1), the paper's pow
    w2 = [x / sum(e2) for x in e2]
    assert torch.allclose(label_aware(interests, target, power=2), torch.tensor([[w2[0] - w2[2], w2[1]]]))
    masked = label_aware(interests, target, power=2, active=torch.tensor([[True, True, False]]))
    w = [math.exp(1.0) / (math.exp(1.0) + math.exp(0.25)), math.exp(0.25) / (math.exp(1.0) + math.exp(0.25))]
    assert torch.allclose(masked, torch.tensor([w]))


def test_comirec_dr_routing_hand_worked():
    """ComiRec-DR: one map per interest, zero starting logits, two rounds. Maps S0 = I and S1 keeps the
    second coordinate; items x1 = (1, 0), x2 = (0, 1), so û(0, t) = x_t, û(1, 1) = 0, û(1, 2) = (0, 1)."""

    def squashed(s):
        n2 = s[0] ** 2 + s[1] ** 2
        return [v * n2 / (1 + n2) / math.sqrt(n2) for v in s]

    # Round 1: couplings 1/2 → s0 = (1/2, 1/2), s1 = (0, 1/2).
    v0, v1 = squashed([0.5, 0.5]), squashed([0.0, 0.5])
    assert v0[0] == pytest.approx(math.sqrt(0.5) / 3) and v1 == pytest.approx([0.0, 0.2])
    # Agreements û·v: item 1 → (v0[0], 0), item 2 → (v0[1], v1[1]); round 2's couplings are their softmax.
    c01 = 1 / (1 + math.exp(-v0[0]))
    c02 = 1 / (1 + math.exp(v1[1] - v0[1]))
    want = torch.tensor([squashed([c01, c02]), squashed([0.0, 1 - c02])])

    routing = CapsuleRouting(2, n_interest=2, iterations=2, shared=False)
    with torch.no_grad():
        routing.S.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]]]))
    v = routing(torch.eye(2).unsqueeze(0), torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(v[0], want, atol=1e-6)
    assert torch.allclose(routing.last_coupling[0], torch.tensor([[c01, c02], [1 - c01, 1 - c02]]), atol=1e-6)


def test_comirec_dr_has_a_map_per_history_slot_counted_from_the_newest():
    """ComiRec's W_ij: slot j's item goes through its own map per interest, so one item alone in a
    history gives different interests at different distances from the newest event; the maps of a
    slot do not depend on how much padding precedes the history."""
    torch.manual_seed(0)
    routing = CapsuleRouting(4, n_interest=2, iterations=3, shared=False, max_len=6, per_slot=True)
    table = torch.randn(5, 4)
    newest = routing(None, torch.tensor([[False, False, True]]), torch.tensor([[0, 0, 3]]), table)
    older = routing(None, torch.tensor([[False, True, False]]), torch.tensor([[0, 3, 0]]), table)
    assert not torch.allclose(newest, older, atol=1e-4)
    longer = routing(None, torch.tensor([[False] * 5 + [True]]), torch.tensor([[0] * 5 + [3]]), table)
    assert torch.allclose(newest, longer, atol=1e-6)
    with pytest.raises(ValueError, match="max_len"):
        routing(None, torch.ones(1, 7, dtype=torch.bool), torch.ones(1, 7, dtype=torch.long), table)
    one_map = CapsuleRouting(4, n_interest=2, iterations=3, shared=False)
    a = one_map(None, torch.tensor([[False, False, True]]), torch.tensor([[0, 0, 3]]), table)
    b = one_map(None, torch.tensor([[False, True, False]]), torch.tensor([[0, 3, 0]]), table)
    assert torch.allclose(a, b, atol=1e-6)  # per_slot=False: one map per interest, position-blind


def test_mind_routing_gives_distinct_interests_from_the_first_pass():
    """One shared map and equal starting logits per item would give K parallel interests; MIND's
    logits drawn per (interest, slot) do not — in training (a fresh draw) and in eval (a fixed one)."""
    torch.manual_seed(0)
    routing = CapsuleRouting(16, n_interest=4, iterations=1, shared=True)
    x, mask = torch.randn(32, 20, 16), torch.ones(32, 20, dtype=torch.bool)

    def max_abs_cos(v):
        v = torch.nn.functional.normalize(v, dim=-1)
        cos = (v @ v.transpose(1, 2)).abs() - torch.eye(4)
        return cos.amax(dim=(1, 2))

    assert max_abs_cos(routing.train()(x, mask)).median() < 0.9
    routing.eval()
    first = routing(x, mask)
    assert max_abs_cos(first).median() < 0.9 and torch.equal(first, routing(x, mask))  # deterministic
    # Eval logits follow the slot's distance from the newest event: left padding does not move them.
    pad = torch.zeros(32, 5, dtype=torch.bool)
    padded = routing(torch.cat([torch.zeros(32, 5, 16), x], 1), torch.cat([pad, mask], 1))
    assert torch.allclose(padded, first, atol=1e-6)


def test_mind_users_with_short_histories_have_fewer_interests():
    from components.datasets import SyntheticConfig, encode, generate_synthetic
    from models.registry import build_model

    enc = encode(generate_synthetic(SyntheticConfig(n_users=20, n_items=30, n_interactions=400, seed=1)), max_len=20)
    model = build_model("mind", enc.schema, embedding_dim=8, n_interest=4).eval()
    hist = torch.zeros(4, 20, dtype=torch.long)
    for row, n in enumerate((1, 3, 4, 20)):  # K'_u = max(1, min(4, floor(log2 n))) = 1, 1, 2, 4
        hist[row, -n:] = torch.randint(1, 30, (n,))
    batch = {"hist_item_ids": hist, **{f.name: torch.ones(4, dtype=torch.long) for f in model.user_features
                                       if f.name != "hist_item_ids"}}  # fmt: skip
    _, active = model.interests_and_active(batch)
    assert active.sum(1).tolist() == [1, 1, 2, 4]
    served = model.user_tower(batch)
    assert torch.equal(served[0, 1:], served[0, :1].expand(3, -1))  # copies of the first: the max is its own
    assert torch.equal(served[2, 2:], served[2, :1].expand(2, -1)) and not torch.equal(served[2, 1], served[2, 0])


def test_recurrent_encoder_ignores_left_padding():
    enc = RecurrentEncoder(4, 6).eval()
    x = torch.randn(1, 3, 4)
    short = enc(x, torch.ones(1, 3, dtype=torch.bool))
    padded = torch.cat([torch.zeros(1, 5, 4), x], 1)
    long = enc(padded, torch.tensor([[False] * 5 + [True] * 3]))
    assert torch.allclose(short, long[:, 5:], atol=1e-6) and (long[:, :5] == 0).all()


def test_self_attentive_interests_are_the_papers_formula_on_real_slots_only():
    """ComiRec-SA: A = softmax over real slots of W2 · tanh(W1 · h + b1), interests A · X — whatever the
    layer computes internally (σ for tanh, the hidden layer on unpadded slots only)."""
    torch.manual_seed(0)
    sa = SelfAttentiveInterests(dim=4, n_interest=3, hidden=8)
    keys, values = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    got = sa(keys, mask, values)
    for b in range(2):
        real = mask[b]
        logits = sa.w2(torch.tanh(sa.w1(keys[b, real]))).T  # (K, real slots)
        want = torch.softmax(logits, dim=1) @ values[b, real]
        assert torch.allclose(got[b], want, atol=1e-6)
    keys2 = keys.clone()
    keys2[0, :2] = 1e3  # padding never matters
    assert torch.allclose(sa(keys2, mask, values), got, atol=1e-6)


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


def _sine(**kw):
    from components.datasets import SyntheticConfig, encode, generate_synthetic
    from models.registry import build_model

    enc = encode(generate_synthetic(SyntheticConfig(n_users=20, n_items=30, n_interactions=400, seed=1)), max_len=20)
    return build_model("sine", enc.schema, embedding_dim=4, n_interest=2, n_concepts=2, **kw)


def test_sine_covariance_regulariser_hand_worked():
    model = _sine(covariance_weight=0.5)
    with torch.no_grad():  # parallel concepts (mean 0): M = C Cᵀ / 4 = [[.5, .5], [.5, .5]]
        model.concepts.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]]))
        assert model.aux_loss().item() == pytest.approx(0.5 * 0.5 * (4 * 0.25 - 2 * 0.25))  # λ · ½ off-diagonal²
        model.concepts.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]))  # orthogonal: 0
        assert model.aux_loss().item() == pytest.approx(0.0)


def test_sine_serves_one_vector_aggregated_by_the_current_intention(monkeypatch):
    model = _sine(aggregate_temperature=0.1).eval()
    phi = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]])
    c_apt = torch.tensor([[0.2, 0.1, 0.0, 0.0]])  # ⟨φ, C_apt⟩ / τ = (2, 1): weights softmax(2, 1)
    monkeypatch.setattr(model, "interests_and_intention", lambda batch: (phi, c_apt))
    e = torch.softmax(torch.tensor([2.0, 1.0]), 0)
    assert torch.allclose(model.user_tower({}), torch.tensor([[e[0], e[1], 0.0, 0.0]]))
    assert model.user_tower({}).shape == (1, 4)  # not K vectors: the paper serves the aggregate
