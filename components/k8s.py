"""Settings of the Kubernetes mode (the training DAG's train task as a pod on a GPU node, or as a
multi-node PyTorchJob of the Kubeflow training operator), and the train step's command and job manifest.

Plain data with no heavy imports: the training DAG reads it at parse time from the raw YAML."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from .settings import KubernetesConfig


def from_yaml_section(section: dict[str, Any] | None, env: dict[str, str] | None = None) -> KubernetesConfig:
    """The config file's ``kubernetes`` section; ``RECALL_KUBERNETES=1|0`` in the environment overrides
    ``enabled`` (so a scheduler can switch the mode without editing the file)."""
    values = dict(section or {})
    flag = (env if env is not None else os.environ).get("RECALL_KUBERNETES")
    if flag is not None:
        values["enabled"] = flag.strip().lower() in ("1", "true", "yes", "on")
    known = set(KubernetesConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown kubernetes settings {unknown}; choose from: {', '.join(sorted(known))}")
    k8s = KubernetesConfig(**values)
    if k8s.enabled:
        if ":" not in k8s.image.rsplit("/", 1)[-1] and "@" not in k8s.image or k8s.image.endswith(":latest"):
            raise ValueError(f"kubernetes.image {k8s.image!r}: pin a tag or digest (not :latest) so every run "
                             "trains with the code it was tested with")  # fmt: skip
        if not k8s.mount_path.startswith("/"):
            raise ValueError(f"kubernetes.mount_path {k8s.mount_path!r} must be absolute")
    if k8s.gpus < 0 or k8s.nodes < 1:
        raise ValueError(f"kubernetes.gpus must be ≥ 0 and kubernetes.nodes ≥ 1 (got {k8s.gpus}, {k8s.nodes})")
    return k8s


def off_volume(k8s: KubernetesConfig, paths: dict[str, str]) -> list[str]:
    """The settings among ``paths`` (name → path) that the train pod would not find: not absolute, or not
    on the volume it mounts at ``mount_path``."""
    from pathlib import PurePosixPath

    return [f"{name}={p}" for name, p in paths.items()
            if not (PurePosixPath(p).is_absolute() and PurePosixPath(p).is_relative_to(k8s.mount_path))]  # fmt: skip


RUN_CONFIG = "run_config.json"  # the run's settings as training_set saw them (here: the DAG parses this light module)
MASTER_PORT = 23456  # the training operator's default PyTorchJob port


def train_command(k8s: KubernetesConfig, run_dir: str) -> list[str]:
    """The train step in its pod: ``recall pipeline step train`` with the run's own settings; under
    torchrun, one process per GPU, when the pod has several GPUs or the job several nodes (the training
    operator gives every pod of a PyTorchJob WORLD_SIZE = nodes, RANK = its node, MASTER_ADDR/PORT)."""
    step = ["pipeline", "step", "train", "--config", f"{run_dir}/{RUN_CONFIG}", "--run-dir", run_dir,
            "--set", "train.device=cuda"]  # fmt: skip  # on a GPU node a CPU fallback would be a silent 50x slowdown
    if k8s.gpus <= 1 and k8s.nodes == 1:
        return ["recall", *step]
    launch = ["torchrun", f"--nproc_per_node={max(k8s.gpus, 1)}"]
    if k8s.nodes > 1:
        launch += ["--nnodes=$(WORLD_SIZE)", "--node_rank=$(RANK)", "--master_addr=$(MASTER_ADDR)",
                   "--master_port=$(MASTER_PORT)"]  # fmt: skip
    else:
        launch.append("--standalone")
    return [*launch, "-m", "components.cli", *step]


def job_name(run_dir: str) -> str:
    """A DNS-1123 name for the run's PyTorchJob, from its run directory's name."""
    base = re.sub(r"[^a-z0-9-]+", "-", os.path.basename(run_dir.rstrip("/")).lower()).strip("-")
    return f"recall-train-{base}"[:63].rstrip("-")


def pytorch_job(k8s: KubernetesConfig, run_dir: str) -> dict[str, Any]:
    """The run's train step as a PyTorchJob (kubeflow.org/v1): one Master and ``nodes - 1`` Workers, each
    a pod like the single-node train pod (image, GPUs, node selector, tolerations, the runs volume) plus
    a memory-backed /dev/shm for NCCL. Pods restart on failure and the training resumes after its last
    finished epoch (``train_state.pt`` on the shared volume)."""
    command = train_command(k8s, run_dir)
    limits = {"nvidia.com/gpu": str(k8s.gpus), "cpu": str(k8s.cpu), "memory": str(k8s.memory)}
    container = {
        "name": "pytorch",  # the operator finds its container by this name
        "image": k8s.image,
        "command": command[:1],
        "args": command[1:],
        "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT}],
        "resources": {"limits": limits, "requests": dict(limits)},
        "volumeMounts": [{"name": "runs", "mountPath": k8s.mount_path}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": k8s.volume_claim}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}}],  # fmt: skip
        "nodeSelector": dict(k8s.node_selector),
        "tolerations": [dict(t) for t in k8s.tolerations],
    }
    if k8s.service_account:
        pod["serviceAccountName"] = k8s.service_account
    replica = lambda n: {"replicas": n, "restartPolicy": "OnFailure", "template": {"spec": pod}}  # noqa: E731
    replicas = {"Master": replica(1)} | ({"Worker": replica(k8s.nodes - 1)} if k8s.nodes > 1 else {})
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": job_name(run_dir), "namespace": k8s.namespace,
                     "labels": {"app.kubernetes.io/part-of": "recall", "app.kubernetes.io/component": "training"}},
        "spec": {
            "runPolicy": {"backoffLimit": 3, "cleanPodPolicy": "None"},  # keep the pods' logs after the run
            "pytorchReplicaSpecs": replicas,
        },
    }  # fmt: skip


def submit_and_wait(k8s: KubernetesConfig, run_dir: str) -> None:
    """The run's train step as a PyTorchJob, submitted from inside the cluster and waited for."""
    from kubernetes import client, config

    config.load_incluster_config()
    run_job(client.CustomObjectsApi(), pytorch_job(k8s, run_dir), k8s.job_timeout_s)


