"""Settings of the Kubernetes mode (the training DAG's train task as a pod on a GPU node).

Plain data with no heavy imports: the training DAG reads it at parse time from the raw YAML."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deep-recall")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.1.0"


# infra/docker/pipeline.Dockerfile, tagged with the project's version
IMAGE = f"ghcr.io/recall-mlops/recall-pipeline:{_version()}"


@dataclass(frozen=True)
class KubernetesConfig:
    """The training DAG's train task as a pod on a GPU node (``enabled``); everything else runs in-process.
    Read at DAG parse time from the raw YAML (see ``dags/recall_training.py``), so keep it plain data."""

    enabled: bool = False
    image: str = IMAGE  # the pipeline image (console script `recall`); never a moving tag
    namespace: str = "recall"
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    volume_claim: str = "recall-runs"  # a ReadWriteMany PVC shared by the Airflow workers and the pod
    mount_path: str = "/opt/recall/runs"  # where workers and pod mount it: the run directory must lie below
    service_account: str | None = None
    site_config_map: str | None = None  # the ConfigMap with the site config, mounted into Kubeflow's steps
    startup_timeout_s: int = 600


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
    return k8s


def off_volume(k8s: KubernetesConfig, paths: dict[str, str]) -> list[str]:
    """The settings among ``paths`` (name → path) that the train pod would not find: not absolute, or not
    on the volume it mounts at ``mount_path``."""
    from pathlib import PurePosixPath

    return [f"{name}={p}" for name, p in paths.items()
            if not (PurePosixPath(p).is_absolute() and PurePosixPath(p).is_relative_to(k8s.mount_path))]  # fmt: skip
