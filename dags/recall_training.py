"""
### recall_training

Runs when `recall_features` publishes a feature snapshot (the Asset event names it), or by hand with
params: `training_set` (pins the snapshot for the whole run; stops, skipping the rest, when this model
was already trained on that data with the same settings; Feast's point-in-time training set with the
train/serve history parity check) → `train` → `evaluate` (full corpus, report.html with
curves) → `gate` (floors, must beat popularity, no regression vs the production model) → `export`
(ONNX towers, parity-checked) → `index` (Faiss, ANN recall measured) → `register` (a new *candidate*
version; routing untouched: `recall ab start` puts it in front of users).

A failed gate fails the run at `gate` with every failed check listed (stored in the run's `gate.json`
and report); nothing is exported or registered. Each run writes into its own directory
`<out_dir>/runs/<run name>`.

The train task runs in-process (CUDA when present). With `kubernetes.enabled: true` in the config (or
`RECALL_KUBERNETES=1` when the scheduler parses this file) it is a `KubernetesPodOperator` on a GPU node
running the same entry point, `recall pipeline step train` (under torchrun, one process per GPU, with
`kubernetes.gpus` > 1); with `kubernetes.nodes` > 1 it submits a PyTorchJob of the Kubeflow training
operator (that many pods) and waits for it.

Params: `config` (default `$RECALL_CONFIG` or `configs/demo.yaml`), `model` (empty: the config's),
`overrides` (`key=value` settings, e.g. `train.epochs=30`; `bentoml_store=false` keeps the version out
of the BentoML model store), `run_name` (empty: from the DAG run id), `snapshot` (empty: the one the
triggering Asset event names, else the latest published), `force` (train even if nothing is new).
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task
from recall_common import DEFAULT_CONFIG, FEATURES_ASSET_URI, dag_defaults, kubernetes_settings, project

FEATURES = Asset(FEATURES_ASSET_URI, group="recall")
K8S = kubernetes_settings()


def train_pod(k8s):
    """The train task as a pod on a GPU node; same entry point as the in-process task."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k

    from components.k8s import train_command

    # absolute paths on the shared volume; the settings are the ones training_set saw
    command = train_command(k8s, "{{ ti.xcom_pull(task_ids='training_set')['run_dir'] }}")
    gpus = str(k8s.gpus)
    limits = {"nvidia.com/gpu": gpus, "cpu": str(k8s.cpu), "memory": str(k8s.memory)}
    volumes = [k.V1Volume(name="runs", persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(
        claim_name=k8s.volume_claim))]  # fmt: skip
    mounts = [k.V1VolumeMount(name="runs", mount_path=k8s.mount_path)]
    if k8s.gpus > 1:  # NCCL between the pod's processes goes through shared memory: more than the 64 MiB default
        volumes.append(k.V1Volume(name="dshm", empty_dir=k.V1EmptyDirVolumeSource(medium="Memory")))
        mounts.append(k.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return KubernetesPodOperator(
        task_id="train",
        name="recall-train",
        namespace=k8s.namespace,
        image=k8s.image,
        cmds=command[:1],
        arguments=command[1:],
        container_resources=k.V1ResourceRequirements(
            limits=limits, requests={"cpu": limits["cpu"], "memory": limits["memory"], "nvidia.com/gpu": gpus}
        ),
        node_selector=k8s.node_selector,
        tolerations=[k.V1Toleration(**t) for t in k8s.tolerations],
        volumes=volumes,
        volume_mounts=mounts,
        service_account_name=k8s.service_account,
        startup_timeout_seconds=k8s.startup_timeout_s,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        retries=1,
    )


@dag(
    dag_id="recall_training",
    schedule=[FEATURES],
    tags=["recall", "training"],
    doc_md=__doc__,
    params={
        "config": Param(DEFAULT_CONFIG, type="string", description="run config (YAML), relative to the project"),
        "model": Param("", type="string", description="model to train (empty: the config's)"),
        "overrides": Param([], type="array", items={"type": "string"}, description="key=value settings"),
        "run_name": Param("", type="string", description="run directory name (empty: from the run id)"),
        "snapshot": Param("", type="string", description="feature snapshot to pin (empty: the Asset's, or latest)"),
        "force": Param(False, type="boolean", description="train even when nothing is new"),
    },
    **dag_defaults(retries=1, retry_delay_min=2),
)
def recall_training():
    @task
    def training_set(params: dict | None = None, run_id: str | None = None, triggering_asset_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from components import pipeline
        from components.k8s import off_volume

        events = [e for evs in (triggering_asset_events or {}).values() for e in evs if (e.extra or {}).get("snapshot")]
        snapshot = params.get("snapshot") or (events[-1].extra["snapshot"] if events else None)
        with project(params) as cfg:
            run_dir = pipeline.new_run_dir(cfg, params["run_name"] or f"{cfg.model}-{run_id}")
            if K8S.enabled and (bad := off_volume(K8S, {"out_dir": cfg.out_dir, "features.dir": cfg.features.dir})):
                raise ValueError(f"the train pod mounts the shared volume at {K8S.mount_path}; {', '.join(bad)} "
                                 "would not be there: set absolute paths below it (the site config)")  # fmt: skip
            try:
                out = pipeline.training_set(cfg, run_dir, snapshot, force=bool(params.get("force")))
            except pipeline.NothingNew as e:
                raise AirflowSkipException(str(e)) from None  # the run succeeds; nothing downstream runs
        print(f"training set of snapshot {out['snapshot']}: {out['rows']:,} examples, {out['seconds']:.1f}s, "
              f"train/serve history parity {out['parity']['targets'] - out['parity']['mismatches']:,}"
              f"/{out['parity']['targets']:,}; run directory {run_dir}")  # fmt: skip
        return {"run_dir": str(run_dir), **out}

    @task
    def step(run: dict, name: str, params: dict | None = None) -> dict:
        from components import pipeline

        with project(params) as cfg:
            out = pipeline.STEP_FUNCTIONS[name](cfg, run["run_dir"])
        print(f"{name}: {out}")
        return {"run_dir": run["run_dir"], **out}

    @task(task_id="train")
    def train_job(run: dict) -> dict:
        """The train step as a multi-node PyTorchJob: submitted from the worker (its ServiceAccount may
        create PyTorchJobs in this namespace: infra/k8s/base/training.yaml), waited for."""
        from components.k8s import submit_and_wait

        submit_and_wait(K8S, run["run_dir"])
        return run

    run = training_set()
    pod = None
    if K8S.enabled and K8S.nodes > 1:
        run = train_job(run)
    elif K8S.enabled:
        pod = train_pod(K8S)  # reads the run directory from training_set's XCom; writes to the shared volume
        run >> pod
    else:
        run = step.override(task_id="train")(run, "train")
    for name in ("evaluate", "gate", "export", "index", "register"):
        following = step.override(task_id=name)(run, name)
        if pod is not None and name == "evaluate":
            pod >> following
        run = following


recall_training()
