"""Every setting of a run in one place: the run configuration and each stage's section of it (data, features,
validation, index, gate, Kubernetes). Plain data: it imports no stage and neither torch nor the models'
code, so the DAGs can read it at parse time; :mod:`components.config` loads it from YAML and overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from models.settings import TrainConfig, setting, settings


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deep-recall")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.1.0"


# infra/docker/pipeline.Dockerfile, tagged with the project's version
IMAGE = f"ghcr.io/recall-mlops/recall-pipeline:{_version()}"


@settings
class SyntheticConfig:
    n_users: Annotated[int, setting("users of the synthetic world", ge=1)] = 1000
    n_items: Annotated[int, setting("items of the synthetic world", ge=1)] = 500
    n_interactions: Annotated[int, setting("events of the synthetic world", ge=1)] = 50_000
    n_clusters: Annotated[int, setting("taste clusters", ge=1)] = 8
    p_popular: Annotated[float, setting("chance an event ignores taste and follows popularity", ge=0, le=1)] = 0.15
    p_drift: Annotated[float, setting("chance per event that the user's taste cluster changes", ge=0, le=1)] = 0.08
    zipf: Annotated[float, setting("popularity skew of items", gt=0)] = 1.1
    seed: Annotated[int, setting("seed of the world", ge=0)] = 0


@settings
class DataConfig:
    source: Annotated[
        Literal["synthetic", "ml100k", "parquet", "file"],
        setting("synthetic | ml100k | parquet (a directory of canonical tables) | file (your interactions file)"),
    ] = "synthetic"
    path: Annotated[
        str | None, setting("ML-100K directory, canonical-table directory, or (source file) the interactions file")
    ] = None
    synthetic: SyntheticConfig = SyntheticConfig()
    timestamp_unit: Annotated[Literal["auto", "s", "ms", "us", "ns", "iso", "ordinal"], setting(
        "source file: what its timestamps are — unix s | ms | us | ns, iso (text), or ordinal (numbers that only "
        "order events; ties stay ties) — auto decides from the column and says what it chose")] = "auto"
    columns: Annotated[
        dict[str, str],
        setting(
            "source file: canonical column → your column, e.g. {user_id: uid, item_id: movie, event_timestamp: ts}"
        ),
    ] = field(default_factory=dict)


@settings
class FeatureConfig:
    dir: Annotated[
        str, setting("the feature store: event partitions, snapshots, live Feast registry, SQLite online store")
    ] = "runs/features"
    snapshot: Annotated[str | None, setting("the snapshot training pins (null: the latest published one)")] = None
    online: Annotated[Literal["sqlite", "redis"], setting("Feast online store")] = "sqlite"
    redis: Annotated[str, setting("host:port of Redis when online is redis")] = "localhost:6379"


@settings
class ValidationConfig:
    max_len: Annotated[int, setting("L, the longest behaviour history", ge=1)] = 50
    min_timestamp: Annotated[str, setting("no event is older than this (ISO date)")] = "1990-01-01"
    future_slack_s: Annotated[int, setting("clock skew allowed past now, seconds", ge=0)] = 300
    rating_min: Annotated[float, setting("lowest valid rating")] = 0.0
    rating_max: Annotated[float, setting("highest valid rating")] = 5.0
    examples: Annotated[int, setting("offending rows quoted per failed expectation", ge=0)] = 3


@settings
class IndexConfig:
    kind: Annotated[Literal["flat", "hnsw", "ivf_flat", "ivf_pq"], setting("Faiss index: flat is exact")] = "flat"
    hnsw_m: Annotated[int, setting("HNSW graph degree", ge=2)] = 32
    ef_construction: Annotated[int, setting("HNSW build-time candidate list", ge=1)] = 200
    ef_search: Annotated[int, setting("HNSW search-time candidate list", ge=1)] = 256
    hnsw_metric: Annotated[
        Literal["ip", "l2"], setting("l2: MIPS reduced to nearest-neighbour search | ip: inner product directly")
    ] = "l2"
    nlist: Annotated[int | None, setting("IVF cells (null: 4·√N)", ge=1)] = None
    nprobe: Annotated[int, setting("IVF cells searched per query", ge=1)] = 32
    pq_m: Annotated[int, setting("PQ sub-quantizers (must divide the dimension)", ge=1)] = 16
    pq_bits: Annotated[int, setting("bits per PQ code", ge=1, le=16)] = 8
    train_size: Annotated[int, setting("vectors used to train IVF / PQ", ge=1)] = 100_000


Fraction = Annotated[float, Field(ge=0, lt=1)]


@settings
class GateConfig:
    split: Annotated[Literal["test", "val"], setting("which of the run's metrics the gate reads")] = "test"
    floors: Annotated[dict[str, float], setting("metric → lowest acceptable value, e.g. {ndcg@10: 0.05}")] = field(
        default_factory=dict
    )
    beat_popularity: Annotated[tuple[str, ...], setting("metrics that must beat popularity")] = ("recall@20", "ndcg@10")
    regression_metrics: Annotated[tuple[str, ...], setting("metrics compared with production")] = (
        "recall@20",
        "ndcg@10",
        "mrr@10",
    )
    max_regression: Annotated[Fraction, setting("allowed relative drop vs production (0.02 = 2 %)")] = 0.02
    slice_limits: Annotated[dict[str, Fraction], setting('slice (or "*") → allowed relative drop')] = field(
        default_factory=dict
    )
    min_slice_rows: Annotated[int, setting("a slice judged on fewer evaluated rows is skipped", ge=1)] = 30
    confidence: Annotated[
        Fraction, setting("a regression must be significant at this level (0: point estimates only)")
    ] = 0.95
    min_gain: Annotated[Fraction, setting("replacing production needs a relative gain above this at `confidence`")] = (
        0.02
    )


@settings
class KubernetesConfig:
    """The training DAG's train task as a pod on a GPU node (``enabled``); everything else runs in-process.
    Read at DAG parse time from the raw YAML (see ``dags/recall_training.py``), so keep it plain data."""

    enabled: Annotated[bool, setting("run the train step as a pod on a GPU node")] = False
    image: Annotated[str, setting("the pipeline image (console script `recall`); never a moving tag")] = IMAGE
    namespace: Annotated[str, setting("Kubernetes namespace")] = "recall"
    gpus: Annotated[int, setting("GPUs per pod; more than one runs torchrun with a process per GPU", ge=0)] = 1
    nodes: Annotated[
        int, setting("pods; more than one makes the train step a PyTorchJob (Kubeflow training operator)", ge=1)
    ] = 1
    cpu: Annotated[str, setting("CPU request of the train pod")] = "4"
    memory: Annotated[str, setting("memory request of the train pod")] = "16Gi"
    node_selector: Annotated[dict[str, str], setting("node labels the train pod needs")] = field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    tolerations: Annotated[list[dict[str, str]], setting("taints the train pod tolerates")] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    volume_claim: Annotated[str, setting("a ReadWriteMany PVC shared by the Airflow workers and the pod")] = (
        "recall-runs"
    )
    mount_path: Annotated[str, setting("where workers and pod mount it: the run directory must lie below")] = (
        "/opt/recall/runs"
    )
    service_account: Annotated[str | None, setting("service account of the train pod")] = None
    site_config_map: Annotated[
        str | None, setting("the ConfigMap with the site config, mounted into Kubeflow's steps")
    ] = None
    startup_timeout_s: Annotated[int, setting("seconds a pod may take to start", ge=1)] = 600
    job_timeout_s: Annotated[int, setting("a multi-node job unfinished by then fails the task", ge=1)] = 86_400


@settings
class TrackingConfig:
    enabled: Annotated[bool, setting("log every training run to MLflow")] = True
    uri: Annotated[str | None, setting(
        "MLflow tracking URI (null: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")] = None
    experiment: Annotated[str, setting("MLflow experiment the runs go to")] = "deep-recall"


@settings
class RunConfig:
    data: DataConfig = DataConfig()
    model: Annotated[str, setting("the model (recall models list)")] = "sasrec"
    model_params: Annotated[
        dict[str, Any], setting("the model's constructor arguments (recall models list --architectures)")
    ] = field(default_factory=dict)
    train: TrainConfig = TrainConfig()
    ks: Annotated[tuple[Annotated[int, Field(ge=1)], ...], setting("cut-offs K of the metrics")] = (10, 20, 50, 100)
    exclude_seen: Annotated[bool, setting("metrics mask the items a user has already seen")] = True
    out_dir: Annotated[str, setting("the run directory")] = "runs/latest"
    features: FeatureConfig = FeatureConfig()
    validation: ValidationConfig = ValidationConfig()
    index: IndexConfig = IndexConfig()
    gate: GateConfig = GateConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: Annotated[str | None, setting("the model registry root (null: $RECALL_REGISTRY or runs/registry)")] = None
    routing: Annotated[str, setting("the routing file of what is served; its default is production for the gate")] = (
        "serving/routing.yaml"
    )
    bentoml_store: Annotated[bool, setting("the register step also saves each version to the BentoML model store")] = (
        True
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from models.registry import get_model_class  # the models' code, only when a run config is built

        get_model_class(v)  # fails early with the list of models
        return v

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
