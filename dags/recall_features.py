"""
### recall_features

Daily: raw data → canonical tables (`ingest`) → Great Expectations suites (`validate`) → Feast
registry (`apply`) → online store (`materialize`, incremental after the first run). The last task
updates the **features Asset**, which schedules `recall_training`: training only ever starts on data
that passed validation. A failed expectation fails `validate` at once (no retries: the data will not
change by waiting) with each failed expectation named; apply and materialize do not run and the Asset
is not updated.

Params: `config` (a run config under `configs/`, default `$RECALL_CONFIG` or `configs/demo.yaml`),
`overrides` (`key=value` settings, e.g. `data.source=ml100k`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task
from recall_common import DEFAULT_CONFIG, FEATURES_ASSET_URI, project

FEATURES = Asset(FEATURES_ASSET_URI, group="recall")
PARAMS = {
    "config": Param(DEFAULT_CONFIG, type="string", description="run config (YAML), relative to the project"),
    "overrides": Param([], type="array", items={"type": "string"}, description="key=value settings"),
}


@dag(
    dag_id="recall_features",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["recall", "features"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params=PARAMS,
)
def recall_features():
    def step(name: str, params: dict) -> dict:
        from components import pipeline

        with project(params) as cfg:
            out = pipeline.features(cfg, (name,))
        print(f"{name}: {out['seconds'][name]:.1f}s {out.get('rows', {})}")
        return {"dir": out["dir"], "seconds": out["seconds"][name], "rows": out.get("rows", {})}

    @task
    def ingest(params: dict | None = None) -> dict:
        return step("ingest", params)

    @task
    def validate(ingested: dict, params: dict | None = None) -> dict:
        return step("validate", params)

    @task
    def apply(validated: dict, params: dict | None = None) -> dict:
        return step("apply", params)

    @task(outlets=[FEATURES])
    def materialize(applied: dict, params: dict | None = None) -> dict:
        return step("materialize", params)

    materialize(apply(validate(ingest())))


recall_features()
