"""The deployment's settings: ``$RECALL_SITE_CONFIG`` names a YAML file in the run config's schema that is
layered over every run config file (and under the command line's ``key=value`` overrides). A cluster keeps
there what every run there shares and no model config should know: absolute paths on the shared volume,
the online store, whether and where the train task runs as a pod (``infra/k8s/overlays/*/site.yaml``).

Plain YAML and dicts, no heavy imports: the DAGs read it at parse time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SITE_ENV = "RECALL_SITE_CONFIG"


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: sections merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def site_tree(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The site file's settings ({} when ``$RECALL_SITE_CONFIG`` is unset); a named file that is missing
    or not a mapping is an error, not a silent fallback to local paths."""
    import yaml

    path = (env if env is not None else os.environ).get(SITE_ENV)
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{SITE_ENV}={path}: no such file")
    tree = yaml.safe_load(p.read_text()) or {}
    if not isinstance(tree, dict):
        raise ValueError(f"{SITE_ENV}={path}: expected a mapping of settings, got {type(tree).__name__}")
    return tree
