"""infra/: what can be checked without a cluster, registry or GPU. The Kustomize overlays render with the
real `kubectl kustomize` and every object validates against the Kubernetes API schema (strict: unknown
fields fail); the contracts between the pieces hold (the routing ConfigMap is the file the service
watches, paths agree, images are pinned); the Kubeflow pipeline compiles and runs end to end with
kfp.local; the serving bento builds and the built bento serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.small import LOOP, placed

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
OVERLAYS = sorted(p.name for p in (INFRA / "k8s" / "overlays").iterdir())
SCHEMA_VERSIONS = ("1.29.0", "1.37.0")  # the oldest Kubernetes we support and the newest schema we have
RECALL = [str(Path(sys.executable).parent / "recall")]


@cache
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (make test installs Debian's kubernetes-client)"
    res = subprocess.run([kubectl, "kustomize", str(INFRA / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return tuple(d for d in yaml.safe_load_all(res.stdout) if d)


def find(docs, kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_templates(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d, d["spec"]["template"]


def site(overlay: str) -> dict:
    cm = find(render(overlay), "ConfigMap", "recall-site")
    return yaml.safe_load(cm["data"]["site.yaml"])


def pinned(image: str) -> bool:
    name = image.rsplit("/", 1)[-1]
    return "@sha256:" in image or (":" in name and not name.endswith(":latest"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_against_the_api_schema(overlay):
    import kubernetes_validate

    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "StatefulSet",
            "PersistentVolumeClaim", "ServiceAccount", "NetworkPolicy"} <= kinds  # fmt: skip
    for version in SCHEMA_VERSIONS:
        for d in docs:
            kubernetes_validate.validate(d, version, strict=True)
    # The check itself fails on what it must catch: an unknown field, a wrong type.
    dep = json.loads(json.dumps(find(docs, "Deployment", "recall-serving")))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, SCHEMA_VERSIONS[0], strict=True)
    dep = json.loads(json.dumps(find(docs, "Deployment", "recall-serving")))
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, SCHEMA_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_mounts_the_routing_configmap_it_watches(overlay):
    from components import routing as rt

    docs = render(overlay)
    dep = find(docs, "Deployment", "recall-serving")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    # RECALL_ROUTING is <mount of the ConfigMap>/<its key>, mounted as a directory (a subPath mount never sees
    # the kubelet's update, and hot reload would silently stop).
    path = PurePosixPath(env["RECALL_ROUTING"])
    mount = mounts[str(path.parent)]
    assert "subPath" not in mount and mount["readOnly"]
    cm = find(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert path.name in cm["data"]
    assert rt.parse(yaml.safe_load(cm["data"][path.name])).default  # the file the service reads, valid
    # Every path the service is given lies on a mounted volume, absolute.
    for name in ("RECALL_REGISTRY", "RECALL_FEATURE_DIR", "RECALL_RESPONSE_LOG", "RECALL_ROUTING"):
        p = PurePosixPath(env[name])
        assert p.is_absolute() and any(p.is_relative_to(m) for m in mounts), name
    runs = volumes[mounts["/opt/recall/runs"]["name"]]["persistentVolumeClaim"]["claimName"]
    find(docs, "PersistentVolumeClaim", runs)
    # The admin token is a Secret's; the online store is the Redis this overlay deploys.
    admin = next(e for e in c["env"] if e["name"] == "RECALL_ADMIN_TOKEN")
    assert admin["valueFrom"]["secretKeyRef"]["name"] == "recall-tokens"
    host, port = env["RECALL_REDIS"].split(":")
    redis = find(docs, "Service", host)
    assert int(port) in [p["port"] for p in redis["spec"]["ports"]] and env["RECALL_ONLINE_STORE"] == "redis"
    # The site config the pipeline reads points at the same registry, store and routing file.
    s = site(overlay)
    assert (s["registry"], s["features"]["dir"], s["routing"]) == (
        env["RECALL_REGISTRY"], env["RECALL_FEATURE_DIR"], env["RECALL_ROUTING"])  # fmt: skip
    assert s["features"]["online"] == "redis" and s["features"]["redis"] == env["RECALL_REDIS"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollouts_keep_ready_capacity_and_selectors_match(overlay):
    docs = render(overlay)
    dep = find(docs, "Deployment", "recall-serving")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # 503 until the default version serves
    svc, pdb = find(docs, "Service", "recall-serving"), find(docs, "PodDisruptionBudget", "recall-serving")
    hpa = find(docs, "HorizontalPodAutoscaler", "recall-serving")
    assert "replicas" not in dep["spec"]  # the autoscaler owns the count; an apply must not reset it
    assert svc["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "recall-serving"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert svc["spec"]["ports"][0]["targetPort"] in ports
    # Every network policy selects pods that exist; the service is open on its port to the ranking tier
    # and the operators only.
    templates = [t["metadata"]["labels"] for _, t in pod_templates(docs)]
    for pol in [d for d in docs if d["kind"] == "NetworkPolicy"]:
        sel = pol["spec"]["podSelector"]["matchLabels"]
        assert any(sel.items() <= t.items() for t in templates), pol["metadata"]["name"]
    pol = find(docs, "NetworkPolicy", "recall-serving-ingress")
    (rule,) = pol["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [c["ports"][0]["containerPort"]]
    assert sorted(f["namespaceSelector"]["matchLabels"]["recall.io/access"] for f in rule["from"]) == [
        "operators", "ranking"]  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay):
    for _, t in pod_templates(render(overlay)):
        for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]:
            assert pinned(c["image"]), c["image"]
    k8s = site(overlay).get("kubernetes", {})
    assert not k8s.get("image") or pinned(k8s["image"])
    files = [p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [ROOT / "dags" / "recall_training.py", ROOT / ".dockerignore"]
    assert not [str(p) for p in files if ":latest" in p.read_text()]


def test_the_train_pod_image_must_be_pinned():
    from components.k8s import KubernetesConfig, from_yaml_section

    assert pinned(KubernetesConfig().image)  # the default: this project's version
    for image in ("ghcr.io/x/recall-pipeline", "ghcr.io/x/recall-pipeline:latest", "localhost:5000/recall"):
        with pytest.raises(ValueError, match="pin a tag"):
            from_yaml_section({"enabled": True, "image": image}, env={})
    assert from_yaml_section({"enabled": True, "image": "localhost:5000/recall:0.1.0"}, env={}).enabled


def test_airflow_values_agree_with_the_manifests_and_the_image():
    values = yaml.safe_load((INFRA / "airflow" / "values.yaml").read_text())
    assert values["executor"] == "KubernetesExecutor" and values["allowPodLaunching"]  # the chart's pod-launcher Role
    image = f"{values['images']['airflow']['repository']}:{values['images']['airflow']['tag']}"
    assert pinned(image)
    assert site("gpu-cloud")["kubernetes"]["image"] == f"{image}-cuda"  # the same build, with CUDA torch
    for key, value in values["config"].items():  # the chart writes these into airflow.cfg line by line
        assert all("\n" not in str(v) for v in value.values()), key
    docs = render("gpu-cloud")
    volumes = {v["name"]: v for v in values["volumes"]}
    mounts = {m["mountPath"]: m for m in values["volumeMounts"]}
    env = {e["name"]: e["value"] for e in values["env"]}
    for v in volumes.values():  # every volume the workers mount exists in the namespace
        if "configMap" in v:
            cm = find(docs, "ConfigMap", v["configMap"]["name"])
        else:
            find(docs, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
    site_path = PurePosixPath(env["RECALL_SITE_CONFIG"])
    cm = find(docs, "ConfigMap", volumes[mounts[str(site_path.parent)]["name"]]["configMap"]["name"])
    assert site_path.name in cm["data"]
    assert volumes[mounts["/opt/recall/runs"]["name"]]["persistentVolumeClaim"]["claimName"] == site(
        "gpu-cloud")["kubernetes"]["volume_claim"]  # fmt: skip
    # The DAG bundle is the image's DAG folder, and the config it names is in the image.
    dockerfile = (INFRA / "docker" / "pipeline.Dockerfile").read_text()
    home = re.search(r"^ENV RECALL_HOME=(\S+)", dockerfile, re.M)[1]
    bundles = json.loads(values["config"]["dag_processor"]["dag_bundle_config_list"])
    assert bundles[0]["kwargs"]["path"] == f"{home}/dags"
    assert (ROOT / env["RECALL_CONFIG"]).is_file() and re.search(r"^COPY .*configs \./configs", dockerfile, re.M)
    # The training pod's ServiceAccount exists; Kubeflow's steps mount the site ConfigMap where the workers do.
    find(docs, "ServiceAccount", site("gpu-cloud")["kubernetes"]["service_account"])
    from components import kubeflow

    assert str(site_path.parent) == kubeflow.module().SITE_DIR
    assert site("gpu-cloud")["kubernetes"]["site_config_map"] == cm["metadata"]["name"]


def dockerignored(path: str) -> bool:
    import fnmatch

    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines() if r.strip() and r[0] != "#"]
    return any(fnmatch.fnmatch(path, r) or path.startswith(r.rstrip("/") + "/") for r in rules)


def test_dockerfile_copies_what_exists_and_runs_an_installed_console_script():
    text = (INFRA / "docker" / "pipeline.Dockerfile").read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    copies = re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+)$", text, re.M)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the build context"
            assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
    froms = re.findall(r"^ARG \w+_IMAGE=(\S+)", text, re.M)
    assert froms and all(pinned(f) for f in froms)
    assert re.search(r"^USER (?!root)\w+", text, re.M)  # never root
    assert re.search(r"&& recall --help", text) and "recall" in scripts  # the build fails without the script
    # The commands pods run the image with: the installed console script, or torch's torchrun on the
    # installed package (several GPUs or nodes).
    from components.k8s import KubernetesConfig, train_command

    assert train_command(KubernetesConfig(), "/r")[0] in scripts
    multi = train_command(KubernetesConfig(gpus=4), "/r")
    assert multi[0] == "torchrun" and multi[multi.index("-m") + 1] == "components.cli"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert "components*" in packages["include"]  # so -m components.cli finds the installed package
    reqs = (INFRA / "kubeflow" / "requirements.txt").read_text()
    assert re.search(r"^kfp==\S+", reqs, re.M)


def test_serving_requirements_match_the_constraints_and_the_bentofile_names_real_code():
    constraints = dict(line.split("==") for line in (INFRA / "docker" / "constraints.txt").read_text().splitlines()
                       if "==" in line and not line.startswith("#"))  # fmt: skip
    constraints = {k.lower().replace("_", "-"): v for k, v in constraints.items()}
    for line in (INFRA / "docker" / "serving-requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            name = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
            assert constraints[name].split("+")[0] == version.strip(), name
    bento = yaml.safe_load((INFRA / "docker" / "bentofile.yaml").read_text())
    module, cls = bento["service"].split(":")
    assert f"class {cls}" in (ROOT / (module.replace(".", "/") + ".py")).read_text()
    docs = render("local")
    (c,) = find(docs, "Deployment", "recall-serving")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    for e in bento["envs"]:  # the image's defaults are the paths the Deployment mounts
        assert env[e["name"]] == e["value"]
    assert pinned(bento["docker"]["base_image"])


def test_kubeflow_pipeline_compiles_with_a_gpu_train_step(tmp_path, monkeypatch):
    from components import kubeflow
    from components.config import load_config

    site_file = INFRA / "k8s" / "overlays" / "gpu-cloud" / "site.yaml"
    monkeypatch.setenv("RECALL_SITE_CONFIG", str(site_file))
    out = kubeflow.compile_pipeline(load_config("configs/demo.yaml"), tmp_path / "pipeline.yaml")
    spec = yaml.safe_load_all(out.read_text())
    pipeline, platform = list(spec)
    executors = pipeline["deploymentSpec"]["executors"]
    k8s = yaml.safe_load(site_file.read_text())["kubernetes"]
    train = executors["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert str(train["resources"]["accelerator"]["resourceCount"]) == str(k8s["gpus"])
    assert {e["container"]["image"] for e in executors.values()} == {k8s["image"]}
    # Only train asks for a GPU; every step mounts the shared volume; train lands on the GPU pool.
    assert [n for n, e in executors.items() if "accelerator" in e["container"].get("resources", {})] == ["exec-train"]
    configs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(configs) == set(executors)
    for name, cfg in configs.items():
        assert cfg["pvcMount"][0]["mountPath"] == k8s["mount_path"], name
        assert cfg["configMapAsVolume"][0]["configMapName"] == k8s["site_config_map"], name
        assert {"name": "RECALL_SITE_CONFIG", "value": "/etc/recall/site/site.yaml"} in executors[name]["container"][
            "env"]  # fmt: skip
    assert configs["exec-train"]["nodeSelector"]["labels"] == k8s["node_selector"]
    assert configs["exec-train"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # The gate decides: export/index/register sit under the verdict's condition, gate_failed under its else.
    text = out.read_text()
    assert "gate-passed" in text and "gate-failed" in text

    # Across nodes the train step only submits the PyTorchJob (components.k8s.pytorch_job), whose pods
    # have the GPUs: the step itself asks for none.
    multi = tmp_path / "multi-node.yaml"
    multi.write_text(yaml.safe_dump({**yaml.safe_load(site_file.read_text()), "kubernetes": {**k8s, "nodes": 2}}))
    monkeypatch.setenv("RECALL_SITE_CONFIG", str(multi))
    out = kubeflow.compile_pipeline(load_config("configs/demo.yaml"), tmp_path / "multi.yaml")
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    assert not [n for n, e in executors.items() if "accelerator" in e["container"].get("resources", {})]


def registered_metric(registry: Path, name: str) -> float:
    (model_json,) = registry.rglob("v1/model.json")
    return json.loads(model_json.read_text())["metrics"]["test"][name]


@pytest.fixture(scope="module")
def kubeflow_run(tmp_path_factory):
    """`recall pipeline kubeflow --local` on the small synthetic world: every step a kfp.local subprocess."""
    out = tmp_path_factory.mktemp("kfp")
    # (Three epochs, no popularity bar: this run is about the orchestration; the quality bar is tested elsewhere.)
    settings = [*LOOP, *placed(out), "train.epochs=3", "gate.beat_popularity=[]"]
    res = subprocess.run([*RECALL, "pipeline", "kubeflow", "--local", "--run-name", "first", "--output",
                          str(out / "pipeline.yaml"), *[a for s in settings for a in ("-s", s)]],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)  # fmt: skip
    return out, settings, res


@pytest.mark.slow
@pytest.mark.integration
def test_kubeflow_pipeline_runs_end_to_end_and_a_failed_gate_stops_before_export(kubeflow_run):
    from components.registry import Registry

    out, settings, res = kubeflow_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for step in ("ingest", "validate", "apply", "materialize", "training-set", "train", "evaluate", "gate",
                 "export", "index", "register"):  # fmt: skip
        assert f"Task '{step}' finished with status SUCCESS" in re.sub(r"\x1b\[\d+m", "", res.stdout), step
    run_dir = out / "runs" / "first"
    registered = json.loads((run_dir / "registered.json").read_text())
    assert "registered recall-sasrec:v1 (candidate)" in res.stdout and registered["tag"] == "recall-sasrec:v1"
    mv = Registry(str(out / "registry")).get("recall-sasrec:v1")  # verified: structure, probe, index
    assert mv.meta["stage"] == "candidate" and json.loads((run_dir / "gate.json").read_text())["passed"]
    assert not (out / "routing.yaml").exists()  # routing untouched: `recall ab start` serves it
    # What Kubeflow's UI shows: evaluate's test metrics, the gate's report (with its verdict).
    def artefact(step, name):
        (out_json,) = (out / "kubeflow").rglob(f"{step}/executor_output.json")
        (art,) = json.loads(out_json.read_text())["artifacts"][name]["artifacts"]
        return art

    recall10 = artefact("evaluate", "metrics")["metadata"]["test_recall_at_10"]
    assert recall10 == pytest.approx(registered_metric(out / "registry", "recall@10"))
    assert Path(artefact("gate", "report")["uri"]).read_text() == (run_dir / "report.html").read_text()

    # A gate that cannot pass: the run fails at the gate, naming the check; nothing exported or registered.
    registry = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in (out / "registry").rglob("*"))
    failing = [*settings, "train.epochs=1", "gate.floors={ndcg@10: 0.99}"]
    res = subprocess.run([*RECALL, "pipeline", "kubeflow", "--local", "--run-name", "floor", "--output",
                          str(out / "pipeline.yaml"), *[a for s in failing for a in ("-s", s)]],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)  # fmt: skip
    assert res.returncode == 1, res.stdout[-3000:]
    assert "quality gate failed" in res.stdout and "ndcg@10" in res.stdout
    plain = re.sub(r"\x1b\[\d+m", "", res.stdout)
    assert "Task 'gate-failed' finished with status FAILURE" in plain
    assert "Task 'export'" not in plain.split("Task 'gate' finished")[1]
    floor = out / "runs" / "floor"
    assert not json.loads((floor / "gate.json").read_text())["passed"]
    assert not (floor / "export").exists() and not (floor / "registered.json").exists()
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in (out / "registry").rglob("*")) == registry


@pytest.mark.slow
@pytest.mark.integration
def test_built_bento_serves_the_probes_and_a_recall(kubeflow_run, tmp_path):
    """`bentoml build` with infra/docker/bentofile.yaml, then `bentoml serve` on the bento's tag (not the
    source tree) with the routing, registry and feature store from the environment, as in the image."""
    import requests

    from serving.process import running_service

    out, _, res = kubeflow_run
    assert res.returncode == 0
    home = tmp_path / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    build = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "build", "-f", "infra/docker/bentofile.yaml",
                            "--version", "test", "."], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    src = home / "bentos" / "recall" / "test" / "src"
    # Every module of ours the service imports is inside the bento (not only importable from this checkout).
    probe = subprocess.run([sys.executable, "-c", "import sys, serving.service; print('\\n'.join(m.__file__ for m in "
                            "list(sys.modules.values()) if getattr(m, '__file__', None)))"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    ours = [p for f in probe.stdout.split() if f.startswith(str(ROOT))
            and (p := Path(f).relative_to(ROOT)).parts[0] + "*" in packages]  # fmt: skip
    assert ours and all((src / p).is_file() for p in ours), [str(p) for p in ours if not (src / p).is_file()]
    routing = kubelet_volume(tmp_path / "routing", {"routing.yaml": "default: recall-sasrec:v1\nexperiments: []\n"})
    serve_env = {"BENTOML_HOME": str(home), "RECALL_ROUTING": str(routing / "routing.yaml"),
                 "RECALL_REGISTRY": str(out / "registry"), "RECALL_FEATURE_DIR": str(out / "features"),
                 "RECALL_RESPONSE_LOG": str(tmp_path / "responses.jsonl"), "RECALL_WORKERS": "1"}  # fmt: skip
    (c,) = find(render("local"), "Deployment", "recall-serving")["spec"]["template"]["spec"]["containers"]
    with running_service(serve_env, tmp_path / "serve.log", target="recall:test", cwd=tmp_path) as url:
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):  # the paths the kubelet calls
            assert requests.get(url + c[probe_name]["httpGet"]["path"], timeout=10).status_code == 200, probe_name
        r = requests.post(url + "/recall", json={"user_id": "1", "k": 5}, timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 5 and r.json()["model"] == "recall-sasrec:v1"
        assert r.json()["experiment"] is None
        # `kubectl apply` of a changed ConfigMap: the kubelet swaps the volume's ..data link atomically;
        # the service's watcher sees it and reloads, no restart.
        generation = requests.get(url + "/readyz", timeout=10).json()["routing_generation"]
        variants = [{"name": n, "model": "recall-sasrec:v1", "weight": 50} for n in ("control", "treatment")]
        new = yaml.safe_dump({"default": "recall-sasrec:v1",
                              "experiments": [{"name": "cm", "salt": "s", "variants": variants}]})  # fmt: skip
        kubelet_volume(tmp_path / "routing", {"routing.yaml": new})
        deadline = time.time() + 30
        while requests.get(url + "/readyz", timeout=10).json()["routing_generation"] == generation:
            assert time.time() < deadline, "the ConfigMap update was never reloaded"
            time.sleep(0.5)
        r = requests.post(url + "/recall", json={"user_id": "1", "k": 5}, timeout=30)
        assert r.status_code == 200 and r.json()["experiment"] == "cm", r.text


def kubelet_volume(root: Path, files: dict[str, str]) -> Path:
    """What the kubelet does to a ConfigMap volume: the data in a new timestamped directory, the ``..data``
    link swapped to it atomically, each key a link through ``..data``."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns()}"
    stamp.mkdir()
    for name, text in files.items():
        (stamp / name).write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(stamp.name)
    os.replace(tmp, root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")
    return root
