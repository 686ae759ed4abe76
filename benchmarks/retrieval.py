"""Retrieval speed: (a) user-tower latency, onnxruntime vs PyTorch eager, per model at batch 1 and 256;
(b) Faiss Flat / HNSW / IVF build time, size, queries/s and recall@100 against exact search.

(a) uses ML-100K's schema and real history batches (weights as initialised: latency does not depend
on training). Both runtimes get the same threads. Medians of repeated calls, measured side by side.
(b) uses synthetic clustered vectors (items and queries drawn around 1,000 centres: trained item
embeddings are clustered, i.i.d. Gaussians are not), d=64, at 100k and 1M items. "single" = one query
per call on one thread (a request); "batched" = 1,000 queries per call on every core. The exact-search
row also shows its memory-bandwidth bound: one single-query scan must read N·d·4 bytes.

    python benchmarks/retrieval.py                       # everything (~15 min on 2 cores)
    python benchmarks/retrieval.py --sizes 100000 --skip-towers
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from components import export as ex  # noqa: E402
from components import index as idx  # noqa: E402
from components.datasets import encode, load_ml100k  # noqa: E402
from models.registry import MODELS, build_model  # noqa: E402


def median_seconds(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def towers(threads: int, max_len: int = 50) -> list[dict]:
    torch.set_num_threads(threads)
    enc = encode(load_ml100k(os.environ.get("RECALL_ML100K_DIR", ROOT.parent / "shared/data/ml-100k")), max_len)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            torch.manual_seed(0)
            model = build_model(name, enc.schema).eval()
            path = Path(tmp) / f"{name}.onnx"
            users = torch.arange(1, 257)
            ex.export_tower(model, "user", ex.serving_batch(enc.data, users, max_len), path)
            sess = ex.session(path, threads)
            row = {"model": name}
            for bs in (1, 256):
                b = ex.serving_batch(enc.data, users[:bs], max_len)
                feeds = {n: b[n].numpy() for n in model.user_inputs}
                with torch.no_grad():
                    t_torch = median_seconds(lambda b=b, m=model: m.user_tower(b), 50 if bs == 1 else 20)
                t_ort = median_seconds(lambda f=feeds, s=sess: s.run(None, f), 50 if bs == 1 else 20)
                row[f"torch_ms@{bs}"] = t_torch * 1e3
                row[f"onnx_ms@{bs}"] = t_ort * 1e3
                row[f"speedup@{bs}"] = t_torch / t_ort
            rows.append(row)
            print(
                f"  {name:14s} b=1 torch {row['torch_ms@1']:.3f} ms onnx {row['onnx_ms@1']:.3f} ms | "
                f"b=256 torch {row['torch_ms@256']:.2f} ms onnx {row['onnx_ms@256']:.2f} ms",
                flush=True,
            )
    return rows


def clustered(n: int, d: int, seed: int, centres: int = 1000) -> np.ndarray:
    c = np.random.default_rng(12345).standard_normal((centres, d), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 200_000):
        m = min(n, lo + 200_000) - lo
        out[lo : lo + m] = c[rng.integers(0, centres, m)] + 0.5 * rng.standard_normal((m, d), dtype=np.float32)
    return out


def memory_bandwidth_gbs() -> float:
    a = np.ones(64 * 1024 * 1024 // 4, dtype=np.float32)  # 64 MiB, well past the caches
    t = median_seconds(lambda: a.sum(), 10)
    return a.nbytes / t / 1e9


def index_rows(n: int, d: int, threads: int, n_queries: int = 1000, k: int = 100) -> list[dict]:
    items = clustered(n, d, seed=1)
    queries = clustered(n_queries, d, seed=2)
    faiss.omp_set_num_threads(threads)
    exact = idx.exact_topk(items, queries, k)
    bw = memory_bandwidth_gbs()
    configs = [
        ("flat", idx.IndexConfig("flat")),
        ("hnsw ip M32 ef128", idx.IndexConfig("hnsw", hnsw_metric="ip", ef_construction=200, ef_search=128)),
        ("hnsw ip M32 ef256", idx.IndexConfig("hnsw", hnsw_metric="ip", ef_construction=200, ef_search=256)),
        ("hnsw l2 M32 ef64", idx.IndexConfig("hnsw", hnsw_metric="l2", ef_construction=200, ef_search=64)),
        ("hnsw l2 M32 ef128", idx.IndexConfig("hnsw", hnsw_metric="l2", ef_construction=200, ef_search=128)),
        ("ivf_flat nprobe32", idx.IndexConfig("ivf_flat", nprobe=32)),
        ("ivf_pq m16 nprobe32", idx.IndexConfig("ivf_pq", nprobe=32, pq_m=16)),
    ]
    rows, built = [], {}
    for label, cfg in configs:
        key = (cfg.kind, cfg.hnsw_metric, cfg.nprobe, cfg.pq_m)
        faiss.omp_set_num_threads(threads)
        if key in built:
            index, build_s = built[key]
        else:
            t0 = time.perf_counter()
            index = idx.build(items, cfg)
            build_s = time.perf_counter() - t0
            built = {key: (index, build_s)}  # keep one index alive at a time (1M HNSW ≈ 400 MB)
        idx.set_search_params(index, cfg)
        # single queries, one thread
        faiss.omp_set_num_threads(1)
        n_single = 200 if cfg.kind == "flat" else n_queries
        t0 = time.perf_counter()
        got = [idx.search(index, queries[i : i + 1], k)[1] for i in range(n_single)]
        single_qps = n_single / (time.perf_counter() - t0)
        # batched, every thread
        faiss.omp_set_num_threads(threads)
        t0 = time.perf_counter()
        batch_rows = idx.search(index, queries, k)[1]
        batched_qps = n_queries / (time.perf_counter() - t0)
        recall = idx.recall_at_k(batch_rows, exact)
        single_recall = idx.recall_at_k(np.concatenate(got), exact[:n_single])
        row = {
            "n_items": n,
            "dim": d,
            "index": label,
            "build_s": build_s,
            "size_mb": idx.size_bytes(index) / 1e6,
            "single_qps": single_qps,
            "batched_qps": batched_qps,
            "recall@100": recall,
            "single_recall@100": single_recall,
        }
        if cfg.kind == "flat":
            row["bandwidth_bound_single_qps"] = bw * 1e9 / (n * d * 4)
            row["memory_bandwidth_gbs"] = bw
        rows.append(row)
        print(
            f"  {n:>9,} {label:20s} build {build_s:7.1f}s  {row['size_mb']:7.1f} MB  single {single_qps:8.0f}/s  "
            f"batched {batched_qps:8.0f}/s  recall@100 {recall:.4f}",
            flush=True,
        )
    return rows


def markdown(tower_rows: list[dict], index_rows_: list[dict]) -> str:
    out = []
    if tower_rows:
        out += [
            "| model | torch b=1 (ms) | onnx b=1 (ms) | speed-up | torch b=256 (ms) | onnx b=256 (ms) | speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['model']} | {r['torch_ms@1']:.3f} | {r['onnx_ms@1']:.3f} | {r['speedup@1']:.1f}× | "
            f"{r['torch_ms@256']:.2f} | {r['onnx_ms@256']:.2f} | {r['speedup@256']:.1f}× |"
            for r in tower_rows
        ]
        out.append("")
    if index_rows_:
        out += [
            "| items | index | build (s) | size (MB) | single q/s | batched q/s | recall@100 |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in index_rows_:
            out.append(
                f"| {r['n_items']:,} | {r['index']} | {r['build_s']:.1f} | {r['size_mb']:.0f} | "
                f"{r['single_qps']:,.0f} | {r['batched_qps']:,.0f} | {r['recall@100']:.4f} |"
            )
            if "bandwidth_bound_single_qps" in r:
                out.append(
                    f"| {r['n_items']:,} | flat: memory-bandwidth bound ({r['memory_bandwidth_gbs']:.1f} GB/s) | | | "
                    f"{r['bandwidth_bound_single_qps']:,.0f} | | 1.0000 |"
                )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-towers", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/retrieval.json"))
    args = ap.parse_args()

    tower_rows = []
    if not args.skip_towers:
        print(f"(a) user-tower latency, {args.threads} threads, ML-100K histories (L=50)")
        tower_rows = towers(args.threads)
    print(f"(b) Faiss on synthetic clustered items, d={args.dim}, {args.threads} threads")
    rows = [r for n in args.sizes for r in index_rows(n, args.dim, args.threads)]
    write_result(args.out, markdown(tower_rows, rows), threads=args.threads, faiss=faiss.__version__,
                 towers=tower_rows, indexes=rows)  # fmt: skip


if __name__ == "__main__":
    main()
