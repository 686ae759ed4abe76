"""
### recall_features

Daily, for its data interval: the source's events of the interval → the partitioned event store, and
the tables as of the interval's end → a new snapshot (`ingest`) → Great Expectations suites (`validate`)
→ Feast registry (`apply`) → online store (`materialize`, incremental) → the snapshot is **published**
(immutable from then on) and the **features Asset** is updated with the snapshot's id in its extra,
which schedules `recall_training` on exactly that snapshot. A source holding the whole history (the
synthetic world, ML-100K) is replayed interval by interval.

An interval with nothing new publishes nothing: `ingest` says so and the other tasks are skipped, so
the Asset is not updated and nothing is retrained. A failed expectation fails `validate` at once (no
retries: the data will not change by waiting) with each failed expectation named; apply and
materialize do not run, nothing is published and the Asset is not updated.

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
    def step(
        previous: dict | None,
        name: str,
        params: dict | None = None,
        data_interval_start=None,
        data_interval_end=None,
        outlet_events=None,
    ) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from components import pipeline
        from components.snapshots import interval

        with project(params) as cfg:
            if previous is None:
                out = pipeline.features(cfg, (name,), interval(data_interval_start, data_interval_end))
            else:
                out = pipeline.features(cfg, (name,), snapshot=previous["snapshot"])
        if out["status"] != "new":
            raise AirflowSkipException(out["why"])  # nothing new: no snapshot, no Asset event, no training
        print(f"{name}: {out['seconds'][name]:.1f}s, snapshot {out['snapshot']} of {out['interval']}, "
              f"{out['new_events']:,} new events {out.get('rows', {})}")  # fmt: skip
        if name == "materialize":  # the Asset event says which snapshot recall_training must pin
            outlet_events[FEATURES].extra = {"snapshot": out["snapshot"], "interval": out["interval"]}
        return {"dir": out["dir"], "snapshot": out["snapshot"], "seconds": out["seconds"][name]}

    previous = None
    for name in STEPS:  # the last one publishes the snapshot and updates the Asset that schedules recall_training
        outlets = [FEATURES] if name == "materialize" else []
        previous = step.override(task_id=name, outlets=outlets)(previous, name)


recall_features()
