"""ONNX export parity for every registered model, and the Faiss index helpers on hand-checkable cases."""

import json

import numpy as np
import pytest
import torch

from components import export as ex
from components import index as idx
from models.data import build_batch, item_batch
from models.metrics import topk
from models.registry import MODELS, build_model
from tests.ranking import assert_same_topk

MAX_LEN = 20
NAMES = sorted(MODELS)
VARIANTS = [(n, {}) for n in NAMES] + [
    ("youtube_dnn", {"pooling": "time_decay"}),
    ("youtube_dnn", {"context": True}),
    ("dssm", {"context": True}),
]


def _export(name, params, enc, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, enc.schema, **params).eval()
    record = ex.export(model, enc, MAX_LEN, tmp_path)
    return model, record


@pytest.mark.parametrize(
    "name,params", VARIANTS, ids=[n + "".join(f"-{k}={v}" for k, v in p.items()) for n, p in VARIANTS]
)
def test_onnx_towers_match_pytorch_at_batch_1_and_256(name, params, tiny, tmp_path):
    _, enc, _ = tiny
    model, record = _export(name, params, enc, tmp_path)
    assert record["parity"]["user"]["passed"] and record["parity"]["item"]["passed"]
    user = ex.session(tmp_path / "user_tower.onnx")
    assert [i.name for i in user.get_inputs()] == model.user_inputs
    assert user.get_outputs()[0].name == "user_embedding"
    g = torch.Generator().manual_seed(1)
    for bs in (1, 256):
        users = torch.randint(1, enc.data.n_users, (bs,), generator=g)
        # Mid-history positions too, not only the serving position, so padding varies across rows.
        pos = (torch.rand(bs, generator=g) * (enc.data.lengths[users] + 1)).long()
        batch = build_batch(enc.data, users, pos, MAX_LEN)
        with torch.no_grad():
            ref = model.user_tower(batch).numpy()
        out = ex.run_tower(user, batch)
        assert out.shape == ref.shape and out.shape[0] == bs and out.ndim == (3 if model.multi_interest else 2)
        assert np.abs(out - ref).max() <= 1e-4
    item = ex.session(tmp_path / "item_tower.onnx")
    assert item.get_outputs()[0].name == "item_embedding"
    items = item_batch(enc.data)
    with torch.no_grad():
        assert np.abs(ex.run_tower(item, items) - model.item_tower(items).numpy()).max() <= 1e-4


FIXED_LENGTH = {"sasrec"}  # torch's attention traces the sequence length as a constant


@pytest.mark.parametrize("name", NAMES)
def test_exported_user_tower_accepts_a_shorter_history(name, tiny, tmp_path):
    """Where the sequence axis is dynamic, a graph exported at L=20 serves L=8 exactly like PyTorch."""
    _, enc, _ = tiny
    model, record = _export(name, {}, enc, tmp_path)
    spec = json.loads((tmp_path / "feature_spec.json").read_text())
    hist = next(i for i in spec["user_inputs"] if i["name"] == "hist_item_ids")
    assert record["dynamic_sequence_length"] is hist["dynamic_length"] is (name not in FIXED_LENGTH)
    if name in FIXED_LENGTH:
        return
    users = torch.arange(1, 17)
    batch = build_batch(enc.data, users, enc.data.lengths[users], 8)
    with torch.no_grad():
        ref = model.user_tower(batch).numpy()
    assert np.abs(ex.run_tower(ex.session(tmp_path / "user_tower.onnx"), batch) - ref).max() <= 1e-4


def test_feature_spec_names_every_input_with_source_dtype_and_vocab(tiny, tmp_path):
    _, enc, _ = tiny
    model, _ = _export("youtube_dnn", {"pooling": "time_decay"}, enc, tmp_path)
    spec = json.loads((tmp_path / "feature_spec.json").read_text())
    by_name = {i["name"]: i for i in spec["user_inputs"]}
    assert list(by_name) == model.user_inputs
    assert by_name["hist_item_ids"]["shape"] == ["batch", MAX_LEN] and by_name["hist_item_ids"]["dtype"] == "int64"
    assert by_name["hist_item_ids"]["vocab"] == "vocab/item_id.npy"
    assert by_name["hist_age"]["dtype"] == "float32"
    assert by_name["gender"]["source"] == "user_profile:gender"
    assert json.loads((tmp_path / by_name["gender"]["vocab"]).read_text()) == enc.vocabs["gender"]
    assert np.array_equal(np.load(tmp_path / "vocab" / "item_id.npy"), enc.item_ids)


