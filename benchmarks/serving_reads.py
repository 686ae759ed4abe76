"""Where `/recall` does its feature read: on the event loop (inline) or in a worker thread, with the
SQLite and with the Redis online store (`RECALL_READS_OFF_LOOP`, serving/service.py).

The model, index and users of ``benchmarks/serving.py`` (its cached setup under --work, built on the
first run); for Redis a local ``redis-server`` is started and the same snapshot is materialized into it
(a copy of the store's registry beside it, so the SQLite setup is untouched), read directly and through
a proxy that delays every chunk by half of ``--rtt-ms`` each way (the round trip to a Redis on another
machine; loopback has almost none). For each online store × read placement, a fresh two-worker
`bentoml serve` with the result cache off, and `/recall` closed-loop at each concurrency, users drawn
uniformly. The placements of one store run back to back, alternating over --rounds, so a drift of the
machine's speed does not favour either; the table gives the median over rounds of requests/s and p99.

    python benchmarks/serving_reads.py
    python benchmarks/serving_reads.py --seconds 5 --rounds 1 --levels 8
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.serving import closed_loop, server_env, setup  # noqa: E402
from serving.process import free_port, redis_server, running_service  # noqa: E402


def redis_store(work: Path, addr: str) -> Path:
    """Materializes the latest snapshot's features into the Redis at ``addr``; → the store directory
    serving reads its registry from."""
    from components import snapshots
    from components.features import StoreConfig, apply, materialize

    d = work / "features-redis"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    latest = snapshots.latest(work / "features")
    (d / snapshots.LATEST).write_text((work / "features" / snapshots.LATEST).read_text())
    cfg = StoreConfig(str(d), online="redis", redis=addr)
    t0 = time.perf_counter()
    materialize(apply(cfg, latest["dir"]), cfg, latest["dir"])
    print(f"redis {addr}: materialized snapshot {latest['id']} in {time.perf_counter() - t0:.1f} s")
    return d


def _delay_proxy(listen_port: int, target: str, one_way_s: float) -> None:
    """Forwards TCP connections on ``listen_port`` to ``target``, each chunk ``one_way_s`` late (in
    order, pipelined: a chunk's delay starts when it arrives)."""

    async def pump(reader, writer):
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.create_task(deliver())
        while data := await reader.read(65536):
            queue.put_nowait((time.perf_counter() + one_way_s, data))
        queue.put_nowait(None)
        await task

    async def handle(reader, writer):
        host, port = target.split(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def measure(args, work: Path, users: list[int], addr: str, redis_dir: Path) -> tuple[list[dict], list[str]]:
    """Every store × placement × round × concurrency; → the rows and the stores' names."""
    import multiprocessing

    proxy_port = free_port()
    proxy = multiprocessing.Process(target=_delay_proxy, args=(proxy_port, addr, args.rtt_ms / 2000), daemon=True)
    proxy.start()
    remote = f"redis +{args.rtt_ms:g} ms"
    stores = {"sqlite": {}, "redis": {"RECALL_REDIS": addr}, remote: {"RECALL_REDIS": f"127.0.0.1:{proxy_port}"}}
    rows = []
    try:
        for store, extra in stores.items():
            env = server_env(work, cache=False)
            if store != "sqlite":
                env |= {"RECALL_ONLINE_STORE": "redis", "RECALL_FEATURE_DIR": str(redis_dir), **extra}
            for rnd in range(args.rounds):
                for placement in ("inline", "thread") if rnd % 2 == 0 else ("thread", "inline"):
                    env_p = {**env, "RECALL_READS_OFF_LOOP": "1" if placement == "thread" else "0"}
                    with running_service(env_p, work / f"serve-{store}-{placement}.log") as url:
                        asyncio.run(closed_loop(url, lambda r: r.choice(users), 4, 3, args.k))  # warm-up
                        for c in args.levels:
                            row = asyncio.run(closed_loop(url, lambda r: r.choice(users), c, args.seconds, args.k))
                            rows.append({**row, "store": store, "placement": placement, "round": rnd})
                            print(f"  {store:<14} {placement:<6} round {rnd} concurrency {c:3d}: {row['rps']:7.1f} "
                                  f"req/s  p50 {row['p50_ms']:6.1f}  p99 {row['p99_ms']:6.1f} ms  "
                                  f"non-200 {row['errors']}", flush=True)  # fmt: skip
    finally:
        proxy.terminate()
    return rows, list(stores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rtt-ms", type=float, default=1.0, help="the simulated round trip to a remote Redis")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--work", default=str(ROOT / "runs/bench/serving"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serving_reads.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = setup(work, args.items)
    users = info["users"]
    (work / "redis").mkdir(exist_ok=True)
    with redis_server(work / "redis") as addr:
        rows, stores = measure(args, work, users, addr, redis_store(work, addr))
    lines = ["| online store | concurrency | inline req/s | thread req/s | thread / inline | inline p99 (ms) "
             "| thread p99 (ms) | non-200 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    summary = []
    for store in stores:
        for c in args.levels:
            s = {"store": store, "concurrency": c}
            for p in ("inline", "thread"):
                mine = [r for r in rows if (r["store"], r["placement"], r["concurrency"]) == (store, p, c)]
                s |= {f"{p}_{m}": statistics.median(r[m] for r in mine) for m in ("rps", "p50_ms", "p99_ms")}
            s["errors"] = sum(r["errors"] for r in rows if (r["store"], r["concurrency"]) == (store, c))
            summary.append(s)
            lines.append(f"| {store} | {c} | {s['inline_rps']:.1f} | {s['thread_rps']:.1f} | "
                         f"{s['thread_rps'] / s['inline_rps']:.2f} | {s['inline_p99_ms']:.1f} | "
                         f"{s['thread_p99_ms']:.1f} | {s['errors']} |")  # fmt: skip
    lines.append(f"\n{info['tag']}, {info['index']['kind']} over {info['index']['n_items']:,} items; cache off; k = "
                 f"{args.k}; {args.seconds:g} s per level; median of {args.rounds} rounds; whole run "
                 f"{time.perf_counter() - t_start:.0f} s")  # fmt: skip
    print("\n".join(lines))
    write_result(args.out, "\n".join(lines), model=info["tag"], k=args.k, seconds_per_level=args.seconds,
                 rounds=args.rounds, rtt_ms=args.rtt_ms, summary=summary, levels=rows)  # fmt: skip


if __name__ == "__main__":
    main()