def _state(job: dict[str, Any]) -> str | None:
    """"Succeeded", "Failed" or None (still running) from a PyTorchJob's status conditions."""
    for c in reversed((job.get("status") or {}).get("conditions") or []):
        if c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True":
            return c["type"]
    return None


def run_job(api: Any, job: dict[str, Any], timeout_s: float, poll_s: float = 30.0, log: Any = print) -> None:
    """Submits ``job`` through ``api`` (a kubernetes ``CustomObjectsApi``) and waits for it to succeed.

    A retried task finds the job its earlier attempt submitted: a running one is waited for, not submitted
    twice; a failed one is deleted and submitted again (its training resumes after the last finished
    epoch). A failed or timed-out job raises with the operator's message."""
    from kubernetes.client.exceptions import ApiException

    ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
    where = ("kubeflow.org", "v1", ns, "pytorchjobs")
    deadline = time.monotonic() + timeout_s
    try:
        api.create_namespaced_custom_object(*where, job)
        log(f"submitted PyTorchJob {ns}/{name}")
    except ApiException as e:
        if e.status != 409:
            raise
        if _state(api.get_namespaced_custom_object(*where, name)) == "Failed":
            api.delete_namespaced_custom_object(*where, name)
            while True:  # the operator removes it; a new job of the same name can then be created
                try:
                    api.create_namespaced_custom_object(*where, job)
                    break
                except ApiException as again:
                    if again.status != 409 or time.monotonic() > deadline:
                        raise
                    time.sleep(poll_s)
            log(f"resubmitted PyTorchJob {ns}/{name} after its failure")
        else:
            log(f"PyTorchJob {ns}/{name} exists (an earlier attempt): waiting for it")
    while True:
        current = api.get_namespaced_custom_object(*where, name)
        state = _state(current)
        if state == "Succeeded":
            log(f"PyTorchJob {ns}/{name} succeeded")
            return
        if state == "Failed":
            why = [c.get("message", "") for c in current["status"]["conditions"] if c.get("type") == "Failed"]
            raise RuntimeError(f"PyTorchJob {ns}/{name} failed: {why[-1] if why else 'no message'}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"PyTorchJob {ns}/{name} did not finish in {timeout_s:.0f} s")
        time.sleep(poll_s)
