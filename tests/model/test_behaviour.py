"""Behavioural checks of trained models on synthetic data with planted taste clusters."""

import pytest
import torch

from components.datasets import SyntheticConfig, encode, generate_synthetic
from models.data import build_batch, leave_last_out, train_item_counts
from models.evaluation import evaluate_model, evaluate_popularity, item_embeddings
from models.metrics import topk
from models.registry import MODELS, build_model
from models.trainer import MatchTrainer, TrainConfig

pytestmark = pytest.mark.slow
MAX_LEN = 30


@pytest.fixture(scope="module")
def world():
    tables = generate_synthetic(
        SyntheticConfig(
            n_users=600, n_items=240, n_interactions=24_000, n_clusters=6, p_popular=0.02, p_drift=0.02, seed=1
        )
    )
    enc = encode(tables, max_len=MAX_LEN)
    return tables, enc, leave_last_out(enc.data)


@pytest.fixture(scope="module")
def trained(world):
    _, enc, split = world
    out = {}
    for name in sorted(MODELS):
        torch.manual_seed(0)
        model = build_model(name, enc.schema)
        cfg = TrainConfig(
            mode="full",
            epochs=30,
            patience=4,
            batch_size=32 if MODELS[name].causal else 256,
            lr=0.003,
            max_len=MAX_LEN,
            progress=False,
        )
        MatchTrainer(model, cfg, enc.data, split).fit()
        out[name] = model.eval()
    return out


# ComiRec-DR merges its K interests by the raw dot product (the paper's and its code's serving), and its
# item vectors grow with popularity (mean norm 1.3 in the least popular tenth of this world, 2.7 in the
# most). Given one cluster's items, some interest points at popular items of every cluster and its
# scores beat the in-cluster interest's: the dot merge gives 0-9 of 10 cluster items (0 for the smallest
# cluster, 2,130 events against 2,470-2,990; the items it serves instead are 2.9x as popular as the
# cluster's). Ranked by cosine, the same interests give 9-10 of 10 in every cluster. So for ComiRec-DR
# the test checks the interests themselves (cosine) and pins the cause of any dot-merge miss
# (popularity); the model guide states the pull.
COSINE = {"comirec_dr"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_single_cluster_history_gets_that_cluster(name, world, trained):
    tables, enc, _ = world
    model = trained[name]
    item_cluster = torch.zeros(enc.data.n_items, dtype=torch.long)
    raw_to_idx = {int(r): i for i, r in enumerate(enc.item_ids) if i > 0}
    for raw, c in zip(tables.items.item_id, tables.items.cluster, strict=True):
        item_cluster[raw_to_idx[int(raw)]] = int(c)
    counts = torch.bincount(enc.data.items, minlength=enc.data.n_items)
    inter = tables.interactions.merge(tables.items[["item_id", "cluster"]], on="item_id")
    share_by_user = inter.groupby("user_id").cluster.value_counts(normalize=True).unstack(fill_value=0)
    for cluster in range(6):
        # The user most devoted to this cluster, given a history of the cluster's 15 most popular items.
        raw_user = int(share_by_user[cluster].idxmax())
        u = torch.tensor([int((enc.user_ids == raw_user).nonzero()[0][0])])
        batch = build_batch(enc.data, u, torch.tensor([5]), MAX_LEN)
        members = (item_cluster == cluster).nonzero(as_tuple=True)[0]
        hist = members[counts[members].argsort(descending=True)][:15]
        batch["hist_item_ids"] = torch.cat([torch.zeros(MAX_LEN - 15, dtype=torch.long), hist]).unsqueeze(0)
        batch["hist_age"] = torch.zeros(1, MAX_LEN)
        with torch.no_grad():
            ue = model.user_tower(batch)
        excl = (torch.tensor([0, 15]), hist)
        items = item_embeddings(model, enc.data)
        _, top = topk(ue, items, 10, excl)
        assert not set(top[0].tolist()) & set(hist.tolist()), "a seen item was recommended with masking on"
        in_cluster = int((item_cluster[top[0]] == cluster).sum())
        if name in COSINE:
            # The documented pull: whatever the dot merge serves outside the cluster is more popular
            # than the cluster's own items.
            outside = top[0][item_cluster[top[0]] != cluster]
            if in_cluster < 5:
                assert counts[outside].float().mean() > counts[members].float().mean(), (name, cluster)
            _, top = topk(ue, torch.nn.functional.normalize(items, dim=1), 10, excl)
            in_cluster = int((item_cluster[top[0]] == cluster).sum())
        # At least half of the top-10, where chance is 10/6 ≈ 1.7 (six equal-sized clusters); most
        # models give 9-10. (MIND gave 4-6 on its weakest cluster while its routing started every
        # interest alike; with logits drawn per interest and slot it gives 9-10.)
        assert in_cluster >= 5, f"{name}: only {in_cluster}/10 of the top-10 in cluster {cluster}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trained_model_beats_popularity(name, world, trained):
    _, enc, split = world
    m = evaluate_model(trained[name], enc.data, split, "test", MAX_LEN, ks=(10, 20))
    pop = evaluate_popularity(train_item_counts(enc.data, split), enc.data, split, "test", ks=(10, 20))
    assert m["ndcg@10"] > pop["ndcg@10"] and m["recall@20"] > pop["recall@20"], (m, pop)
