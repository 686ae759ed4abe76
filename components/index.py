"""The Faiss item index: build by config, search (max over interests), measure ANN recall against exact.

Row r of the index holds the item at index r + 1 (index 0 is padding and never retrievable);
``item_ids.npy`` maps rows to raw item ids. Every index ranks by inner product.

HNSW can search inner product directly (``hnsw_metric="ip"``) or through the standard reduction of
maximum inner-product search to nearest-neighbour search (``hnsw_metric="l2"``): each item gets one
extra coordinate sqrt(M² - |x|²) (M = the largest item norm) and queries get 0, so that
|q - x'|² = |q|² + M² - 2 q·x ranks items exactly by q·x. Such an index is an L2 index of dimension
d + 1; :func:`search` recognises it, pads queries, and returns exact inner products (re-scored from
the stored vectors). Which is better depends on the vectors: on 200k clustered 64-d items the
reduction took recall@100 at efSearch=128 from 0.961 to 0.999 (and doubled throughput), while on
small low-dimensional sets with widely spread norms direct inner product wins (queries far from all
padded items make greedy graph search harder). ``benchmarks/retrieval.py`` measures both.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .settings import IndexConfig


def build(vectors: np.ndarray, cfg: IndexConfig = IndexConfig(), seed: int = 0) -> faiss.Index:
    """An inner-product index over ``vectors`` (N, d) float32."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        raise ValueError("cannot build an index over zero items")
    ip = faiss.METRIC_INNER_PRODUCT
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif cfg.kind == "hnsw" and cfg.hnsw_metric == "ip":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, ip)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    elif cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d + 1, cfg.hnsw_m, faiss.METRIC_L2)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        norms = np.einsum("nd,nd->n", x, x)
        x = np.hstack([x, np.sqrt(np.maximum(norms.max() - norms, 0))[:, None]]).astype(np.float32)
    else:
        nlist = cfg.nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))  # Faiss wants ≥ 39 points per cell
        quantizer = faiss.IndexFlatIP(d)
        if cfg.kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        else:
            if d % cfg.pq_m:
                raise ValueError(f"ivf_pq needs pq_m dividing the dimension: {cfg.pq_m} does not divide {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, cfg.pq_bits, ip)
        rng = np.random.default_rng(seed)
        size = max(cfg.train_size, 40 * nlist)  # k-means wants ≥ 39 points per centroid
        sample = x if n <= size else x[rng.choice(n, size, replace=False)]
        index.train(sample)
        index.nprobe = min(cfg.nprobe, nlist)  # (faiss's wrapper keeps the quantizer alive with the index)
    index.add(x)
    return index


def set_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    """Re-applies query-time knobs (they are not all persisted by ``faiss.write_index``)."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(cfg.nprobe, ivf.nlist)


def is_mips_reduced(index: faiss.Index) -> bool:
    """An L2 index over items padded with one norm-completing coordinate (see the module docstring)."""
    return index.metric_type == faiss.METRIC_L2


def dimension(index: faiss.Index) -> int:
    """The embedding dimension the index serves (without the MIPS reduction's extra coordinate)."""
    return index.d - 1 if is_mips_reduced(index) else index.d


def _mips_norm2(index: faiss.Index) -> float:
    """M²: every padded vector has |x'|² = M², so one stored vector tells it (one row, microseconds)."""
    v = index.reconstruct(0)
    return float(np.dot(v, v))


def _search(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if not is_mips_reduced(index):
        return index.search(q, k)
    dist, rows = index.search(np.hstack([q, np.zeros((len(q), 1), dtype=np.float32)]), k)
    # |q - x'|² = |q|² + M² - 2 q·x  ⇒  q·x = (|q|² + M² - d) / 2, already best first.
    q2 = np.einsum("bd,bd->b", q, q)[:, None]
    scores = ((q2 + _mips_norm2(index) - dist) / 2).astype(np.float32)
    scores[rows < 0] = -np.inf
    return scores, rows


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows by inner product. ``queries`` (B, d), or (B, K, d) for multi-interest users: each
    interest is searched and the results merged by max score, each row appearing once.

    Returns (scores (B, k) float32, rows (B, k) int64); missing results are -inf / -1.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.shape[-1] != dimension(index):
        raise ValueError(f"query dimension {q.shape[-1]} != index dimension {dimension(index)}")
    k = min(k, index.ntotal)
    if q.ndim == 2:
        return _search(index, q, k)
    b, n_int, d = q.shape
    s, r = _search(index, q.reshape(b * n_int, d), k)
    return merge_interests(s.reshape(b, n_int * k), r.reshape(b, n_int * k), k)


def merge_interests(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the k best distinct rows of concatenated per-interest results (max score per row)."""
    out_s = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    out_r = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for i in range(scores.shape[0]):
        order = np.argsort(-scores[i], kind="stable")
        r = rows[i][order]
        keep = r >= 0
        r, s = r[keep], scores[i][order][keep]
        _, first = np.unique(r, return_index=True)  # first occurrence = best score of that row
        first = np.sort(first)[:k]
        out_r[i, : len(first)] = r[first]
        out_s[i, : len(first)] = s[first]
    return out_s, out_r


def exact_topk(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows (max over interests), the reference for ANN recall."""
    return search(build(items, IndexConfig("flat")), queries, k)[1]


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each exact top-k list found in the approximate list."""
    hits = [
        len(np.intersect1d(a[a >= 0], e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx, exact, strict=True)
    ]
    return float(np.mean(hits)) if hits else float("nan")


def size_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


@dataclass(frozen=True)
class IndexReport:
    kind: str
    n_items: int
    dim: int
    build_seconds: float
    size_bytes: int
    k: int
    n_queries: int
    recall_at_k: float  # against exact inner-product search on the same queries

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_and_measure(
    items: np.ndarray, queries: np.ndarray, cfg: IndexConfig, k: int = 100
) -> tuple[faiss.Index, IndexReport]:
    """Builds the configured index and measures its recall@k against exact search on ``queries``."""
    t0 = time.perf_counter()
    index = build(items, cfg)
    secs = time.perf_counter() - t0
    kk = min(k, len(items))
    recall = 1.0 if cfg.kind == "flat" else recall_at_k(search(index, queries, kk)[1], exact_topk(items, queries, kk))
    report = IndexReport(cfg.kind, len(items), items.shape[1], secs, size_bytes(index), kk, len(queries), recall)
    return index, report


def write(index: faiss.Index, path: str | Path) -> None:
    faiss.write_index(index, str(path))


def read(path: str | Path) -> faiss.Index:
    return faiss.read_index(str(path))
