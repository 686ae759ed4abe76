"""Day after day through the real Airflow: a dataset replayed period by period, each period
recall_features (its snapshot) → recall_training (pinned to it: train, evaluate against production on
the same events, gate, export, index, register) → the promotion rule → the served model measured on the
*next* period's events.

    python benchmarks/replay.py                                   # synthetic default, 8 daily periods
    python benchmarks/replay.py --dataset ml100k --periods 8 --period 7 --start 1997-12-01
    python benchmarks/replay.py --dataset ml100k -s train.epochs=20  # any setting of the run config

Promotion rule (documented in the README; the gate's ``promotion`` advice, components/gate.py): a
candidate that passes the gate — which compares it with production on its own evaluation events,
overall and per slice, blocking only a significant regression beyond the tolerance — replaces
production at once when it is better than production by more than ``gate.min_gain`` with confidence on
the gate's first regression metric (Recall@20 by default): on those events, on the ones newer than
production's data, or in the backtest, where the newest held-back version of the recipe met production
on every event since its data ended. Registering tolerates noise, replacing what is served does not
(the replay has no live traffic for an A/B test; in production `recall_ab_report` decides). The first
period's candidate has nothing to beat but popularity.

Per period: new events, new users and new items of the snapshot; the candidate's and production's test
metrics on the same split; the gate verdict; promoted or not; the served model's hit rate (HR@K, seen
items masked, every event of the next period whose user has a history) next to the previous served
model's on the same events, and next to the newest registered candidate the rule held back (what
promoting it would have given: was holding it back right?), with 95 % intervals clustered by user;
wall time. Writes
benchmarks/results/replay_<dataset>.json and an HTML report with the curves
(benchmarks/results/replay_<dataset>.html).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402

DATASETS = {
    # The synthetic default (configs/demo.yaml): users start over 180 days of 2024, events ~6 h apart.
    "synthetic": {"config": "configs/demo.yaml", "start": "2024-06-01", "period": 1.0, "overrides": []},
    "ml100k": {"config": "configs/sasrec.yaml", "start": "1997-12-01", "period": 7.0,
               "overrides": ["data.source=ml100k", "validation.rating_min=1"]},
}  # fmt: skip


def hits(tags: list[str | None], registry, tables, lo, hi, k: int) -> tuple[list, object]:
    """Per version, per event of [lo, hi) whose user has an earlier event: did it put the event's item in
    its top k (seen items masked)? None for a missing version. With the events' users (for a
    user-clustered interval). The period's rows are built once for all versions."""
    from components import compare
    from components.datasets import encode

    enc = encode(tables)
    rows = compare.fresh_rows(enc.data, lo.timestamp(), enc.user_ids, enc.item_ids, hi.timestamp())
    return [None if tag is None else compare.ServedVersion(registry.get(tag)).ranks(
        enc.data, rows, enc.item_ids, tables.users, True, k) < k for tag in tags], rows.users  # fmt: skip


