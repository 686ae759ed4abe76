"""Settings of the Kubernetes mode (the training DAG's train task as a pod on a GPU node).

Plain data with no heavy imports: the training DAG reads it at parse time from the raw YAML."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class KubernetesConfig:
    """The training DAG's train task as a pod on a GPU node (``enabled``); everything else runs in-process.
    Read at DAG parse time from the raw YAML (see ``dags/recall_training.py``), so keep it plain data."""

    enabled: bool = False
    image: str = "ghcr.io/recall-mlops/recall:latest"  # an image of this project (entry point `recall`)
    namespace: str = "recall"
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    volume_claim: str = "recall-runs"  # a ReadWriteMany PVC shared by the Airflow workers and the pod
    mount_path: str = "/opt/recall/runs"
    service_account: str | None = None
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
    return KubernetesConfig(**values)
