"""The training pipeline without an orchestrator (`recall pipeline run`, `components.pipeline`): a gated
candidate is registered with its verdict and report; a failed gate (impossible floor, regression vs
production) leaves the registry and the routing file exactly as they were."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from components import pipeline, register, snapshots
from components.cli import app
from components.config import load_config
from components.gate import GateFailed
from components.registry import Registry
from tests.small import LOOP, flags, placed, tracked

pytestmark = pytest.mark.integration
SETTINGS = LOOP


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    settings = SETTINGS + placed(out)
    cfg = load_config("configs/demo.yaml", settings)
    pipeline.features(cfg)
    return out, settings


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_run_registers_a_gated_candidate_with_report_and_leaves_routing_alone(world):
    out, settings = world
    cfg = load_config("configs/demo.yaml", settings)
    res = pipeline.run(cfg, out / "runs" / "first", with_features=False)
    assert list(res["seconds"]) == list(pipeline.TRAINING_STEPS)
    run_dir = out / "runs" / "first"
    mv = Registry(out / "registry").get("sasrec")
    assert mv.tag == "recall-sasrec:v1" and mv.meta["stage"] == "candidate"
    assert mv.meta["gate"]["passed"] and mv.meta["dataset_fingerprint"]
    assert json.loads((run_dir / "gate.json").read_text())["passed"]
    report = (run_dir / "report.html").read_text()
    assert 'Quality gate: <span class="pass">PASSED' in report and report.count("<svg") == 4
    ev = json.loads((run_dir / "evaluation.json").read_text())
    assert ev["test"]["ndcg@10"] > ev["popularity_test"]["ndcg@10"] and "recall@1" in ev["test"]
    assert not (out / "routing.yaml").exists()  # registering never serves: routing is the operator's
    # The run in MLflow: settings, loss and validation per epoch, test metrics, report, verdict, version.
    run, history, artefacts = tracked(run_dir)
    assert run.data.params["model"] == "sasrec" and run.data.params["train.epochs"] == "8"
    epochs = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert history["loss"] == history["val/ndcg_at_10"] == [h["epoch"] for h in epochs]
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(ev_test_ndcg := mv.meta["metrics"]["test"]["ndcg@10"])
    assert ev_test_ndcg > 0 and {"report.html", "gate.json", "evaluation.json"} <= set(artefacts)
    assert run.data.tags["gate"] == "passed" and run.data.tags["registered_version"] == "recall-sasrec:v1"
    assert mv.meta["mlflow_run_id"] == run.info.run_id


def test_impossible_floor_fails_at_the_gate_and_changes_nothing(world):
    out, settings = world
    (out / "routing.yaml").write_text("default: recall-sasrec:v1\nexperiments: []\n")
    before, routing = snapshot(out / "registry"), (out / "routing.yaml").read_bytes()
    args = flags([*settings, "gate.floors={ndcg@10: 0.99}"])
    res = CliRunner().invoke(
        app,
        ["pipeline", "run", "-c", "configs/demo.yaml", *args, "--no-features", "--no-bentoml", "--force",
         "--run-dir", str(out / "runs" / "floor")],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "quality gate failed" in res.output and "floor ndcg@10" in res.output and "< floor 0.9900" in res.output
    assert snapshot(out / "registry") == before and (out / "routing.yaml").read_bytes() == routing
    verdict = json.loads((out / "runs" / "floor" / "gate.json").read_text())
    assert not verdict["passed"] and verdict["production"]["tag"] == "recall-sasrec:v1"
    assert not (out / "runs" / "floor" / "package").exists()  # nothing was exported
    cfg = load_config("configs/demo.yaml", settings)
    for step in (pipeline.export, pipeline.index, pipeline.register):  # later steps refuse on their own
        with pytest.raises(GateFailed):
            step(cfg, out / "runs" / "floor")


def test_regression_against_production_fails_the_gate(world):
    out, settings = world
    (out / "routing.yaml").write_text("default: recall-sasrec:v1\nexperiments: []\n")
    before = snapshot(out / "registry")
    cfg = load_config("configs/demo.yaml", [*settings, "train.epochs=1", "gate.max_regression=0.0"])
    with pytest.raises(GateFailed) as e:
        pipeline.run(cfg, out / "runs" / "weaker", with_features=False)
    failed = [c["name"] for c in e.value.verdict["checks"] if c["status"] == "failed"]
    assert any(name.startswith("no regression vs recall-sasrec:v1") for name in failed), failed
    assert "no regression vs recall-sasrec:v1" in str(e.value)
    assert snapshot(out / "registry") == before
    ev = json.loads((out / "runs" / "weaker" / "evaluation.json").read_text())
    assert ev["slices"]["test"]["target=new"]["rows"] == 0  # production was trained on this very snapshot


def test_training_refuses_unpublished_unvalidated_or_other_data(world, tmp_path):
    out, settings = world
    cfg = load_config("configs/demo.yaml", settings)
    latest = snapshots.latest(out / "features")
    with pytest.raises(snapshots.SnapshotError, match="not published"):
        pipeline.training_set(cfg, tmp_path / "a", snapshot="20991231T000000-deadbeef")
    report = Path(latest["dir"]) / "validation.json"
    saved = report.read_text()
    try:  # (a published snapshot is never rewritten by the pipeline; this simulates a corrupted one)
        report.write_text(json.dumps({**json.loads(saved), "success": False}))
        with pytest.raises(ValueError, match="failed validation"):
            pipeline.train(cfg, tmp_path / "b")
    finally:
        report.write_text(saved)
    empty = load_config("configs/demo.yaml", [*settings, f"features.dir={tmp_path / 'empty'}"])
    with pytest.raises(FileNotFoundError, match="recall_features"):
        pipeline.training_set(empty, tmp_path / "c")
    # An operator asking the training DAG for other data than the feature store holds is refused.
    other = load_config("configs/demo.yaml", [*settings, "data.synthetic.n_users=300"])
    with pytest.raises(ValueError, match=r"data\.synthetic.*run recall_features with the same config"):
        pipeline.train(other, tmp_path / "d")
    assert not any((tmp_path / r / "model.pt").exists() for r in "abcd")


def test_unchanged_data_trains_and_registers_nothing_new(world):
    out, settings = world
    cfg = load_config("configs/demo.yaml", settings)
    first = pipeline.run(cfg, out / "runs" / "again-1")  # trains unless an earlier test already did
    tag = first.get("version") or first["steps"]["register"]["tag"]
    before = snapshot(out / "registry")
    second = pipeline.run(cfg, out / "runs" / "again-2")  # features again (unchanged), then training
    assert second["steps"]["features"]["status"] == "unchanged" and "no new data" in second["steps"]["features"]["why"]
    assert second["nothing_new"].startswith(f"nothing new: {tag} was trained on snapshot") and second["version"] == tag
    assert list(second["steps"]) == ["features"] and snapshot(out / "registry") == before
    assert not (out / "runs" / "again-2" / "model.pt").exists()
    # Other training settings on the same data are a new candidate, not "nothing new".
    other = load_config("configs/demo.yaml", [*settings, "train.epochs=1"])
    assert pipeline.already_trained(other, pipeline.pinned(other, out / "runs" / "again-2")) is None


def test_production_better_on_the_new_data_blocks_a_worse_candidate(world):
    """Day 2: new data (a different dataset fingerprint). Production (v1, trained on day 1) is scored on
    the candidate's own split through its registered towers and index, so the regression check is made,
    not skipped, and a weaker candidate fails it; slices are in the verdict and the report."""
    out, settings = world
    (out / "routing.yaml").write_text("default: recall-sasrec:v1\nexperiments: []\n")
    day2 = [*settings, "data.synthetic.n_interactions=6600", f"features.dir={out}/features-day2"]
    pipeline.features(load_config("configs/demo.yaml", day2))
    before = snapshot(out / "registry")
    cfg = load_config("configs/demo.yaml", [*day2, "train.epochs=1", "gate.slice_limits={'*': 0.0}"])
    with pytest.raises(GateFailed) as e:
        pipeline.run(cfg, out / "runs" / "day2-weak", with_features=False)
    verdict = e.value.verdict
    ev = json.loads((out / "runs" / "day2-weak" / "evaluation.json").read_text())
    assert ev["dataset_fingerprint"] != Registry(out / "registry").get("sasrec:v1").meta["dataset_fingerprint"]
    assert ev["production"]["tag"] == "recall-sasrec:v1" and ev["production"]["test"]["ndcg@10"] > 0
    d = ev["production"]["difference"]["test"]["ndcg@10"]  # paired over the same rows: the gap of the means
    assert d["diff"] == pytest.approx(ev["test"]["ndcg@10"] - ev["production"]["test"]["ndcg@10"]) and d["se"] > 0
    assert not verdict["promotion"]["recommended"]
    assert verdict["backtest"]["why"].startswith("no version of this recipe held back since recall-sasrec:v1")
    checks = {c["name"]: c for c in verdict["checks"]}
    overall = checks["no regression vs recall-sasrec:v1 on ndcg@10"]
    assert overall["status"] == "failed" and overall["threshold"] == pytest.approx(
        ev["production"]["test"]["ndcg@10"] * 0.98
    )
    assert not any(c["status"] == "skipped" and "recall-sasrec:v1" in c["name"] and "rows" not in c["detail"]
                   for c in verdict["checks"])  # fmt: skip
    assert any(name.endswith("[history=1-4]") or name.endswith("[item=head]") for name in checks)
    assert set(ev["slices"]["test"]) >= {"user=new", "user=returning", "item=head", "item=tail", "item=new"}
    assert ev["slices"]["test"]["user=returning"]["rows"] > 0
    report = (out / "runs" / "day2-weak" / "report.html").read_text()
    assert "Slices (test)" in report and "history=1-4" in report and "scored on these same events" in report
    assert snapshot(out / "registry") == before


def test_production_behind_an_approximate_index_is_scored_exactly(world, tmp_path):
    """The gate ranks the candidate exactly; production behind HNSW is ranked through its item tower's
    vectors in a flat index, so its numbers equal those of the same model behind a flat index."""
    import numpy as np

    from components import compare
    from components import index as idx
    from components.train import prepare

    out, settings = world
    run_dir = out / "runs" / "first"  # (trained by the first test of this module)
    reg = Registry(tmp_path / "registry")
    flat = register.register_run(run_dir, reg, idx.IndexConfig(kind="flat"), to_bentoml=False)
    hnsw = register.register_run(run_dir, reg, idx.IndexConfig(kind="hnsw", hnsw_m=4, ef_search=4), to_bentoml=False)
    assert hnsw.meta["index"]["report"]["kind"] == "hnsw"
    tables, enc, split = prepare(load_config("configs/demo.yaml", settings))
    rows = compare.rows(enc.data, split, "test", enc.user_ids, enc.item_ids)

    def ranks(version):
        return version.ranks(enc.data, rows, enc.item_ids, tables.users, True, 100)

    exact = compare.ServedVersion(hnsw, tables.items)
    assert exact.exact and not compare.ServedVersion(hnsw).exact and compare.ServedVersion(flat).exact
    assert np.array_equal(ranks(exact), ranks(compare.ServedVersion(flat)))


def test_backtest_meets_the_newest_held_back_version_of_the_recipe_on_events_neither_saw(world, tmp_path):
    """compare.challenger: the newest registered version of the candidate's recipe that is not production,
    whose data ends after production's and before the last event. compare.backtest scores it and
    production on every event since its data ended (users with an earlier event), clustered by user.
    Versions here are copies of one trained run pinned to made-up snapshots, so their scores agree."""
    import numpy as np

    from components import compare
    from components.train import prepare

    out, settings = world
    cfg = load_config("configs/demo.yaml", settings)
    tables, enc, _ = prepare(cfg)
    t = enc.data.times.numpy()
    ends = {"v1": np.quantile(t, 0.5), "v2": np.quantile(t, 0.7), "v3": np.quantile(t, 0.8), "v4": t.max() + 1}
    feats, reg = tmp_path / "features", Registry(tmp_path / "registry")
    for v, end in ends.items():  # v3: another recipe (train.epochs); v4: trained on every event there is
        run_dir = tmp_path / v
        shutil.copytree(out / "runs" / "first", run_dir, ignore=shutil.ignore_patterns("train_state.pt"))
        snap = f"snap-{v}"
        (feats / "snapshots" / snap).mkdir(parents=True)
        iso = pd.Timestamp(end, unit="s", tz="UTC").isoformat()
        (feats / "snapshots" / snap / snapshots.MANIFEST).write_text(json.dumps({"id": snap, "end": iso}))
        (run_dir / "snapshot.json").write_text(json.dumps({"id": snap}))
        if v == "v3":
            conf = json.loads((run_dir / "config.json").read_text())
            conf["run"]["train"]["epochs"] = 3
            (run_dir / "config.json").write_text(json.dumps(conf))
        register.publish_run(run_dir, reg, version=v, to_bentoml=False)
    v1, v2 = reg.get("sasrec:v1"), reg.get("sasrec:v2")
    signature = cfg.training_signature()
    assert reg.get("sasrec:v3").meta["training_signature"] != signature

    def pick(production, production_end):
        return compare.challenger(reg.root, "sasrec", signature, production, production_end, feats, float(t.max()))

    held, since, why = pick(v1, compare.data_end(v1.meta, feats))
    assert held.tag == v2.tag and since == pytest.approx(ends["v2"], abs=1e-3) and why == ""
    assert pick(v2, compare.data_end(v2.meta, feats))[0] is None  # nothing of the recipe held back since v2
    none, _, why = pick(v1, float(np.quantile(t, 0.75)))  # v2's data is not newer than production's
    assert none is None and why.startswith("no version of this recipe held back since recall-sasrec:v1")

    bt = compare.backtest(enc.data, enc.user_ids, enc.item_ids, tables, compare.ServedVersion(v1, tables.items), v2,
                          since, True, cfg.ks)  # fmt: skip
    first_event = np.zeros(len(t), dtype=bool)
    first_event[enc.data.indptr[:-1].numpy()[enc.data.lengths.numpy() > 0]] = True
    fresh = (t >= since) & ~first_event
    users = np.repeat(np.arange(enc.data.n_users), enc.data.lengths.numpy())[fresh]
    assert bt["rows"] == fresh.sum() > 100 and bt["users"] == len(np.unique(users))
    assert bt["challenger"] == v2.tag and bt["production"] == v1.tag
    assert bt["challenger_metrics"] == bt["production_metrics"] and bt["production_metrics"]["recall@20"] > 0
    d = bt["difference"]["recall@20"]  # the same weights: every event scores alike
    assert d == {"diff": 0.0, "se": 0.0, "rows": bt["rows"], "groups": bt["users"]}


KILL_AT = {
    # SIGKILL after the first file copied into the staging directory: the version never appears.
    "staging": """
