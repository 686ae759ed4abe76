"""Model versions end to end: train → export → index → register, retrieval equal to the evaluator,
refusal of broken versions, atomic writes, the BentoML model store and the `recall models` CLI."""

import json
import multiprocessing
import shutil

import bentoml
import faiss
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from components import compare
from components import index as idx
from components.cli import app
from components.config import load_config
from components.register import onnx_user_vectors, register_run
from components.registry import Registry, VersionError, load, load_from_bentoml, sha256, verify
from components.train import prepare, run
from models.data import seen_before
from models.evaluation import item_embeddings, model_ranks, user_embeddings
from models.metrics import topk
from models.registry import load_checkpoint
from tests.ranking import assert_same_topk

pytestmark = pytest.mark.integration
SMALL = [
    "data.synthetic.n_users=150",
    "data.synthetic.n_items=90",
    "data.synthetic.n_interactions=4000",
    "train.epochs=2",
    "train.progress=false",
    "train.max_len=20",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name in ("sasrec", "mind", "dssm"):
        d = tmp_path_factory.mktemp(name)
        run(load_config(None, [*SMALL, f"model={name}", f"out_dir={d}"]))
        out[name] = d
    return out


@pytest.fixture(scope="module")
def registry(runs, tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    for d in runs.values():
        register_run(d, reg)
    return reg


def test_a_version_holds_the_contract_files_with_checksums(registry):
    mv = registry.get("recall-sasrec:v1")
    assert mv.tag == "recall-sasrec:v1" and mv.version == "v1"
    for f in (
        "user_tower.onnx",
        "item_tower.onnx",
        "index.faiss",
        "item_ids.npy",
        "feature_spec.json",
        "vocab/item_id.npy",
    ):
        assert mv.meta["checksums"][f] == sha256(mv.path / f)
    assert mv.meta["export"]["parity"]["user"]["max_abs_diff"] <= 1e-4
    assert mv.meta["index"]["report"]["recall_at_k"] == 1.0  # flat = exact
    assert mv.meta["metrics"]["test"]["ndcg@10"] > 0 and len(mv.meta["dataset_fingerprint"]) == 16
    assert mv.index().ntotal == len(mv.item_ids) == mv.meta["n_items"]
    assert not list(registry.root.glob("*/.staging-*"))


@pytest.mark.parametrize("name", ["sasrec", "mind", "dssm"])
def test_onnx_tower_plus_faiss_flat_returns_the_evaluators_topk(name, runs, registry):
    """Serving's path (ONNX user tower → Faiss) and the evaluator's exact top-K agree, for single- and
    multi-interest models, with and without masking seen items."""
    mv = registry.get(name)
    model, config = load_checkpoint(runs[name])
    cfg = load_config(None, [*SMALL, f"model={name}"])
    _, enc, _ = prepare(cfg)
    users = torch.arange(1, enc.data.n_users)
    pos = enc.data.lengths[users]
    k = 20
    ref_scores, ref = topk(user_embeddings(model, enc.data, users, pos, 20), item_embeddings(model, enc.data), k)
    q = onnx_user_vectors(mv.path / "user_tower.onnx", enc.data, users, 20)
    assert q.ndim == (3 if model.multi_interest else 2)
    scores, rows = idx.search(mv.index(), q, k)
    got = np.searchsorted(enc.item_ids, mv.item_ids[rows])  # raw ids → the evaluator's item indices
    assert_same_topk(got, scores, ref.numpy(), ref_scores.numpy(), tol=1e-4)
    assert (got == ref.numpy()).mean() > 0.98

    # With seen items removed: over-fetch, filter, keep k (what the service does).
    seen = seen_before(enc.data, users, pos)
    ref_s, ref_m = topk(user_embeddings(model, enc.data, users, pos, 20), item_embeddings(model, enc.data), k, seen)
    s_all, r_all = idx.search(mv.index(), q, k + int(pos.max()))
    got_m, got_s = [], []
    for u in range(len(users)):
        hist = set(enc.data.items[enc.data.indptr[users[u]] : enc.data.indptr[users[u]] + pos[u]].tolist())
        ids = np.searchsorted(enc.item_ids, mv.item_ids[r_all[u]])
        keep = [j for j, i in enumerate(ids) if i not in hist][:k]
        got_m.append(ids[keep])
        got_s.append(s_all[u][keep])
    assert_same_topk(np.array(got_m), np.array(got_s), ref_m.numpy(), ref_s.numpy(), tol=1e-4)


@pytest.mark.parametrize("name", ["sasrec", "mind", "dssm"])
def test_a_version_scored_offline_ranks_targets_as_the_evaluator_does(name, runs, registry):
    """The gate scores production through its ONNX tower, vocabularies and index on a candidate's
    events (components.compare). On the version's own data that must reproduce the evaluator's ranks,
    history, profile (dssm) and multi-interest (mind) inputs included; an item it never saw is a miss."""
    mv = registry.get(name)
    model, _ = load_checkpoint(runs[name])
    tables, enc, split = prepare(load_config(None, [*SMALL, f"model={name}"]))
    for part in ("val", "test"):
        rows = compare.rows(enc.data, split, part, enc.user_ids, enc.item_ids)
        ref = model_ranks(model, enc.data, split, part, 20, exclude_seen=True).numpy()
        got = compare.ServedVersion(mv).ranks(enc.data, rows, enc.item_ids, tables.users, True, max_k=50)
        ref = np.where(ref < 50, ref, compare.MISS)
        assert (got == ref).mean() > 0.97, (part, (got != ref).sum())
        assert (got < 50).sum() > 0.2 * len(got)  # the comparison is not between two lists of misses
    rows.raw_targets = np.full_like(rows.raw_targets, 10**9)  # an item production never saw
    served = compare.ServedVersion(mv)
    assert (served.ranks(enc.data, rows, enc.item_ids, tables.users, True, 50) == compare.MISS).all()
    masks = compare.slices(enc.data, rows, torch.ones(enc.data.n_items), mv)
    assert masks["item=new"].all() and not masks["user=new"].any()


def _copy(registry, tmp_path, ref="sasrec"):
    dst = tmp_path / "version"
    shutil.copytree(registry.path(ref), dst)
    return dst


def _rewrite_checksum(path, name):
    meta = json.loads((path / "model.json").read_text())
    meta["checksums"][name] = sha256(path / name)
    (path / "model.json").write_text(json.dumps(meta))


def test_truncated_onnx_is_refused(registry, tmp_path):
    v = _copy(registry, tmp_path)
    data = (v / "user_tower.onnx").read_bytes()
    (v / "user_tower.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(VersionError, match=r"user_tower.onnx: checksum mismatch"):
        load(v)
    _rewrite_checksum(v, "user_tower.onnx")  # even with a matching checksum, the graph does not load
    with pytest.raises(VersionError, match=r"user_tower.onnx: not a loadable ONNX model"):
        load(v)


def test_an_index_of_another_dimension_is_refused(registry, tmp_path):
    v = _copy(registry, tmp_path)
    n = len(np.load(v / "item_ids.npy"))
    other = faiss.IndexFlatIP(32)
    other.add(np.random.default_rng(0).standard_normal((n, 32)).astype(np.float32))
    faiss.write_index(other, str(v / "index.faiss"))
    with pytest.raises(VersionError, match=r"index.faiss: checksum mismatch"):
        load(v)
    _rewrite_checksum(v, "index.faiss")
    with pytest.raises(VersionError, match=r"index.faiss: dimension 32 != user/item embedding dimension 64"):
        load(v)


def test_a_missing_or_mismatched_id_map_is_refused(registry, tmp_path):
    v = _copy(registry, tmp_path)
    ids = np.load(v / "item_ids.npy")
    (v / "item_ids.npy").unlink()
    with pytest.raises(VersionError, match=r"item_ids.npy is missing"):
        load(v)
    np.save(v / "item_ids.npy", ids[:-5])
    _rewrite_checksum(v, "item_ids.npy")
    with pytest.raises(VersionError, match=rf"item_ids.npy maps {len(ids) - 5} items but index.faiss holds {len(ids)}"):
        load(v)


def test_feature_spec_that_disagrees_with_the_tower_is_refused(registry, tmp_path):
    v = _copy(registry, tmp_path, "dssm")
    spec = json.loads((v / "feature_spec.json").read_text())
    spec["user_inputs"] = spec["user_inputs"][::-1]
    (v / "feature_spec.json").write_text(json.dumps(spec))
    _rewrite_checksum(v, "feature_spec.json")
    with pytest.raises(VersionError, match=r"user_tower.onnx: inputs .* do not match feature_spec.json"):
        load(v)


@pytest.mark.parametrize("tower", ["user", "item"])
def test_weights_changed_after_export_are_refused_even_with_matching_checksums(registry, tmp_path, tower):
    import onnx
    from onnx import numpy_helper

    v = _copy(registry, tmp_path)
    assert (v / "probe.npz").is_file()
    model = onnx.load(v / f"{tower}_tower.onnx")
    big = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # an embedding table
    w = numpy_helper.to_array(big).copy()
    big.CopyFrom(numpy_helper.from_array(-w, big.name))  # flipped weights: the graph still loads
    onnx.save(model, v / f"{tower}_tower.onnx")
    _rewrite_checksum(v, f"{tower}_tower.onnx")
    with pytest.raises(VersionError, match=rf"{tower}_tower.onnx: outputs on the export probe differ by .*"
                                           "the weights changed after export"):  # fmt: skip
        load(v)


def test_structural_damage_is_refused_naming_the_file_and_key(registry, tmp_path):
    v = _copy(registry, tmp_path)
    meta = json.loads((v / "model.json").read_text())
    (v / "model.json").write_text(json.dumps({k: x for k, x in meta.items() if k != "embedding_dim"}))
    spec = json.loads((v / "feature_spec.json").read_text())
    (v / "feature_spec.json").write_text(json.dumps({**spec, "user_inputs": "hist_item_ids"}))
    (v / "vocab" / "item_id.npy").write_bytes(b"\x93NUMPY broken")
    for name in ("feature_spec.json", "vocab/item_id.npy"):
        _rewrite_checksum(v, name)
    with pytest.raises(VersionError) as e:
        load(v)
    for fragment in ("model.json: missing 'embedding_dim'", "feature_spec.json: user_inputs must be a list",
                     "vocab/item_id.npy: unreadable vocabulary"):  # fmt: skip
        assert fragment in str(e.value), str(e.value)


def _crash_mid_write(root):
    def fill(staging):
        (staging / "user_tower.onnx").write_bytes(b"partial")
        import os

        os._exit(1)  # the process dies mid-write: no cleanup, no model.json

    Registry(root).write("sasrec", fill)


def test_a_crash_mid_write_never_leaves_a_version_that_looks_complete(tmp_path):
    root = tmp_path / "reg"
    p = multiprocessing.get_context("spawn").Process(target=_crash_mid_write, args=(root,))
    p.start()
    p.join(60)
    assert p.exitcode == 1
    reg = Registry(root)
    assert list((root / "sasrec").glob(".staging-*"))  # the debris is there ...
    assert reg.versions("sasrec") == [] and reg.next_version("sasrec") == "v1"  # ... but no version
    with pytest.raises(VersionError, match="no versions of 'sasrec'"):
        reg.get("sasrec")


def test_a_failed_write_cleans_up_and_registers_nothing(tmp_path):
    reg = Registry(tmp_path / "reg")

    def fill(staging):
        (staging / "user_tower.onnx").write_bytes(b"x")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        reg.write("sasrec", fill)
    assert reg.versions("sasrec") == [] and not list((tmp_path / "reg" / "sasrec").iterdir())


def test_an_incomplete_version_fails_verification_before_it_is_published(tmp_path):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(VersionError, match="failed verification: user_tower.onnx is missing"):
        reg.write("sasrec", lambda staging: {"embedding_dim": 64})
    assert reg.versions("sasrec") == []


def test_versions_are_in_the_bentoml_store_and_load_verified(registry):
    tags = {str(m.tag) for m in bentoml.models.list()}
    assert {"recall-sasrec:v1", "recall-mind:v1", "recall-dssm:v1"} <= tags
    mv = load_from_bentoml("recall-mind:v1")
    assert mv.meta["checksums"] == registry.get("mind:v1").meta["checksums"] and mv.meta["multi_interest"]
    with pytest.raises(VersionError, match="not in the BentoML model store"):
        load_from_bentoml("recall-mind:v99")


def test_cli_export_list_show(runs, registry, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["models", "export", str(runs["sasrec"]), "--registry", str(registry.root), "--index", "hnsw", "--no-bentoml"],
    )
    assert res.exit_code == 0, res.output
    assert "registered recall-sasrec:v2" in res.output and "recall@90 vs exact" in res.output  # k = min(100, items)
    res = runner.invoke(app, ["models", "list", "--registry", str(registry.root)])
    assert res.exit_code == 0 and "recall-sasrec:v2" in res.output and "hnsw" in res.output and "ok" in res.output
    res = runner.invoke(app, ["models", "show", "sasrec", "--registry", str(registry.root)])
    assert res.exit_code == 0 and '"version": "v2"' in res.output
    res = runner.invoke(app, ["models", "show", "sasrec:v7", "--registry", str(registry.root)])
    assert res.exit_code == 1 and "not in" in res.output
    assert verify(registry.path("sasrec:v2")) == []