@pytest.mark.parametrize("name", ["dssm", "youtube_dnn"])
def test_served_context_inputs_and_vectors_equal_the_trainers(name, tiny, tmp_path):
    """A request at an event's moment: raw features through the version's vocabularies and the context
    computed from the request time (TowerInputs, as serving does) give the exported tower exactly the
    inputs training gives the model for that event, and the same user vector."""
    from components.registry import ModelVersion
    from components.tower_inputs import TowerInputs

    tables, enc, _ = tiny
    model, _ = _export(name, {"context": True}, enc, tmp_path)
    spec = json.loads((tmp_path / "feature_spec.json").read_text())
    assert {i["name"]: i["source"] for i in spec["user_inputs"]}["hour_of_day"].startswith("context:hour_of_day")
    data = enc.data
    users = torch.arange(1, 25)
    pos = data.lengths[users] - 1  # each user's last event is the one to predict
    batch = build_batch(data, users, pos, MAX_LEN)
    starts = data.indptr[users]
    hist = [data.items[s + max(0, p - MAX_LEN) : s + p] for s, p in zip(starts, pos, strict=True)]
    profile = tables.users.set_index("user_id")
    raw_users = enc.user_ids[users.numpy()]
    feats = {"hist_item_ids": [enc.item_ids[h.numpy()].tolist() for h in hist]}
    feats |= {c: profile.loc[raw_users, c].tolist() for c in ("gender", "age_bucket", "occupation")}
    now = data.times[starts + pos].numpy()  # the request comes at the event's moment
    x = TowerInputs(ModelVersion(tmp_path, {}, spec)).encode(raw_users.tolist(), feats, now)
    assert list(x) == model.user_inputs
    for n in model.user_inputs:
        assert np.array_equal(x[n], batch[n].numpy()), n
    with torch.no_grad():
        want = model.user_tower(batch).numpy()
    assert np.abs(ex.run_tower(ex.session(tmp_path / "user_tower.onnx"), x) - want).max() <= 1e-4


def test_parity_failure_is_an_error(tiny, tmp_path):
    _, enc, _ = tiny
    model, _ = _export("dssm", {}, enc, tmp_path)
    with torch.no_grad():
        model.item_mlp.net[0].weight.add_(0.1)  # PyTorch now disagrees with the exported graph
    p = ex.parity(model, "item", ex.session(tmp_path / "item_tower.onnx"), [item_batch(enc.data)])
    assert not p.passed and p.max_abs_diff > 1e-3


# --- index ----------------------------------------------------------------------------------------
def test_merge_interests_keeps_each_item_once_at_its_best_score():
    # one user, two interests, k=3: item 5 appears twice (0.9 and 0.2), item 7 once.
    scores = np.array([[0.9, 0.5, 0.1, 0.8, 0.2, 0.05]], dtype=np.float32)
    rows = np.array([[5, 3, 1, 7, 5, 3]])
    s, r = idx.merge_interests(scores, rows, 3)
    assert r.tolist() == [[5, 7, 3]] and np.allclose(s, [[0.9, 0.8, 0.5]])


def test_recall_at_k_hand_worked():
    approx = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[1, 2, 9], [4, 6, 7]])
    assert idx.recall_at_k(approx, exact) == pytest.approx((2 / 3 + 1 / 3) / 2)


@pytest.mark.parametrize("multi", [False, True])
def test_flat_search_equals_brute_force_topk(multi):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal((20, 3, 16) if multi else (20, 16)).astype(np.float32)
    scores, rows = idx.search(idx.build(items, idx.IndexConfig("flat")), q, 10)
    padded = torch.cat([torch.zeros(1, 16), torch.from_numpy(items)])  # the evaluator's row 0 is padding
    ref_scores, ref = topk(torch.from_numpy(q), padded, 10)
    assert_same_topk(rows, scores, ref.numpy() - 1, ref_scores.numpy())
    assert (rows == ref.numpy() - 1).mean() > 0.95  # near-ties only, not a different ranking


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat", "ivf_pq"])
def test_ann_indexes_report_recall_against_exact(kind):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 32))
    items = (centers[rng.integers(0, 20, 4000)] + 0.3 * rng.standard_normal((4000, 32))).astype(np.float32)
    q = rng.standard_normal((50, 32)).astype(np.float32)
    _, report = idx.build_and_measure(items, q, idx.IndexConfig(kind, pq_m=8), k=20)
    assert report.n_items == 4000 and report.dim == 32 and report.size_bytes > 0
    assert report.recall_at_k >= (0.5 if kind == "ivf_pq" else 0.9)


def test_ivf_probing_every_cell_is_exact():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((3000, 16)).astype(np.float32)
    q = rng.standard_normal((30, 16)).astype(np.float32)
    cfg = idx.IndexConfig("ivf_flat", nlist=16, nprobe=16)
    assert idx.recall_at_k(idx.search(idx.build(items, cfg), q, 25)[1], idx.exact_topk(items, q, 25)) == 1.0


def test_unknown_index_kind_names_the_choices():
    with pytest.raises(ValueError, match="Input should be 'flat', 'hnsw', 'ivf_flat' or 'ivf_pq'"):
        idx.IndexConfig("annoy")


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_hnsw_returns_exact_inner_products_best_first(metric):
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((50, 32))
    items = (centers[rng.integers(0, 50, 3000)] + 0.5 * rng.standard_normal((3000, 32))).astype(np.float32)
    q = (centers[rng.integers(0, 50, 40)] + 0.5 * rng.standard_normal((40, 32))).astype(np.float32)
    index = idx.build(items, idx.IndexConfig("hnsw", hnsw_metric=metric, ef_search=200))
    assert idx.is_mips_reduced(index) is (metric == "l2") and idx.dimension(index) == 32
    assert index.d == (33 if metric == "l2" else 32)
    scores, rows = idx.search(index, q, 10)
    assert np.allclose(scores, np.einsum("bkd,bd->bk", items[rows], q), atol=1e-4)  # true inner products
    assert np.all(np.diff(scores, axis=1) <= 1e-5)  # best first
    assert idx.recall_at_k(rows, idx.exact_topk(items, q, 10)) >= 0.95
    with pytest.raises(ValueError, match="query dimension 8 != index dimension 32"):
        idx.search(index, q[:, :8], 10)
