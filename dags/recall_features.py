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

from airflow.sdk import Asset, Param, dag, task
from recall_common import DEFAULT_CONFIG, FEATURES_ASSET_URI, dag_defaults, project

FEATURES = Asset(FEATURES_ASSET_URI, group="recall")
STEPS = ("ingest", "validate", "apply", "materialize")  # components.pipeline.FEATURE_STEPS (not imported: torch)
PARAMS = {
    "config": Param(DEFAULT_CONFIG, type="string", description="run config (YAML), relative to the project"),
    "overrides": Param([], type="array", items={"type": "string"}, description="key=value settings"),
}


@dag(
    dag_id="recall_features",
    schedule="@daily",
    tags=["recall", "features"],
    doc_md=__doc__,
    params=PARAMS,
    **dag_defaults(retries=2, retry_delay_min=5),
)
def recall_features():
    @task
    def step(previous: dict | None, name: str, params: dict | None = None) -> dict:
        from components import pipeline

        with project(params) as cfg:
            out = pipeline.features(cfg, (name,))
        print(f"{name}: {out['seconds'][name]:.1f}s {out.get('rows', {})}")
        return {"dir": out["dir"], "seconds": out["seconds"][name], "rows": out.get("rows", {})}

    previous = None
    for name in STEPS:  # the last one updates the Asset that schedules recall_training
        outlets = [FEATURES] if name == "materialize" else []
        previous = step.override(task_id=name, outlets=outlets)(previous, name)


recall_features()
