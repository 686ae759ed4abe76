"""Helpers shared by the recall DAGs. Parse-time code here stays light (os, pathlib, yaml): the heavy
libraries are imported inside tasks, through the components."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum

ROOT = Path(os.environ.get("RECALL_HOME", Path(__file__).resolve().parents[1]))
DEFAULT_CONFIG = os.environ.get("RECALL_CONFIG", "configs/demo.yaml")
FEATURES_ASSET_URI = os.environ.get("RECALL_FEATURES_ASSET", "file:///recall/features")


def dag_defaults(retries: int, retry_delay_min: int) -> dict[str, Any]:
    """What every recall DAG shares: no automatic catch-up, one run at a time, retries for its tasks. The
    start date lies before any dataset's events, so a replay (`airflow dags test <dag> 1997-10-01`, a
    backfill) of old data runs its tasks; with catch-up off the scheduler itself only runs the latest."""
    return {
        "start_date": pendulum.datetime(1990, 1, 1, tz="UTC"),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {"retries": retries, "retry_delay": timedelta(minutes=retry_delay_min)},
    }


def raw_config(path: str = DEFAULT_CONFIG) -> dict[str, Any]:
    """The YAML as written with the site's settings over it (no validation, no torch import): enough for
    parse-time decisions."""
    import yaml

    from components.site import merge, site_tree

    p = Path(path) if Path(path).is_absolute() else ROOT / path
    return merge((yaml.safe_load(p.read_text()) or {}) if p.exists() else {}, site_tree())


def kubernetes_settings(path: str = DEFAULT_CONFIG):
    """The config's ``kubernetes`` section (``RECALL_KUBERNETES=1|0`` switches the mode over the file)."""
    from components.k8s import from_yaml_section

    return from_yaml_section(raw_config(path).get("kubernetes"))


def overrides(params: dict[str, Any]) -> list[str]:
    out = list(params.get("overrides") or [])
    if params.get("model"):
        out.append(f"model={params['model']}")
    return out


@contextmanager
def project(params: dict[str, Any]):
    """Runs a task in the project root with the run config of ``params`` (config + model + overrides).
    Errors that a retry cannot fix fail the task at once: bad data or settings (``ValueError``, which
    includes a failed validation), missing inputs (``FileNotFoundError``) and a failed gate. Anything
    else (a lost connection, a killed worker) is retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from components.config import load_config
    from components.gate import GateFailed

    old = Path.cwd()
    os.chdir(ROOT)
    try:
        try:
            cfg = load_config(params["config"], overrides(params))
        except (ValueError, FileNotFoundError) as e:
            raise AirflowFailException(f"bad run config: {e}") from e
        try:
            yield cfg
        except (ValueError, FileNotFoundError, GateFailed) as e:
            raise AirflowFailException(f"{type(e).__name__}: {e}") from e
    finally:
        os.chdir(old)