import shutil
real_tree, real_copy = shutil.copytree, shutil.copy2
def copy(*a, **k):
    real_copy(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
def tree(src, dst, *a, **k):  # (copytree recurses through the module attribute, arguments positional)
    return real_tree(src, dst, *a, **k) if a else real_tree(src, dst, **{**k, "copy_function": copy})
shutil.copytree = tree
""",
    # SIGKILL after the version appeared, before the step wrote its registered.json.
    "record": """
real = pipeline._write
def write(d, name, data):
    if name == "registered.json":
        os.kill(os.getpid(), signal.SIGKILL)
    real(d, name, data)
pipeline._write = write
""",
}


def _register_in_process(settings, run_dir, kill_at=None):
    code = "\n".join([
        "import os, signal, sys",
        "from components import pipeline",
        "from components.config import load_config",
        KILL_AT.get(kill_at, ""),
        f"print(pipeline.register(load_config('configs/demo.yaml', {settings!r}), {str(run_dir)!r})['tag'])",
    ])  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def gated(world):
    """A run that passed the gate and was exported and indexed, with its own empty registry."""
    out, settings = world
    settings = [*settings, f"registry={out}/registry-retry", f"routing={out}/routing-retry.yaml"]
    cfg = load_config("configs/demo.yaml", settings)
    run_dir = out / "runs" / "gated"
    for name in pipeline.TRAINING_STEPS[:-1]:
        pipeline.STEP_FUNCTIONS[name](cfg, run_dir)
    return settings, run_dir, out / "registry-retry"


@pytest.mark.parametrize("kill_at", ["staging", "record"])
def test_register_killed_mid_way_and_retried_yields_exactly_one_version(gated, kill_at):
    settings, run_dir, root = gated
    shutil.rmtree(root, ignore_errors=True)
    (run_dir / "registered.json").unlink(missing_ok=True)
    p = _register_in_process(settings, run_dir, kill_at)
    _, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, err[-3000:]
    reg = Registry(root)
    assert reg.versions("sasrec") == ([] if kill_at == "staging" else ["v1"])
    assert bool(list((root / "sasrec").glob(".staging-*"))) == (kill_at == "staging")
    assert not (run_dir / "registered.json").exists()
    cfg = load_config("configs/demo.yaml", settings)
    first = pipeline.register(cfg, run_dir)  # the retry
    again = pipeline.register(cfg, run_dir)  # and one more, for good measure
    assert first["tag"] == again["tag"] == "recall-sasrec:v1" and reg.versions("sasrec") == ["v1"]
    assert not list((root / "sasrec").glob(".staging-*"))
    assert json.loads((run_dir / "registered.json").read_text())["tag"] == "recall-sasrec:v1"


def test_concurrent_registrations_get_distinct_versions_and_a_run_only_one(gated, tmp_path):
    settings, run_dir, root = gated
    shutil.rmtree(root, ignore_errors=True)
    other = tmp_path / "other-run"  # another run (same weights, another directory: another key)
    shutil.copytree(run_dir, other)
    procs = [_register_in_process(settings, d) for d in (run_dir, other, run_dir, other)]
    tags = [p.communicate(timeout=180)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert tags[0] == tags[2] and tags[1] == tags[3] and {tags[0], tags[1]} == {"recall-sasrec:v1", "recall-sasrec:v2"}
    reg = Registry(root)
    assert reg.versions("sasrec") == ["v1", "v2"]
    assert {reg.get(t).meta["run_key"] for t in tags} == {register.run_key(run_dir), register.run_key(other)}


def test_your_own_csv_with_ordinal_times_and_other_column_names_goes_from_ingest_to_a_registered_version(
    tmp_path, caplog
):
    """A user's file: their column names, timestamps that only order events — one data config, through
    ingest → validation → Feast → training → gate → registry, no traceback."""
    import logging

    from components.datasets import SyntheticConfig, generate_synthetic

    inter = generate_synthetic(SyntheticConfig(n_users=200, n_items=100, n_interactions=6000)).interactions
    step = inter.event_timestamp.rank(method="dense").astype(int)  # only the order survives
    mine = tmp_path / "mine.csv"
    pd.DataFrame({"uid": inter.user_id, "movie": inter.item_id, "step": step}).to_csv(mine, index=False)
    config = tmp_path / "mine.yaml"
    config.write_text(
        f"data:\n  source: file\n  path: {mine}\n"
        "  columns: {user_id: uid, item_id: movie, event_timestamp: step}\n"
        "model: sasrec\n"
        "train: {epochs: 3, max_len: 20, progress: false}\n"
        "gate: {beat_popularity: []}\n"
        "bentoml_store: false\n"
    )
    with caplog.at_level(logging.INFO, logger="recall.progress"):
        res = CliRunner().invoke(app, ["pipeline", "run", "-c", str(config), *flags(placed(tmp_path)), "--no-bentoml"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert "column 'step': timestamps read as ordinal" in caplog.text
    mv = Registry(tmp_path / "registry").get("sasrec")
    assert mv.tag == "recall-sasrec:v1" and mv.meta["gate"]["passed"]