def paired(a, b, users) -> tuple[float, float]:
    """Mean difference of paired 0/1 outcomes and the half-width of its 95 % interval, clustered by user
    (the gate's :func:`models.metrics.paired_difference`)."""
    from models.metrics import interval, paired_difference

    d = paired_difference(a, b, users)
    return d["diff"], d["diff"] - interval(d, 0.95)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="synthetic")
    ap.add_argument("--periods", type=int, default=8)
    ap.add_argument("--period", type=float, default=None, help="days per period (default: the dataset's)")
    ap.add_argument("--start", default=None, help="first period's logical date (default: the dataset's)")
    ap.add_argument("--k", type=int, default=20, help="HR@K on the next period's events")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="key=value settings")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()

    from components import snapshots
    from components.airflow_local import dags_test, environment
    from components.datasets import Tables
    from components.registry import Registry, atomic_write_text

    spec = DATASETS[args.dataset]
    work = Path(args.work or ROOT / "runs" / "bench" / f"replay-{args.dataset}")
    shutil.rmtree(work, ignore_errors=True)
    env = environment(work / "airflow")
    overrides = [*spec["overrides"], "train.progress=false", f"out_dir={work}", f"features.dir={work}/features",
                 f"registry={work}/registry", f"routing={work}/routing.yaml", "bentoml_store=false",
                 *args.overrides]  # fmt: skip
    conf = {"config": spec["config"], "overrides": overrides}
    registry = Registry(work / "registry")
    routing = work / "routing.yaml"
    start = dt.datetime.fromisoformat(args.start or spec["start"]).replace(tzinfo=dt.UTC)
    step = dt.timedelta(days=args.period or spec["period"])
    served: str | None = None
    previous_served: str | None = None
    held: str | None = None  # the newest registered version that was not promoted
    periods: list[dict] = []
    for t in range(args.periods + 1):  # the last period only measures what was served during it
        day = start + t * step
        t0 = time.perf_counter()
        feats = dags_test("recall_features", conf, env, 900, logical_date=day.date().isoformat())
        if not feats.ok:
            raise SystemExit(f"recall_features {day.date()} ended {feats.state}:\n{feats.output[-3000:]}")
        snap = snapshots.latest(work / "features")
        fresh = feats.tasks["ingest"]["state"] == "success"  # (skipped: nothing new in the period)
        row: dict = {"period": t, "logical_date": day.date().isoformat(), "snapshot": snap["id"],
                     "new_events": snap["new_events"] if fresh else 0}  # fmt: skip
        tables = Tables.read(snap["dir"])
        if periods:
            prev = Tables.read(periods[-1]["snapshot_dir"])
            row["new_users"] = int((~tables.users.user_id.isin(prev.users.user_id)).sum())
            row["new_items"] = int((~tables.items.item_id.isin(prev.items.item_id)).sum())
            # What was served during the period that just ended, on its events, next to the one before it.
            row["served"], row["previous_served"], row["held"] = served, previous_served, held
            (now_hits, before, other), users = hits([served, previous_served, held], registry, tables, day - step,
                                                     day, args.k)  # fmt: skip
            row["events_scored"] = 0 if now_hits is None else len(now_hits)
            row["served_hr"] = float(now_hits.mean()) if row["events_scored"] else None
            row["previous_hr"] = float(before.mean()) if before is not None and len(before) else None
            if row["previous_hr"] is not None:
                row["hr_diff"], row["hr_diff_ci95"] = paired(now_hits, before, users)
            if other is not None and len(other):
                row["held_hr"] = float(other.mean())
                row["held_diff"], row["held_diff_ci95"] = paired(other, now_hits, users)
        else:
            row["new_users"], row["new_items"] = len(tables.users), len(tables.items)
        row["snapshot_dir"] = snap["dir"]
        if t == args.periods:
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            periods.append(row)
            break
        run_name = f"p{t:02d}"
        train = dags_test("recall_training", {**conf, "run_name": run_name}, env, 1800)
        run_dir = work / "runs" / run_name
        ev = json.loads((run_dir / "evaluation.json").read_text()) if (run_dir / "evaluation.json").exists() else {}
        gate = json.loads((run_dir / "gate.json").read_text()) if (run_dir / "gate.json").exists() else {}
        row["candidate_ndcg@10"] = ev.get("test", {}).get("ndcg@10")
        row["production_ndcg@10"] = ((ev.get("production") or {}).get("test") or {}).get("ndcg@10")
        row["popularity_ndcg@10"] = ev.get("popularity_test", {}).get("ndcg@10")
        row["gate"] = ("passed" if gate.get("passed") else "failed") if gate else train.tasks["training_set"]["state"]
        row["failed_checks"] = [c["name"] for c in gate.get("checks", []) if c["status"] == "failed"]
        row["promoted"] = None
        if train.ok and (run_dir / "registered.json").exists():
            tag = json.loads((run_dir / "registered.json").read_text())["tag"]
            row["promotion"] = gate["promotion"]["why"]
            if gate["promotion"]["recommended"]:  # the promotion rule
                atomic_write_text(routing, f"default: {tag}\nexperiments: []\n")
                previous_served, served, row["promoted"], held = served, tag, tag, None
            else:
                held = tag
        elif not train.ok and not gate:
            raise SystemExit(f"recall_training {run_name} ended {train.state}:\n{train.output[-3000:]}")
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        periods.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "snapshot_dir"}, default=str), flush=True)

    head = ("| period | date | new events | new users | new items | candidate ndcg@10 | production ndcg@10 "
            f"| gate | promoted | served HR@{args.k} (events) | previous served HR@{args.k} | difference (95 % CI) "
            f"| held-back candidate HR@{args.k}: minus served (95 % CI) | wall s |")  # fmt: skip
    lines = [head, "|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]

    def f(x, fmt=".4f"):
        return "–" if x is None else format(x, fmt)

    for r in periods:
        lines.append(
            f"| {r['period']} | {r['logical_date']} | {r['new_events']:,} | {r.get('new_users', 0):,} | "
            f"{r.get('new_items', 0):,} | {f(r.get('candidate_ndcg@10'))} | {f(r.get('production_ndcg@10'))} | "
            f"{r.get('gate', '–')} | {r.get('promoted') or '–'} | "
            f"{f(r.get('served_hr'))} ({r.get('events_scored', 0):,}) "
            f"| {f(r.get('previous_hr'))} | {_diff(r)} | {_held(r)} | {r['wall_s']} |"
        )
    from components.config import load_config

    tolerance = load_config(spec["config"], overrides).gate.max_regression
    compared = [r for r in periods if r.get("hr_diff") is not None]
    worse = [r["period"] for r in compared if r["served_hr"] < r["previous_hr"] * (1 - tolerance)]
    significant = [r["period"] for r in compared if r["hr_diff"] + r["hr_diff_ci95"] < 0]
    held = [r for r in periods if r.get("held_diff") is not None]
    missed = [r["period"] for r in held if r["held_diff"] - r["held_diff_ci95"] > 0]
    verdict = (f"served model below the previous served model by more than {tolerance:.0%} in periods {worse or 'none'}"
               f" of {len(compared)} compared; significantly below (95 % CI of the paired difference under 0) in "
               f"periods {significant or 'none'}; a held-back candidate significantly better than the served model "
               f"in periods {missed or 'none'} of {len(held)}")  # fmt: skip
    lines += ["", verdict]
    out = ROOT / "benchmarks" / "results" / f"replay_{args.dataset}.json"
    _report(periods, args, out.with_suffix(".html"), verdict)
    for r in periods:
        r.pop("snapshot_dir", None)
    write_result(out, "\n".join(lines), dataset=args.dataset, k=args.k, overrides=overrides, periods=periods,
                 tolerance=tolerance, worse_than_tolerance=worse, significantly_worse=significant,
                 held_back_significantly_better=missed)  # fmt: skip


def _diff(r: dict) -> str:
    if r.get("hr_diff") is None:
        return "–"
    return f"{r['hr_diff']:+.4f} (±{r['hr_diff_ci95']:.4f})"


def _held(r: dict) -> str:
    if r.get("held_diff") is None:
        return "–"
    return f"{r['held'].split(':')[-1]} {r['held_hr']:.4f}: {r['held_diff']:+.4f} (±{r['held_diff_ci95']:.4f})"


def _report(periods: list[dict], args, path: Path, verdict: str) -> None:
    from components.charts import CSS, line_chart

    def series(key: str) -> list[tuple[int, float]]:
        return [(r["period"], r[key]) for r in periods if r.get(key) is not None]

    hr = {"served": series("served_hr"), "previous served": series("previous_hr"),
          "held-back candidate": series("held_hr")}  # fmt: skip
    nd = {name: series(f"{name}_ndcg@10") for name in ("candidate", "production", "popularity")}
    path.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>Replay: {args.dataset}</title><style>{CSS}</style>'
        f"</head><body><h1>Replay of {args.dataset}: {args.periods} periods</h1><p>{verdict}.</p>"
        f"<figure>{line_chart(hr, f'HR@{args.k} on the period just served', 'period')}</figure>"
        f"<figure>{line_chart(nd, 'NDCG@10 on each candidate test split', 'period')}</figure></body></html>"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
