"""
### recall_item_refresh

Runs when `recall_features` publishes a feature snapshot (the same Asset that schedules
`recall_training`): items of the snapshot's catalogue that a served version has never seen are placed
in its index by its own item tower — for models whose item tower reads item attributes (DSSM,
FaceBookDSSM, YoutubeSBC) — as a new registered version (`refreshed_from` its parent), which replaces
the parent in the routing; the service's hot reload serves it without a restart. Versions of ID-only
models are listed with the number of new items that wait for their next training. A version that
cannot be refreshed fails the task after the others are done; a retry registers nothing twice and swaps
nothing twice (`components/refresh.py`).

Params: `config`, `overrides` (as `recall_features`: `features.dir`, `registry`, `routing`), `audit_log`.
"""

from __future__ import annotations

import os

from airflow.sdk import Asset, Param, dag, task
from recall_common import DEFAULT_CONFIG, FEATURES_ASSET_URI, dag_defaults, project

FEATURES = Asset(FEATURES_ASSET_URI, group="recall")


@dag(
    dag_id="recall_item_refresh",
    schedule=[FEATURES],
    tags=["recall", "serving"],
    doc_md=__doc__,
    params={
        "config": Param(DEFAULT_CONFIG, type="string", description="run config (YAML), relative to the project"),
        "overrides": Param([], type="array", items={"type": "string"}, description="key=value settings"),
        "audit_log": Param(os.environ.get("RECALL_AUDIT_LOG", "runs/serving/audit.jsonl"), type="string"),
    },
    **dag_defaults(retries=2, retry_delay_min=5),
)
def recall_item_refresh():
    @task
    def refresh(params: dict | None = None) -> list[dict]:
        from components.refresh import refresh_served
        from components.registry import Registry

        with project(params) as cfg:
            records = refresh_served(cfg.routing, Registry(cfg.registry), cfg.features.dir, params["audit_log"])
        for r in records:
            print(f"{r['parent']}: {r['status']} → {r['version']}, {r['added']} new, {len(r['removed'])} withdrawn"
                  + (f" ({r['why']})" if "why" in r else ""))  # fmt: skip
        failed = [f"{r['parent']}: {r['why']}" for r in records if r["status"] == "failed"]
        if failed:  # the others are refreshed and swapped; a retry redoes only what is left
            raise RuntimeError("item refresh failed for " + "; ".join(failed))
        return [{k: r[k] for k in ("parent", "version", "status", "added")} for r in records]

    refresh()


recall_item_refresh()
