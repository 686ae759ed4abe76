"""Every setting of a run in one place: the run configuration and each stage's section of it (data, features,
validation, index, gate, Kubernetes). Plain data: it imports no stage and neither torch nor the models'
code, so the DAGs can read it at parse time; :mod:`components.config` loads it from YAML and overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from models.settings import TrainConfig

SOURCES = ("synthetic", "ml100k", "parquet", "file")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deep-recall")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.1.0"


# infra/docker/pipeline.Dockerfile, tagged with the project's version
IMAGE = f"ghcr.io/recall-mlops/recall-pipeline:{_version()}"


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 1000
    n_items: int = 500
    n_interactions: int = 50_000
    n_clusters: int = 8
    p_popular: float = 0.15  # chance an event ignores taste and follows global popularity
    p_drift: float = 0.08  # chance per event that the user's current taste cluster changes
    zipf: float = 1.1  # popularity skew of items
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # synthetic | ml100k | parquet (a directory of canonical tables) | file
    path: str | None = None  # ML-100K directory, canonical-table directory, or (file) the interactions file
    synthetic: SyntheticConfig = SyntheticConfig()
    # source=file: canonical column → source column, e.g. {user_id: uid, item_id: movie, event_timestamp: ts}
    columns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown data source {self.source!r}; choose one of: {', '.join(SOURCES)}")


@dataclass(frozen=True)
class FeatureConfig:
    dir: str = "runs/features"  # the store: event partitions, snapshots, live Feast registry, SQLite online store
    snapshot: str | None = None  # the snapshot training pins (None: the latest published one)
    online: str = "sqlite"  # sqlite | redis
    redis: str = "localhost:6379"


@dataclass(frozen=True)
class ValidationConfig:
    max_len: int = 50  # L, the longest behaviour history
    min_timestamp: str = "1990-01-01"  # nothing older is plausible
    future_slack_s: int = 300  # clock skew allowed past "now"
    rating_min: float = 0.0
    rating_max: float = 5.0
    examples: int = 3  # offending rows quoted per failed expectation


KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")
HNSW_METRICS = ("ip", "l2")


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "flat"  # flat (exact) | hnsw | ivf_flat | ivf_pq
    hnsw_m: int = 32  # graph degree
    ef_construction: int = 200
    ef_search: int = 256
    hnsw_metric: str = "l2"  # l2 (MIPS reduced to nearest-neighbour search) | ip (direct)
    nlist: int | None = None  # IVF cells; None = 4·√N
    nprobe: int = 32
    pq_m: int = 16  # PQ sub-quantizers (must divide d)
    pq_bits: int = 8
    train_size: int = 100_000  # vectors used to train IVF / PQ

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.hnsw_metric not in HNSW_METRICS:
            raise ValueError(f"unknown hnsw_metric {self.hnsw_metric!r}; choose one of: {', '.join(HNSW_METRICS)}")


@dataclass(frozen=True)
class GateConfig:
    split: str = "test"  # test | val: which of the run's metrics the gate reads
    floors: dict[str, float] = field(default_factory=dict)
    beat_popularity: tuple[str, ...] = ("recall@20", "ndcg@10")
    regression_metrics: tuple[str, ...] = ("recall@20", "ndcg@10", "mrr@10")
    max_regression: float = 0.02  # allowed relative drop vs production (0.02 = 2 %)
    slice_limits: dict[str, float] = field(default_factory=dict)  # slice (or "*") → allowed relative drop
    min_slice_rows: int = 30  # a slice judged on fewer evaluated rows is skipped
    confidence: float = 0.95  # a regression must be significant at this level (0: point estimates only)
    min_gain: float = 0.02  # replacing production needs a gain above this (relative) at `confidence`

    def __post_init__(self) -> None:
        if self.split not in ("test", "val"):
            raise ValueError(f"gate.split must be test or val, got {self.split!r}")
        limits = {"max_regression": self.max_regression, "min_gain": self.min_gain, **self.slice_limits}
        for name, limit in limits.items():
            if not isinstance(limit, int | float) or not 0 <= limit < 1:
                raise ValueError(f"gate regression limit {name!r} is a fraction in [0, 1), got {limit!r}")
        if not isinstance(self.confidence, int | float) or not 0 <= self.confidence < 1:
            raise ValueError(f"gate.confidence is a level in [0, 1), got {self.confidence!r}")
        if int(self.min_slice_rows) < 1:
            raise ValueError(f"gate.min_slice_rows must be ≥ 1, got {self.min_slice_rows}")
        object.__setattr__(self, "beat_popularity", tuple(self.beat_popularity))
        object.__setattr__(self, "regression_metrics", tuple(self.regression_metrics))


@dataclass(frozen=True)
class KubernetesConfig:
    """The training DAG's train task as a pod on a GPU node (``enabled``); everything else runs in-process.
    Read at DAG parse time from the raw YAML (see ``dags/recall_training.py``), so keep it plain data."""

    enabled: bool = False
    image: str = IMAGE  # the pipeline image (console script `recall`); never a moving tag
    namespace: str = "recall"
    gpus: int = 1  # per pod; more than one: torchrun starts one training process per GPU
    nodes: int = 1  # more than one: the train step is a PyTorchJob of `nodes` pods (Kubeflow training operator)
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
    job_timeout_s: int = 86_400  # a multi-node job that has not finished by then fails the task


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = DataConfig()
    model: str = "sasrec"
    model_params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = TrainConfig()
    ks: tuple[int, ...] = (10, 20, 50, 100)
    exclude_seen: bool = True
    out_dir: str = "runs/latest"
    features: FeatureConfig = FeatureConfig()
    validation: ValidationConfig = ValidationConfig()
    index: IndexConfig = IndexConfig()
    gate: GateConfig = GateConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    registry: str | None = None  # the model registry root (None: $RECALL_REGISTRY or runs/registry)
    routing: str = "serving/routing.yaml"  # what is served; its default is "production" for the gate
    bentoml_store: bool = True  # the register step also saves each version to the BentoML model store

    def __post_init__(self) -> None:
        from models.registry import get_model_class  # the models' code, only when a run config is built

        get_model_class(self.model)  # fails early with the list of models
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_settings(self) -> dict[str, Any]:
        """The data section as plain JSON values (what a snapshot records and a training run must match)."""
        return json.loads(json.dumps(dataclasses.asdict(self.data), default=str))

    def training_signature(self) -> str:
        """What makes two trainings the same besides their data: the model, its parameters, the training
        settings (a registered version records it; the same signature on the same snapshot is not retrained)."""
        runtime = ("device", "amp", "progress")  # where and how visibly it runs, not what it learns
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in runtime}
        what = {"model": self.model, "model_params": self.model_params, "train": train}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
