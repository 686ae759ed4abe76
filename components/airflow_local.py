"""Run the project's DAGs with the real Airflow on this machine, no scheduler needed: a SQLite metadata
database under the project's working directory (set up on first use) and ``airflow dags test``.

Used by ``make demo``, ``recall pipeline airflow``, the DAG tests and ``benchmarks/pipeline.py``. It only
drives the ``airflow`` command in a subprocess; nothing here imports Airflow.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def airflow_bin() -> str:
    """The ``airflow`` next to this interpreter (the project's venv), else the one on PATH."""
    here = Path(sys.executable).parent / "airflow"
    return str(here) if here.exists() else "airflow"


def environment(home: str | Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    home = Path(home).resolve()
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "RECALL_HOME": str(ROOT),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        **(extra or {}),
    }


def ensure_db(env: dict[str, str], timeout_s: int = 300) -> None:
    """``airflow db migrate`` once per home (a marker file records it)."""
    home = Path(env["AIRFLOW_HOME"])
    marker = home / ".recall-db-ready"
    if marker.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True, timeout=timeout_s)
    if res.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    marker.touch()


@dataclass
class DagRun:
    dag_id: str
    returncode: int
    output: str
    seconds: float
    run_id: str | None = None
    state: str | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task_id → state, duration_s, try_number

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.state == "success"


def dags_test(
    dag_id: str,
    conf: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: int = 1800,
    stream: bool = False,
    logical_date: str | None = None,
) -> DagRun:
    """``airflow dags test DAG_ID [LOGICAL_DATE] --conf JSON``; returns the run's state and each task's
    state and wall time from the metadata database. ``stream`` echoes Airflow's output while it runs;
    ``logical_date`` (e.g. ``2024-05-01``) picks the run's data interval (default: the latest one)."""
    env = env or environment(ROOT / "runs" / "airflow")
    ensure_db(env)
    cmd = [airflow_bin(), "dags", "test", dag_id, *([logical_date] if logical_date else []), "--conf",
           json.dumps(conf or {})]  # fmt: skip
    t0 = time.perf_counter()
    if stream:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
        rc, out = proc.wait(timeout=timeout_s), "".join(lines)
    else:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, out = res.returncode, res.stdout + res.stderr
    run = DagRun(dag_id, rc, out, time.perf_counter() - t0)
    _fill_from_db(run, Path(env["AIRFLOW_HOME"]) / "airflow.db")
    return run


def _fill_from_db(run: DagRun, db: Path) -> None:
    if not db.exists():
        return
    con = sqlite3.connect(db)
    try:
        row = con.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (run.dag_id,)
        ).fetchone()
        if row is None:
            return
        run.run_id, run.state = row
        for task_id, state, start, end, tries in con.execute(
            "SELECT task_id, state, start_date, end_date, try_number FROM task_instance "
            "WHERE dag_id = ? AND run_id = ?",
            (run.dag_id, run.run_id),
        ):
            run.tasks[task_id] = {"state": state, "duration_s": _seconds(start, end), "try_number": tries}
    finally:
        con.close()


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    import datetime as dt

    return round((dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds(), 2)


def asset_events(env: dict[str, str], uri: str) -> int:
    """How many times the Asset ``uri`` has been updated (asset_event rows)."""
    return len(asset_event_extras(env, uri))


def asset_event_extras(env: dict[str, str], uri: str) -> list[dict[str, Any]]:
    """The ``extra`` of every update of the Asset ``uri``, oldest first (e.g. which snapshot it published)."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = ? ORDER BY e.id", (uri,)
        ).fetchall()
        return [json.loads(r[0]) if r[0] else {} for r in rows]
    finally:
        con.close()
