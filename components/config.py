"""Run configuration: frozen dataclasses with defaults in code, overridden by YAML and ``key=value``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from models.registry import MODELS, get_model_class
from models.trainer import TrainConfig

from .datasets import SyntheticConfig
from .gate import GateConfig
from .index import IndexConfig
from .k8s import KubernetesConfig
from .site import merge, site_tree
from .validate import ValidationConfig

SOURCES = ("synthetic", "ml100k", "parquet", "file")


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


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Builds dataclass ``cls`` from a dict, recursing into nested dataclasses; unknown keys fail."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown setting {where}{key!r}; choose one of: {', '.join(known)}")
        default = known[key].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), {**dataclasses.asdict(default), **value}, f"{where}{key}.")
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(tree: dict[str, Any]) -> RunConfig:
    """Rebuilds a :class:`RunConfig` from ``RunConfig.to_dict()`` output (e.g. a checkpoint's ``run``)."""
    return _build(RunConfig, tree, "")


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file ← the site's settings (``$RECALL_SITE_CONFIG``, components.site) ← ``key=value``
    overrides (dotted keys, YAML-parsed values).

    Example: ``load_config("configs/sasrec.yaml", ["train.epochs=5", "data.source=ml100k"])``.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        tree = yaml.safe_load(p.read_text()) or {}
    tree = merge(tree, site_tree())
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value, e.g. train.epochs=5")
        _set(tree, key.strip(), yaml.safe_load(raw))
    return _build(RunConfig, tree, "")


def with_out_dir(cfg: RunConfig, out_dir: str) -> RunConfig:
    return replace(cfg, out_dir=out_dir)


__all__ = ["DataConfig", "RunConfig", "load_config", "MODELS", "with_out_dir"]
