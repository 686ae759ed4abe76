"""Serving load test (loopback only, bounded): closed-loop clients at concurrency 1, 8 and 32 against a
real `bentoml serve` process with SASRec over a 100k-item HNSW index and the SQLite online store.

Setup (once, cached under --work): synthetic data with 100k items → features (ingest, validate, apply,
materialize) → SASRec trained one epoch with sampled softmax (latency does not depend on accuracy)
→ registered with an HNSW index. Each level runs --seconds; users are drawn uniformly from all known
users (so the result cache rarely helps; its hit rate is printed). Prints p50/p95/p99 latency,
requests/s and errors; writes JSON. Targets on this 2-core machine: p99 ≤ 25 ms at concurrency 8,
≥ 300 requests/s at concurrency 32, zero errors.

    python benchmarks/serving.py
    python benchmarks/serving.py --seconds 10 --levels 1 8
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from serving.process import running_service  # noqa: E402


def setup(work: Path, n_items: int) -> dict:
    from components.config import load_config
    from components.features import run_pipeline
    from components.register import register_run
    from components.registry import Registry
    from components.train import run

    marker = work / "setup.json"
    if marker.exists():
        return json.loads(marker.read_text())
    settings = [
        "data.synthetic.n_users=20000",
        f"data.synthetic.n_items={n_items}",
        "data.synthetic.n_interactions=400000",
        "data.synthetic.n_clusters=50",
        "model=sasrec",
        "model_params={embedding_dim: 64, num_heads: 2, num_layers: 2, hidden_size: 128, dropout: 0.1}",
        "train.mode=listwise",
        "train.negative=uniform",
        "train.num_negatives=256",
        "train.epochs=1",
        "train.batch_size=256",
        "train.max_len=50",
        "train.progress=false",
        "index.kind=hnsw",
        f"out_dir={work / 'run'}",
        f"features.dir={work / 'features'}",
    ]
    cfg = load_config(None, settings)
    t0 = time.perf_counter()
    published = run_pipeline(cfg)["published"]  # ingest → validate → apply → materialize → a snapshot
    run(cfg)
    mv = register_run(work / "run", Registry(work / "registry"), to_bentoml=False)
    (work / "routing.yaml").write_text(f"default: {mv.tag}\nexperiments: []\n")
    import pandas as pd

    users = sorted(pd.read_parquet(Path(published["dir"]) / "users.parquet").user_id.astype(int).tolist())
    info = {"tag": mv.tag, "users": users, "index": mv.meta["index"]["report"], "setup_s": time.perf_counter() - t0}
    marker.write_text(json.dumps(info))
    return info


def server_env(work: Path) -> dict[str, str]:
    return {
        "RECALL_ROUTING": str(work / "routing.yaml"),
        "RECALL_REGISTRY": str(work / "registry"),
        "RECALL_FEATURE_DIR": str(work / "features"),
        "RECALL_RESPONSE_LOG": str(work / "responses.jsonl"),
        "RECALL_WATCH_INTERVAL_S": "0",
    }


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: the load generator shares the two cores
    with the server, and httpx costs ~1 ms of CPU per request, which would be charged to the server."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def closed_loop(url: str, users: list[int], concurrency: int, seconds: float, k: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    lat: list[float] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds
    rng = random.Random(concurrency)

    async def worker() -> None:
        conn = Connection(host, int(port))
        try:
            while time.perf_counter() < stop:
                body = json.dumps({"user_id": str(rng.choice(users)), "k": k}).encode()
                t0 = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.post("/recall", body), 10)
                    if status != 200 or b'"items"' not in data:
                        errors.append(str(status))
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                    errors.append(type(e).__name__)
                    conn.close()
                    conn = Connection(host, int(port))
                lat.append(time.perf_counter() - t0)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": len(errors),
        "error_kinds": dict(collections.Counter(errors)),
        "rps": len(lat) / wall,
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--work", default=str(ROOT / "runs/bench/serving"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serving.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = setup(work, args.items)
    ix = info["index"]
    print(f"model {info['tag']}: {ix['kind']} over {ix['n_items']:,} items, {len(info['users']):,} users")
    rows = []
    with running_service(server_env(work), work / "serve.log") as url:
        asyncio.run(closed_loop(url, info["users"], 4, 3, args.k))  # warm-up
        for c in args.levels:
            row = asyncio.run(closed_loop(url, info["users"], c, args.seconds, args.k))
            rows.append(row)
            print(
                f"  concurrency {c:3d}: {row['rps']:7.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
                f"p95 {row['p95_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                f"errors {row['errors']} {row['error_kinds'] or ''}",
                flush=True,
            )
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        hit_rates = [float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines() if x.startswith("recall_cache_hit_rate{")]
    lines = [
        "| concurrency | requests/s | p50 (ms) | p95 (ms) | p99 (ms) | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f}"
        lines.append(f"| {r['concurrency']} | {r['rps']:.1f} | {lat} | {r['errors']} |")
    workers = os.environ.get("RECALL_WORKERS", "cpu_count")
    print(f"workers {workers}; cache hit rate per worker {hit_rates} (k={args.k}, uniform users)")
    write_result(args.out, "\n".join(lines), model=info["tag"], index=info["index"], k=args.k,
                 seconds_per_level=args.seconds, levels=rows, workers=workers,
                 cache_hit_rate_per_worker=hit_rates)  # fmt: skip


if __name__ == "__main__":
    main()
