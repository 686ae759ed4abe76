"""Airflow DAGs: integrity (import cleanly and fast, tags, docs, retries, graph, the Kubernetes pod) and
real `airflow dags test` runs of features → training → item refresh on one shared features run, against
a SQLite metadata database. The other DAG runs are in test_dag_runs.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import snapshots
from components.airflow_local import asset_event_extras, asset_events, dags_test
from components.registry import Registry
from tests.dags import FEATURES_URI, tree
from tests.small import LOOP, placed, tracked

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")


INSPECT = """
import json, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import BundleDagBag  # as Airflow 3 parses a bundle: its folder on sys.path
bag = BundleDagBag(dag_folder={folder!r}, bundle_path={folder!r})
errors = {{k: str(v)[:500] for k, v in bag.import_errors.items()}}
out = {{"errors": errors, "seconds": time.perf_counter() - t0, "dags": {{}}}}
for dag_id, d in bag.dags.items():
    out["dags"][dag_id] = {{
        "tags": sorted(d.tags), "doc": bool(d.doc_md), "schedule": str(d.schedule),
        "tasks": {{t.task_id: {{"retries": t.retries, "down": sorted(t.downstream_task_ids),
                               "outlets": [getattr(o, "uri", str(o)) for o in t.outlets]}} for t in d.tasks}},
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
        "report": {"retries": 2, "down": ["maybe_promote"], "outlets": []},
        "maybe_promote": {"retries": 2, "down": [], "outlets": []},
    }
    assert ab["schedule"] == "@daily"

    feats = info["dags"]["recall_features"]
    assert feats["schedule"] == "@daily"
    assert {t: v["down"] for t, v in feats["tasks"].items()} == {
        "ingest": ["validate"], "validate": ["apply"], "apply": ["materialize"], "materialize": [],
    }  # fmt: skip
    assert feats["tasks"]["materialize"]["outlets"] == [FEATURES_URI]  # the Asset that schedules training
    assert all(v["outlets"] == [] for t, v in feats["tasks"].items() if t != "materialize")

    training = info["dags"]["recall_training"]
    assert FEATURES_URI in training["schedule"]  # scheduled by the features Asset, not by time
    assert FEATURES_URI in info["dags"]["recall_item_refresh"]["schedule"]  # so is item refresh
    assert {t: v["down"] for t, v in training["tasks"].items()} == TRAINING_GRAPH


TRAINING_GRAPH = {
    "training_set": ["train"], "train": ["evaluate"], "evaluate": ["gate"], "gate": ["export"],
    "export": ["index"], "index": ["register"], "register": [],
}  # fmt: skip

POD = """
import json, os
from airflow.dag_processing.dagbag import BundleDagBag
from kubernetes.client import ApiClient
out = []
for site in {sites!r}:  # the DAG module reads the site config when parsed: one bag per site
    os.environ["RECALL_SITE_CONFIG"] = site
    bag = BundleDagBag(dag_folder={folder!r}, bundle_path={folder!r})
    assert not bag.import_errors, bag.import_errors
    train = bag.dags["recall_training"].get_task("train")
    pod = None
    if hasattr(train, "build_pod_request_obj"):
        pod = ApiClient().sanitize_for_serialization(train.build_pod_request_obj())
    out.append({{"operator": type(train).__name__, "pod": pod,
                 "callable": getattr(getattr(train, "python_callable", None), "__name__", None),
                 "down": sorted(train.downstream_task_ids), "up": sorted(train.upstream_task_ids)}})
print("JSON" + json.dumps(out))
"""


def test_kubernetes_mode_renders_a_gpu_training_pod(airflow_env, tmp_path):
    """The gpu-cloud overlay's site config switches the train task to a pod on the GPU pool: its image,
    volume, ServiceAccount and paths are the ones the manifests and the worker agree on."""
    from components.k8s import from_yaml_section, off_volume
    from components.pipeline import RUN_CONFIG

    site_file = ROOT / "infra" / "k8s" / "overlays" / "gpu-cloud" / "site.yaml"
    site = yaml.safe_load(site_file.read_text())
    # No cluster here: a kubeconfig that points nowhere is enough to render (not submit) the pod.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "current-context: c\n"
    )
    env = {**airflow_env, "RECALL_SITE_CONFIG": str(site_file), "KUBECONFIG": str(kubeconfig)}
    sites = [str(site_file)]
    for name, change in (("multi-gpu", {"gpus": 4}), ("multi-node", {"gpus": 4, "nodes": 2})):
        sites.append(str(tmp_path / f"{name}.yaml"))
        Path(sites[-1]).write_text(yaml.safe_dump({**site, "kubernetes": {**site["kubernetes"], **change}}))
    res = subprocess.run([sys.executable, "-c", POD.format(folder=str(ROOT / "dags"), sites=sites)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    info, multi_gpu, multi_node = json.loads(res.stdout.split("JSON", 1)[1])
    assert info["operator"] == "KubernetesPodOperator"
    assert info["up"] == ["training_set"] and info["down"] == ["evaluate"]  # same place in the graph
    spec = info["pod"]["spec"]
    (container,) = spec["containers"]
    k8s = site["kubernetes"]
    assert container["image"] == k8s["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(k8s["gpus"])
    assert container["resources"]["requests"]["nvidia.com/gpu"] == str(k8s["gpus"])
    assert spec["nodeSelector"] == k8s["node_selector"] and spec["serviceAccountName"] == k8s["service_account"]
    assert k8s["tolerations"][0] in spec["tolerations"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == k8s["volume_claim"]
    assert container["volumeMounts"][0]["mountPath"] == k8s["mount_path"]
    # The pod runs the installed console script on the run directory training_set made (XCom) and with the
    # settings it saved there: absolute paths on the volume, whatever the image's working directory.
    args = container["args"]
    assert container["command"] == ["recall"] and args[:3] == ["pipeline", "step", "train"]
    run_dir = args[args.index("--run-dir") + 1]
    assert "xcom_pull(task_ids='training_set')['run_dir']" in run_dir
    assert args[args.index("--config") + 1] == f"{run_dir}/{RUN_CONFIG}" and "train.device=cuda" in args
    cfg = from_yaml_section(k8s, env={})
    assert off_volume(cfg, {"out_dir": site["out_dir"], "features.dir": site["features"]["dir"]}) == []
    assert off_volume(cfg, {"out_dir": "runs/demo", "features.dir": "/data/features"}) == [
        "out_dir=runs/demo", "features.dir=/data/features"]  # fmt: skip

    # Four GPUs in the pod: torchrun starts one training process per GPU, with room in /dev/shm for NCCL.
    (container,) = multi_gpu["pod"]["spec"]["containers"]
    assert container["command"] == ["torchrun"] and container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["args"][:5] == ["--nproc_per_node=4", "--standalone", "-m", "components.cli", "pipeline"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # Two nodes: the train task submits a PyTorchJob (rendered and checked in tests/unit/test_k8s.py) and
    # waits for it, in the same place in the graph.
    assert multi_node["callable"] == "train_job" and multi_node["pod"] is None
    assert multi_node["up"] == ["training_set"] and multi_node["down"] == ["evaluate"]

    # Switched off, the same DAG trains in-process.
    off = {**env, "RECALL_KUBERNETES": "0"}
    res = subprocess.run([sys.executable, "-c", POD.format(folder=str(ROOT / "dags"), sites=[str(site_file)])],
                         env=off, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.split("JSON", 1)[1])[0]["callable"] == "step"


# --- the training loop through the real Airflow ------------------------------------------------------------
@pytest.fixture(scope="module")
def features_run(airflow_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("loop")
    overrides = LOOP + placed(out)
    before = asset_events(airflow_env, FEATURES_URI)
    run = dags_test("recall_features", {"overrides": overrides}, airflow_env, timeout_s=600)
    return out, overrides, run, before


def test_features_dag_validates_loads_feast_and_updates_the_asset(airflow_env, features_run):
    out, _, run, before = features_run
    assert run.ok, run.output[-4000:]
    assert {t: v["state"] for t, v in run.tasks.items()} == dict.fromkeys(
        ["ingest", "validate", "apply", "materialize"], "success"
    )
    latest = snapshots.latest(out / "features")
    assert json.loads((Path(latest["dir"]) / "validation.json").read_text())["success"]
    assert (out / "features" / "online_store.db").exists()
    assert asset_events(airflow_env, FEATURES_URI) == before + 1  # this is what schedules recall_training
    assert asset_event_extras(airflow_env, FEATURES_URI)[-1]["snapshot"] == latest["id"]  # ... on that snapshot


def test_training_dag_registers_a_candidate_then_an_impossible_floor_fails_at_the_gate(airflow_env, features_run):
    out, overrides, features, _ = features_run
    assert features.ok
    run = dags_test("recall_training", {"overrides": overrides, "run_name": "ok"},
                    airflow_env, timeout_s=900)  # fmt: skip
    assert run.ok, run.output[-4000:]
    assert list(run.tasks) and all(v["state"] == "success" for v in run.tasks.values())
    assert set(run.tasks) == set(TRAINING_GRAPH)
    mv = Registry(out / "registry").get("recall-sasrec:v1")
    assert mv.meta["stage"] == "candidate" and mv.meta["gate"]["passed"]
    run_dir = out / "runs" / "ok"
    assert (run_dir / "report.html").exists() and json.loads((run_dir / "registered.json").read_text())["tag"] == mv.tag
    tracked_run, history, artefacts = tracked(run_dir)  # each task logged its part into one MLflow run
    assert tracked_run.data.params["model"] == "sasrec" and len(history["val/ndcg_at_10"]) >= 1
    assert history["loss"] == history["val/ndcg_at_10"] and "report.html" in artefacts
    assert tracked_run.data.tags["registered_version"] == mv.tag == "recall-sasrec:v1"
    assert mv.meta["mlflow_run_id"] == tracked_run.info.run_id

    before = tree(out / "registry")
    bad = dags_test(
        "recall_training",
        {"overrides": [*overrides, "train.epochs=1", "gate.floors={recall@20: 0.999}"], "run_name": "floor"},
        airflow_env,
        timeout_s=900,
    )
    assert not bad.ok and bad.state == "failed"
    states = {t: v["state"] for t, v in bad.tasks.items()}
    assert states["training_set"] == states["train"] == states["evaluate"] == "success"
    assert states["gate"] == "failed" and bad.tasks["gate"]["try_number"] == 1  # a verdict is not retried
    assert all(states[t] == "upstream_failed" for t in ("export", "index", "register")), states
    assert "floor recall@20" in bad.output and "< floor 0.9990" in bad.output
    assert tree(out / "registry") == before  # nothing exported, registered or promoted
    verdict = json.loads((out / "runs" / "floor" / "gate.json").read_text())
    assert not verdict["passed"] and not (out / "runs" / "floor" / "package").exists()
    assert tracked(out / "runs" / "floor")[0].data.tags["gate"] == "failed"  # the failed verdict is tracked too


def test_item_refresh_dag_says_an_id_only_model_waits_for_training(airflow_env, features_run):
    out, overrides, _, _ = features_run
    (out / "routing.yaml").write_text("default: recall-sasrec:v1\n")
    before = (out / "routing.yaml").read_text(), tree(out / "registry")
    conf = {"overrides": overrides, "audit_log": str(out / "audit.jsonl")}
    run = dags_test("recall_item_refresh", conf, airflow_env, timeout_s=600)
    assert run.ok, run.output[-4000:]
    assert "recall-sasrec:v1: waits for training" in run.output and "reads only item ids" in run.output
    assert ((out / "routing.yaml").read_text(), tree(out / "registry")) == before  # nothing registered or swapped
