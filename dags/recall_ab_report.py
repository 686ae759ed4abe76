"""
### recall_ab_report

Daily A/B report for one experiment: joins the service's response log with the feedback drop,
computes per-variant hit rate / CTR@K with confidence intervals, the z-test and the always-valid test,
and the guardrails (`components/ab.py`), writing JSON + HTML. With `auto_promote` on it then promotes the
variant under the same rules as `recall promote` (significant win, no guardrail breach); otherwise, or
when the rules say hold, the routing is left alone.

Params (defaults from the environment): `experiment`, `response_log`, `feedback`, `out_dir`, `routing`,
`audit_log`, `variant`, `auto_promote`, `k`, `window_hours`.
"""

from __future__ import annotations

import os

from airflow.sdk import Param, dag, task
from recall_common import dag_defaults


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dag(
    dag_id="recall_ab_report",
    schedule="@daily",
    tags=["recall", "ab"],
    doc_md=__doc__,
    **dag_defaults(retries=2, retry_delay_min=5),
    params={
        "experiment": Param(_env("RECALL_EXPERIMENT", ""), type="string", description="experiment name"),
        "response_log": Param(_env("RECALL_RESPONSE_LOG", "runs/serving/responses.jsonl"), type="string"),
        "feedback": Param(_env("RECALL_FEEDBACK", "runs/feedback"), type="string"),
        "out_dir": Param(_env("RECALL_AB_REPORTS", "runs/ab"), type="string"),
        "routing": Param(_env("RECALL_ROUTING", "serving/routing.yaml"), type="string"),
        "audit_log": Param(_env("RECALL_AUDIT_LOG", "runs/serving/audit.jsonl"), type="string"),
        "variant": Param("treatment", type="string"),
        "auto_promote": Param(False, type="boolean"),
        "k": Param(10, type="integer", minimum=1),
        "window_hours": Param(24.0, type="number", exclusiveMinimum=0),
    },
)
def recall_ab_report():
    @task
    def report(params: dict | None = None) -> dict:
        from components.ab import ReportConfig, decision, run_report

        if not params["experiment"]:
            raise ValueError("param 'experiment' is empty: name the experiment to report on")
        cfg = ReportConfig(params["experiment"], k=params["k"], window_s=params["window_hours"] * 3600)
        rep = run_report(params["response_log"], params["feedback"], cfg, params["out_dir"])
        ok, why = decision(rep, params["variant"])
        print(
            f"{params['experiment']}/{params['variant']}: {'promote' if ok else 'hold'} — {why}; report {rep['html']}"
        )
        return {"json": rep["json"], "html": rep["html"], "promote": ok, "why": why}

    @task
    def maybe_promote(result: dict, params: dict | None = None) -> str:
        import json

        from components.promote import PromotionRefused, promote

        if not params["auto_promote"]:
            return f"auto_promote is off; decision was: {result['why']}"
        if not result["promote"]:
            return f"held: {result['why']}"
        rep = json.loads(open(result["json"]).read()) | {"json": result["json"]}
        try:
            new = promote(params["routing"], params["experiment"], params["variant"], rep, params["audit_log"],
                          reason="recall_ab_report auto-promotion")  # fmt: skip
        except PromotionRefused as e:  # e.g. the experiment was ended by hand since the report
            return f"not promoted: {e}"
        return f"promoted: default is now {new.default}"

    maybe_promote(report())


recall_ab_report()
