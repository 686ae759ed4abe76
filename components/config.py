"""Loading the run configuration (:mod:`components.settings`): defaults in code, overridden by YAML, the site's
settings and ``key=value`` — validated at load, with one message per bad setting that names its key."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from .settings import DataConfig, RunConfig
from .site import merge, site_tree


class ConfigError(ValueError):
    """A setting that does not fit: the message names the key, the bad value and what is allowed."""


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """The setting names of the section at ``loc`` (a path of field names from the run config)."""
    node: Any = RunConfig
    for name in loc:
        default = getattr(node, name, None) if isinstance(name, str) else None
        if not dataclasses.is_dataclass(default):
            return []
        node = default
    return [f.name for f in dataclasses.fields(node)]


def explain(e: ValidationError) -> str:
    """One line per bad setting: ``train.epochs: Input should be a valid integer (got 'abc')``."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            known = _section_fields(loc[:-1])
            near = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            lines.append(f"unknown setting {key!r}; {hint}the settings here are: {', '.join(known)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{key}: {msg}{shown}" if key else f"{msg}{shown}")
    return "; ".join(lines)


def config_from_dict(tree: dict[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` from a nested dict (``RunConfig.to_dict()`` output, e.g. a checkpoint's
    ``run``, or a YAML tree); sections left out keep their defaults."""
    if not isinstance(tree, dict):
        raise ConfigError(f"a run config is a mapping of sections, got {type(tree).__name__}")
    try:
        return RunConfig(**tree)
    except ValidationError as e:
        raise ConfigError(explain(e)) from None


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def _yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file ← the site's settings (``$RECALL_SITE_CONFIG``, components.site) ← ``key=value``
    overrides (dotted keys, YAML-parsed values). Raises :class:`ConfigError` (a ``ValueError``) naming
    each bad setting, ``FileNotFoundError`` for a missing file.

    Example: ``load_config("configs/sasrec.yaml", ["train.epochs=5", "data.source=ml100k"])``.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        tree = _yaml(p.read_text(), f"config file {p}") or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must be a mapping of sections (data:, model:, train: …)")
    tree = merge(tree, site_tree())
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.epochs=5")
        _set(tree, key.strip(), _yaml(raw, f"the value of override {item!r}"))
    return config_from_dict(tree)


def with_out_dir(cfg: RunConfig, out_dir: str) -> RunConfig:
    return replace(cfg, out_dir=out_dir)


def schema() -> dict[str, Any]:
    """The JSON schema of a run config: every setting with its type, range, default and description."""
    return TypeAdapter(RunConfig).json_schema(mode="validation")


def resolved(cfg: RunConfig) -> str:
    """The run config as YAML, every setting resolved (what `recall config show` prints)."""
    plain = json.loads(json.dumps(cfg.to_dict(), default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


__all__ = ["ConfigError", "DataConfig", "RunConfig", "config_from_dict", "load_config", "schema", "with_out_dir"]
