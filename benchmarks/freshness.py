"""Fresh serving state: how soon a pushed click changes a user's next answer, and what item refresh costs.

Setup (once, cached under --work): a synthetic world (--users, --items, --interactions) → features
(ingest, validate, apply, materialize) → DSSM trained one epoch (its item tower reads genres and decade,
so it can place new items) → registered with a flat index.

1. Pushes, over HTTP against a real `bentoml serve` (two workers, SQLite online store): per round a
   user's top item is POSTed to `/events` as a click, then `/recall` is asked (a new connection each
   time, so either worker answers) until the item is gone. Reported: the POST's latency and the time
   from the click to the first answer without it (median and p95 over --rounds); then, in process,
   what one push of 1, 100 and 1000 clicks costs (Feast's push API reads its registry per call, so
   batching clicks pays).
2. Item refresh: --new items (existing items' attributes under new ids) through the version's item
   tower into a new registered version, for each index kind: wall time (median of --repeats), which
   is one item-tower pass over the catalogue and one index build.

    python benchmarks/freshness.py
    python benchmarks/freshness.py --items 20000 --rounds 20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.serving import server_env  # noqa: E402
from serving.process import running_service  # noqa: E402

INGEST_TOKEN = "bench"


def setup(work: Path, users: int, items: int, interactions: int) -> dict:
    from components.config import load_config
    from components.features import run_pipeline
    from components.register import register_run
    from components.registry import Registry
    from components.train import run

    marker = work / "setup.json"
    if marker.exists():
        return json.loads(marker.read_text())
    settings = [
        f"data.synthetic.n_users={users}",
        f"data.synthetic.n_items={items}",
        f"data.synthetic.n_interactions={interactions}",
        "data.synthetic.n_clusters=50",
        "model=dssm",
        "train.epochs=1",
        "train.max_len=50",
        "train.progress=false",
        f"out_dir={work / 'run'}",
        f"features.dir={work / 'features'}",
    ]
    cfg = load_config(None, settings)
    t0 = time.perf_counter()
    published = run_pipeline(cfg)["published"]
    run(cfg)
    mv = register_run(work / "run", Registry(work / "registry"), to_bentoml=False)
    (work / "routing.yaml").write_text(f"default: {mv.tag}\nexperiments: []\n")
    known = sorted(pd.read_parquet(Path(published["dir"]) / "user_behaviour.parquet").user_id.unique().tolist())
    info = {"tag": mv.tag, "users": [int(u) for u in known], "setup_s": time.perf_counter() - t0}
    marker.write_text(json.dumps(info))
    return info


def pushes(work: Path, users: list[int], rounds: int) -> dict:
    env = server_env(work) | {"RECALL_INGEST_TOKEN": INGEST_TOKEN, "RECALL_WORKERS": "2"}
    post_ms, fresh_ms, asks = [], [], []
    rng = np.random.default_rng(0)
    auth = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    with running_service(env, work / "serve.log") as url:

        def top(user: int) -> list[str]:
            with httpx.Client() as c:  # a new connection: either worker may answer
                r = c.post(f"{url}/recall", json={"user_id": str(user), "k": 10}, timeout=10)
                return [x["item_id"] for x in r.json()["items"]]

        for user in rng.choice(users, rounds, replace=False).tolist():
            clicked = top(user)[0]
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/events", json={"events": [{"user_id": str(user), "item_id": clicked}]},
                           headers=auth, timeout=10)  # fmt: skip
            post_ms.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            n = 1
            while clicked in top(user):
                n += 1
                if n > 100:
                    raise RuntimeError(f"user {user}: the clicked item {clicked} is still served after 100 asks")
            fresh_ms.append((time.perf_counter() - t0) * 1000)
            asks.append(n)

    def q(xs, p):
        return float(np.percentile(xs, p))

    return {
        "rounds": rounds,
        "post_p50_ms": q(post_ms, 50),
        "post_p95_ms": q(post_ms, 95),
        "fresh_p50_ms": q(fresh_ms, 50),
        "fresh_p95_ms": q(fresh_ms, 95),
        "asks_max": max(asks),
    }


def push_batches(work: Path, users: list[int], sizes=(1, 100, 1000), repeats: int = 5) -> list[dict]:
    """In process: push_events for batches of clicks by distinct users (what one POST /events costs
    the service, without HTTP); median of ``repeats``."""
    from components.features import StoreConfig, push_events, store

    root = work / "features"
    fs = store(StoreConfig(str(root)))
    rows = []
    for n in sizes:
        times = []
        for rep in range(repeats + 1):  # the first one warms Feast's registry cache up
            who = users[rep * n % len(users) :][:n]
            ev = pd.DataFrame({"user_id": who, "item_id": [1] * len(who),
                               "event_timestamp": pd.Timestamp.now(tz="UTC")})  # fmt: skip
            t0 = time.perf_counter()
            push_events(fs, root, ev, 50)
            times.append(time.perf_counter() - t0)
        rows.append({"events": n, "median_ms": statistics.median(times[1:]) * 1000})
        print(f"  push_events, {n:5d} events: {rows[-1]['median_ms']:.1f} ms", flush=True)
    return rows


def refreshes(work: Path, tag: str, new: int, repeats: int) -> list[dict]:
    import shutil

    from components import snapshots as sn
    from components.refresh import refresh
    from components.registry import Registry

    served = Registry(work / "registry").get(tag)
    reg = Registry(work / "refresh-registry")  # fresh each run: a refresh already registered returns at once
    shutil.rmtree(reg.root, ignore_errors=True)
    shutil.copytree(served.path, reg.root / served.name / served.version)
    mv = reg.get(tag)
    catalogue = pd.read_parquet(Path(sn.latest(work / "features")["dir"]) / "items.parquet")
    rows = []
    for n, kind in enumerate(("flat", "hnsw", "ivf_flat")):
        times = []
        for rep in range(repeats):
            start = int(catalogue.item_id.max()) + 1 + (n * repeats + rep) * new  # other new items each time
            extra = catalogue.sample(new, random_state=rep).assign(item_id=np.arange(start, start + new))
            meta = {**mv.meta, "index": {**mv.meta["index"], "config": {**mv.meta["index"]["config"], "kind": kind}}}
            parent = dataclasses.replace(mv, meta=meta)  # the same version, served from another index kind
            t0 = time.perf_counter()
            _, record = refresh(parent, pd.concat([catalogue, extra], ignore_index=True), reg)
            times.append(time.perf_counter() - t0)
        rows.append({"kind": kind, "items": record["items"], "added": new, "median_s": statistics.median(times),
                     "build_s": record["seconds"]})  # fmt: skip
        print(f"  refresh {kind:8s}: {statistics.median(times):.2f} s for {record['items']:,} items", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--interactions", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--new", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=str(ROOT / "runs/bench/freshness"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/freshness.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = setup(work, args.users, args.items, args.interactions)
    print(f"{info['tag']} over {args.items:,} items, {len(info['users']):,} users with history", flush=True)
    push = pushes(work, info["users"], args.rounds)
    print(f"  push: POST /events p50 {push['post_p50_ms']:.1f} ms, click → fresh answer p50 "
          f"{push['fresh_p50_ms']:.1f} ms (p95 {push['fresh_p95_ms']:.1f})", flush=True)  # fmt: skip
    batch_rows = push_batches(work, info["users"])
    refresh_rows = refreshes(work, info["tag"], args.new, args.repeats)
    lines = [
        f"| pushed click ({push['rounds']} rounds, 2 workers, SQLite) | p50 (ms) | p95 (ms) |",
        "|---|---:|---:|",
        f"| POST /events | {push['post_p50_ms']:.1f} | {push['post_p95_ms']:.1f} |",
        f"| click → first answer without the item | {push['fresh_p50_ms']:.1f} | {push['fresh_p95_ms']:.1f} |",
        "",
        "| push_events in process (SQLite) | median (ms) | per event (ms) |",
        "|---|---:|---:|",
        *[f"| {r['events']:,} events | {r['median_ms']:.1f} | {r['median_ms'] / r['events']:.2f} |"
          for r in batch_rows],
        "",
        f"| item refresh: +{args.new} items | catalogue | median wall (s) | item tower + index build (s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['kind']} | {r['items']:,} | {r['median_s']:.2f} | {r['build_s']:.2f} |" for r in refresh_rows]
    write_result(args.out, "\n".join(lines), setup=info | {"users": len(info["users"])}, push=push,
                 push_batches=batch_rows, refresh=refresh_rows, args=vars(args))  # fmt: skip


if __name__ == "__main__":
    main()
