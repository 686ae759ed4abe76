"""Airflow DAGs: integrity (import cleanly and fast, tags, docs, retries, graph) and real
`airflow dags test` runs against a SQLite metadata database."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.promote import read_audit
from tests.unit.test_ab import simulate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ROOT),
    }
    res = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return env


INSPECT = """
import json, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={folder!r})
errors = {{k: str(v)[:500] for k, v in bag.import_errors.items()}}
out = {{"errors": errors, "seconds": time.perf_counter() - t0, "dags": {{}}}}
for dag_id, d in bag.dags.items():
    out["dags"][dag_id] = {{
        "tags": sorted(d.tags), "doc": bool(d.doc_md), "schedule": str(d.schedule),
        "tasks": {{t.task_id: {{"retries": t.retries, "down": sorted(t.downstream_task_ids)}} for t in d.tasks}},
    }}
import sys
out["heavy"] = sorted(m for m in ("torch", "feast", "faiss", "onnxruntime", "great_expectations") if m in sys.modules)
print("JSON" + json.dumps(out))
"""


def test_every_dag_imports_cleanly_with_tags_docs_and_retries(airflow_env):
    res = subprocess.run(
        [sys.executable, "-c", INSPECT.format(folder=str(ROOT / "dags"))],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.split("JSON", 1)[1])
    assert info["errors"] == {}
    assert info["heavy"] == []  # parsing a DAG file imports none of the heavy libraries: work happens in tasks
    assert "recall_ab_report" in info["dags"]
    for dag_id, d in info["dags"].items():
        assert d["tags"] and "recall" in d["tags"] and d["doc"], dag_id
        assert all(t["retries"] >= 1 for t in d["tasks"].values()), dag_id
    ab = info["dags"]["recall_ab_report"]
    assert ab["tasks"] == {
        "report": {"retries": 2, "down": ["maybe_promote"]},
        "maybe_promote": {"retries": 2, "down": []},
    }
    assert ab["schedule"] == "@daily"


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


def _dags_test(env, dag_id, conf):
    t0 = time.perf_counter()
    res = subprocess.run(
        [AIRFLOW, "dags", "test", dag_id, "--conf", json.dumps(conf)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return res, time.perf_counter() - t0


def test_ab_report_dag_promotes_a_real_win(airflow_env, tmp_path):
    routing, conf = _world(tmp_path, lift=0.04, seed=1)
    res, _ = _dags_test(airflow_env, "recall_ab_report", conf)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "state=success" in out, out[-3000:]
    assert yaml.safe_load(routing.read_text()) == {"default": "m-treatment", "experiments": []}
    (entry,) = read_audit(conf["audit_log"])
    assert entry["action"] == "promote" and entry["reason"] == "recall_ab_report auto-promotion"
    assert (tmp_path / "reports" / "exp.html").exists()


def test_ab_report_dag_holds_without_a_win(airflow_env, tmp_path):
    routing, conf = _world(tmp_path, lift=0.0, seed=2)
    before = routing.read_text()
    res, _ = _dags_test(airflow_env, "recall_ab_report", conf)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "held: no significant difference" in out, out[-3000:]
    assert routing.read_text() == before and read_audit(conf["audit_log"]) == []
