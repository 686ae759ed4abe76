"""Experiment tracking with MLflow: every training run, compared across days, models and settings in
``mlflow ui``. The project's registry stays the source of truth for what is served; MLflow is where runs
are compared.

One MLflow run per run directory, filled in by the steps as they finish — whether they run in one
process (``recall train``, ``recall pipeline run``) or as separate Airflow tasks or Kubeflow steps:

- ``train``: the resolved settings as params, the dataset fingerprint (and snapshot) as tags, the loss
  and every validation metric per epoch, the test metrics beside popularity's, speed;
- ``evaluate``: the evaluation report (``report.html``) as an artefact;
- ``gate``: the verdict (tag ``gate``, the report again with the gate's section, ``gate.json``);
- ``register``: the registered version's tag (and the version records the run id).

The run's id and store are kept in ``tracking.json`` in the run directory with the steps already logged,
so a retried or repeated step logs nothing twice and a step in another pod logs into the same run. The
store is ``tracking.uri`` — by default ``$MLFLOW_TRACKING_URI`` when set, else a SQLite file
``runs/mlflow.db`` (artefacts beside it in ``runs/mlartifacts``); a tracking server's URL works the same.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from .registry import atomic_write_json
from .settings import RunConfig, TrackingConfig

logger = logging.getLogger(__name__)
STATE = "tracking.json"
DEFAULT_STORE = Path("runs/mlflow.db")
MAX_BATCH = 100  # params (and metrics, tags) per MLflow log_batch call


def store_uri(cfg: TrackingConfig) -> str:
    """Where runs go: the setting, else ``$MLFLOW_TRACKING_URI``, else ``runs/mlflow.db`` (absolute)."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.resolve()}"


def _artifact_root(uri: str) -> str | None:
    """A SQLite store keeps its artefacts in ``mlartifacts`` beside the database file (MLflow's own default
    is ``./mlruns`` in whatever directory the process happens to run in)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def key(name: str) -> str:
    """An MLflow-safe key: MLflow allows letters, digits, ``_ - . / :`` and spaces, so ``ndcg@10`` →
    ``ndcg_at_10``, ``gate.slice_limits.*`` → ``gate.slice_limits._``."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.001}}`` → ``{"train.lr": 0.001}``; lists and tuples stay whole."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out |= flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri))
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def record(
    cfg: RunConfig,
    run_dir: str | Path,
    stage: str,
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    per_step: list[tuple[int, dict[str, float]]] | None = None,
    tags: dict[str, str] | None = None,
    files: tuple[str | Path, ...] = (),
) -> str | None:
    """Logs one step's results into the run directory's MLflow run (created by the first step that logs);
    returns the run id, or None when tracking is off. A step already logged for this run directory is
    not logged again. A tracking store that cannot be reached is an error, not a silent gap."""
    if not cfg.tracking.enabled:
        return None
    from mlflow.entities import Metric, Param, RunTag

    run_dir = Path(run_dir)
    state_path = run_dir / STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if stage in state.get("stages", []):
        return state["run_id"]
    uri = state.get("uri") or store_uri(cfg.tracking)  # a later step (another pod) finds the run where it is
    client = _client(uri)
    run_id = state.get("run_id")
    if run_id is None:
        exp = _experiment(client, cfg.tracking.experiment, uri)
        run = client.create_run(exp, run_name=run_dir.resolve().name, tags={"run_dir": str(run_dir.resolve()),
                                                                             "model": cfg.model})  # fmt: skip
        run_id = run.info.run_id
        state = {"run_id": run_id, "uri": uri, "stages": []}
        atomic_write_json(state_path, state)  # before logging: a retry continues this run, never starts another
    now = int(time.time() * 1000)
    ms = [Metric(key(k), float(v), now, 0) for k, v in (metrics or {}).items() if v == v]
    ms += [Metric(key(k), float(v), now, step) for step, row in per_step or [] for k, v in row.items() if v == v]
    ps = [Param(key(k), str(v)[:6000]) for k, v in (params or {}).items()]
    ts = [RunTag(key(k), str(v)) for k, v in (tags or {}).items()]
    for i in range(0, max(len(ms), len(ps), len(ts)), MAX_BATCH):
        client.log_batch(
            run_id, metrics=ms[i : i + MAX_BATCH], params=ps[i : i + MAX_BATCH], tags=ts[i : i + MAX_BATCH]
        )
    for f in files:
        if Path(f).exists():
            client.log_artifact(run_id, str(f))
    client.set_terminated(run_id, "FINISHED")
    state["stages"] = [*state["stages"], stage]
    atomic_write_json(state_path, state)
    logger.info("tracked %s of %s in MLflow run %s (%s)", stage, run_dir, run_id, uri)
    return run_id


def tracked_run(run_dir: str | Path) -> str | None:
    """The MLflow run of a run directory (None: not tracked)."""
    p = Path(run_dir) / STATE
    return json.loads(p.read_text())["run_id"] if p.exists() else None
