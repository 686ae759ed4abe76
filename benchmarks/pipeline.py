"""Wall time of every task of the training loop through the real Airflow (`airflow dags test`, SQLite
metadata DB) on MovieLens-100K: recall_features, then recall_training with the chosen model.

    python benchmarks/pipeline.py                   # SASRec (configs/sasrec.yaml)
    python benchmarks/pipeline.py --model gru4rec   # any model with a configs/<model>.yaml

Task times come from Airflow's own task_instance records; "DAG" is the `airflow dags test` process
wall time (includes Airflow's start-up and DAG parsing). Target: recall_training under 5 minutes.
Writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from components.airflow_local import dags_test, environment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench" / "pipeline"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline.json"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    env = environment(work / "airflow")
    overrides = ["data.source=ml100k", "train.progress=false", f"out_dir={work}", f"features.dir={work}/features",
                 f"registry={work}/registry", f"routing={work}/routing.yaml", "bentoml_store=false"]  # fmt: skip
    conf = {"config": f"configs/{args.model}.yaml", "overrides": overrides}
    runs = {}
    for dag_id, extra in (("recall_features", {}), ("recall_training", {"run_name": "bench"})):
        print(f"airflow dags test {dag_id} …", flush=True)
        run = dags_test(dag_id, {**conf, **extra}, env, timeout_s=1800)
        if not run.ok:
            print(run.output[-4000:])
            raise SystemExit(f"{dag_id} ended {run.state}")
        runs[dag_id] = run
    lines = ["| DAG | task | seconds |", "|---|---|---:|"]
    for dag_id, run in runs.items():
        for task, t in run.tasks.items():
            lines.append(f"| {dag_id} | {task} | {t['duration_s']:.1f} |")
        total = sum(t["duration_s"] for t in run.tasks.values())
        lines.append(f"| {dag_id} | **tasks total** | **{total:.1f}** |")
        lines.append(f"| {dag_id} | `airflow dags test` wall | {run.seconds:.1f} |")
    run_dir = work / "runs" / "bench"
    gate = json.loads((run_dir / "gate.json").read_text())
    ev = json.loads((run_dir / "evaluation.json").read_text())
    metrics = {k: ev["test"][k] for k in ("recall@10", "ndcg@10", "recall@20", "mrr@10")}
    lines.append("")
    lines.append(f"{args.model}: test ndcg@10 {metrics['ndcg@10']:.4f}, recall@20 {metrics['recall@20']:.4f}; "
                 f"gate {'passed' if gate['passed'] else 'failed'}")  # fmt: skip
    write_result(
        args.out,
        "\n".join(lines),
        model=args.model,
        dataset="ml-100k",
        dags={d: {"seconds": r.seconds, "state": r.state, "tasks": r.tasks} for d, r in runs.items()},
        test_metrics=metrics,
        gate_passed=gate["passed"],
    )


if __name__ == "__main__":
    main()
