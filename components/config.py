"""Run configuration: frozen dataclasses with defaults in code, overridden by YAML and ``key=value``."""

from __future__ import annotations

import dataclasses
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from models.registry import MODELS

from .settings import DataConfig, RunConfig
from .site import merge, site_tree


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
