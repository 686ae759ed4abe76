"""Airflow DAG runs that need no shared features run, each against its module's SQLite metadata
database: the A/B report DAG promoting and holding, bad data stopped at validation, and consecutive
days (snapshots, a pinned training run beside the next day's features run, re-runs that do nothing)."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from components import snapshots
from components.airflow_local import asset_event_extras, asset_events, dags_test, ensure_db, environment
from components.promote import read_audit
from components.registry import Registry
from tests.dags import FEATURES_URI, tree
from tests.small import LOOP, placed
from tests.unit.test_ab import simulate

pytestmark = pytest.mark.integration


def _world(tmp_path, lift, seed):
    resp, fb = simulate(seed, lift)
    log = tmp_path / "responses.jsonl"
    with open(log, "w") as f:
        for r in resp.drop(columns="response_id").to_dict("records"):
            f.write(json.dumps(r) + "\n")
    fb.rename(columns={"time": "event_timestamp"}).to_parquet(tmp_path / "feedback.parquet")
    routing = tmp_path / "routing.yaml"
    variants = [
        {"name": "control", "model": "m-control", "weight": 50},
        {"name": "treatment", "model": "m-treatment", "weight": 50},
    ]
    routing.write_text(
        yaml.safe_dump({"default": "m-control", "experiments": [{"name": "exp", "salt": "s", "variants": variants}]})
    )
    conf = {
        "experiment": "exp",
        "response_log": str(log),
        "feedback": str(tmp_path / "feedback.parquet"),
        "out_dir": str(tmp_path / "reports"),
        "routing": str(routing),
        "audit_log": str(tmp_path / "audit.jsonl"),
        "auto_promote": True,
    }
    return routing, conf


def test_ab_report_dag_promotes_a_real_win(airflow_env, tmp_path):
    routing, conf = _world(tmp_path, lift=0.04, seed=1)
    run = dags_test("recall_ab_report", conf, airflow_env, timeout_s=600)
    assert run.ok, run.output[-3000:]
    assert yaml.safe_load(routing.read_text()) == {"default": "m-treatment", "experiments": []}
    (entry,) = read_audit(conf["audit_log"])
    assert entry["action"] == "promote" and entry["reason"] == "recall_ab_report auto-promotion"
    assert (tmp_path / "reports" / "exp.html").exists()


def test_ab_report_dag_holds_without_a_win(airflow_env, tmp_path):
    routing, conf = _world(tmp_path, lift=0.0, seed=2)
    before = routing.read_text()
    run = dags_test("recall_ab_report", conf, airflow_env, timeout_s=600)
    assert run.ok and "held: no significant difference" in run.output, run.output[-3000:]
    assert routing.read_text() == before and read_audit(conf["audit_log"]) == []


def test_bad_data_stops_the_features_dag_at_validation(airflow_env, tmp_path):
    from components.datasets import SyntheticConfig, generate_synthetic

    inter = generate_synthetic(SyntheticConfig(n_users=50, n_items=40, n_interactions=1500)).interactions
    inter = inter[["user_id", "item_id", "event_timestamp"]].copy()
    inter.loc[len(inter)] = [1, 1, "2099-01-01T00:00:00Z"]  # an event from the future
    inter.to_csv(tmp_path / "events.csv", index=False)
    overrides = ["data.source=file", f"data.path={tmp_path / 'events.csv'}", *placed(tmp_path), "train.max_len=20"]
    before = asset_events(airflow_env, FEATURES_URI)
    run = dags_test("recall_features", {"overrides": overrides}, airflow_env, timeout_s=600)
    assert not run.ok
    states = {t: v["state"] for t, v in run.tasks.items()}
    assert states["ingest"] == "success" and states["validate"] == "failed", states
    assert run.tasks["validate"]["try_number"] == 1  # bad data is not retried
    assert states["apply"] == states["materialize"] == "upstream_failed"
    # The failure names the expectation and quotes the offending row.
    assert "expect_column_values_to_be_between(column='event_timestamp'" in run.output
    assert "'event_timestamp': '2099-01-01T00:00:00+00:00'" in run.output
    assert "column='rating'" not in run.output  # no ratings in this log: nothing to check, nothing failed
    assert not (tmp_path / "features" / "registry.db").exists()  # Feast never saw the data
    assert not (tmp_path / "features" / "online_store.db").exists()
    assert asset_events(airflow_env, FEATURES_URI) == before  # so recall_training is never scheduled
    built = json.loads((tmp_path / "features" / "pending.json").read_text())["snapshot"]
    assert not json.loads((tmp_path / "features" / "snapshots" / built / "validation.json").read_text())["success"]
    assert snapshots.published(tmp_path / "features") == [] and snapshots.latest(tmp_path / "features") is None


def test_a_bad_setting_fails_the_first_task_at_once_naming_it(airflow_env, tmp_path):
    run = dags_test("recall_features", {"overrides": [*placed(tmp_path), "train.epochs=abc"]}, airflow_env, 300)
    assert not run.ok
    states = {t: v["state"] for t, v in run.tasks.items()}
    assert states["ingest"] == "failed" and run.tasks["ingest"]["try_number"] == 1, states  # never retried
    assert "bad run config: train.epochs: Input should be a valid integer" in run.output
    assert not (tmp_path / "features").exists()  # nothing was written


# --- day after day ----------------------------------------------------------------------------------------
def _files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def test_consecutive_days_publish_snapshots_and_a_pinned_training_run_is_unaffected(airflow_env, tmp_path):
    """Two logical days of the synthetic world replayed: two snapshots. A training run pinned to day 1 is
    unaffected by day 2's features run started while it trains (its own Airflow home: two runs at once);
    re-running day 2 publishes nothing and a training run on day 1's data again registers nothing."""
    out = tmp_path
    overrides = LOOP + placed(out)
    root = out / "features"
    day1 = dags_test("recall_features", {"overrides": overrides}, airflow_env, 600, logical_date="2024-05-01")
    assert day1.ok, day1.output[-4000:]
    (s1,) = snapshots.published(root)
    # (`dags test`, like Airflow 3's @daily, gives a run the empty interval [logical date, logical date]:
    # the run releases what is new up to its logical date.)
    assert snapshots.manifest(root, s1)["interval"].startswith("[the beginning, 2024-05-01T00:00:00")
    assert asset_event_extras(airflow_env, FEATURES_URI)[-1]["snapshot"] == s1
    frozen = _files(root / "snapshots" / s1)

    other_home = environment(tmp_path / "airflow-2", {"AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"})
    ensure_db(other_home)
    result = {}
    # (Two epochs and no popularity bar: this run is about its pinned data, not its quality.)
    training_overrides = [*overrides, "train.epochs=2", "gate.beat_popularity=[]"]
    training = threading.Thread(target=lambda: result.update(run=dags_test(
        "recall_training", {"overrides": training_overrides, "run_name": "day1", "snapshot": s1}, other_home,
        900)))  # fmt: skip
    training.start()
    pin = out / "runs" / "day1" / "snapshot.json"
    deadline = time.time() + 300
    while not pin.exists() and time.time() < deadline and training.is_alive():
        time.sleep(0.5)
    assert pin.exists(), "the training run never pinned its snapshot"
    day2 = dags_test("recall_features", {"overrides": overrides}, airflow_env, 600, logical_date="2024-05-02")
    training.join(timeout=900)
    assert day2.ok, day2.output[-4000:]
    run = result["run"]
    assert run.ok, run.output[-4000:]
    s2 = snapshots.latest(root)["id"]
    assert snapshots.published(root) == sorted([s1, s2]) and s2 != s1
    m2 = snapshots.manifest(root, s2)
    assert m2["new_events"] > 0 and m2["interval"] == "[2024-05-01T00:00:00+00:00, 2024-05-02T00:00:00+00:00)"
    mv = Registry(out / "registry").get("sasrec")
    assert mv.meta["snapshot"] == s1  # trained, evaluated, exported and indexed on day 1 only
    assert _files(root / "snapshots" / s1) == frozen  # a published snapshot never changes

    events = asset_events(airflow_env, FEATURES_URI)
    again = dags_test("recall_features", {"overrides": overrides}, airflow_env, 600, logical_date="2024-05-02")
    assert again.ok and again.tasks["ingest"]["state"] == "skipped", again.output[-3000:]
    assert "no new data" in again.output and asset_events(airflow_env, FEATURES_URI) == events
    assert snapshots.published(root) == sorted([s1, s2])

    registry = tree(out / "registry")
    same = dags_test("recall_training", {"overrides": training_overrides, "run_name": "day1-again", "snapshot": s1},
                     airflow_env, 900)  # fmt: skip
    assert same.ok and all(t["state"] == "skipped" for t in same.tasks.values()), same.output[-3000:]
    assert f"nothing new: {mv.tag} was trained on snapshot {s1}" in same.output
    assert tree(out / "registry") == registry
    shutil.rmtree(tmp_path / "airflow-2", ignore_errors=True)
