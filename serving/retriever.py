"""One model version ready to serve: raw online features → user tower (onnxruntime) → Faiss top-K.

The feature spec of the version says which inputs the tower takes and how raw feature values become
tensors: item and user ids through ``vocab/*.npy``, categorical profile values through
``vocab/<name>.json`` (unknown → 0), histories left-padded to the spec's length, ``hist_age`` as days
between each history event and the request time.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from components import index as idx
from components.export import run_tower
from components.registry import ModelVersion


@dataclass
class Result:
    items: list[str]
    scores: list[float]
    fallback: str | None = None


class Retriever:
    def __init__(self, mv: ModelVersion, threads: int = 1):
        self.version = mv
        self.tag = mv.tag
        self.spec = mv.spec
        self.session = mv.user_session(threads)
        self.index = mv.index()
        self.item_ids = mv.item_ids  # index row → raw item id
        self.max_len = int(self.spec["max_len"])
        item_vocab = np.load(mv.path / "vocab" / "item_id.npy")
        self.item_index = {int(r): i for i, r in enumerate(item_vocab) if i > 0}
        user_vocab = np.load(mv.path / "vocab" / "user_id.npy")
        self.user_index = {int(r): i for i, r in enumerate(user_vocab) if i > 0}
        self.vocabs: dict[str, dict[str, int]] = {}
        for spec in self.spec["user_inputs"]:
            v = spec.get("vocab", "")
            if v.endswith(".json"):
                values = json.loads((mv.path / v).read_text())
                self.vocabs[spec["name"]] = {str(x): i + 1 for i, x in enumerate(values)}
        pop_path = mv.path / "popularity.npy"
        pop = np.load(pop_path) if pop_path.exists() else np.zeros(len(self.item_ids))
        self.popular_rows = np.argsort(-pop, kind="stable")
        self._search_lock = threading.Lock()
        self.feature_refs = self._feature_refs()  # what to read from the feature store, per request

    def _feature_refs(self) -> list[str]:
        refs = ["user_behaviour:hist_item_ids"]
        for spec in self.spec["user_inputs"]:
            src = spec["source"].split(" ")[0]
            if src.startswith("entity:"):
                continue
            if spec["name"] == "hist_age":
                refs.append("user_behaviour:hist_timestamps")
            elif src not in refs:
                refs.append(src)
        return list(dict.fromkeys(refs))

    # --- raw features → tensors ----------------------------------------------------------------------
    def _pad(self, rows: list[list[float]], dtype) -> np.ndarray:
        out = np.zeros((len(rows), self.max_len), dtype=dtype)
        for i, r in enumerate(rows):
            r = r[-self.max_len :]
            if len(r):
                out[i, self.max_len - len(r) :] = r
        return out

    def inputs(self, users: list[int], feats: dict[str, list], now_s: float) -> dict[str, np.ndarray]:
        hist_raw = [list(h or []) for h in feats["hist_item_ids"]]
        out: dict[str, np.ndarray] = {}
        for spec in self.spec["user_inputs"]:
            name = spec["name"]
            if name == "hist_item_ids":
                out[name] = self._pad([[self.item_index.get(int(x), 0) for x in h] for h in hist_raw], np.int64)
            elif name == "hist_age":
                ts = [list(t or []) for t in feats["hist_timestamps"]]
                out[name] = self._pad([[max(0.0, (now_s - t) / 86400.0) for t in row] for row in ts], np.float32)
            elif name == "user_id":
                out[name] = np.array([self.user_index.get(int(u), 0) for u in users], dtype=np.int64)
            else:
                vocab = self.vocabs.get(name, {})
                out[name] = np.array([vocab.get(str(v), 0) for v in feats[name]], dtype=np.int64)
        return out

    # --- retrieval -----------------------------------------------------------------------------------
    def popularity(self, k: int, seen: set[int] | None = None) -> Result:
        rows = self.popular_rows
        if seen:
            rows = [r for r in rows[: k + len(seen)] if int(self.item_ids[r]) not in seen]
        rows = list(rows[:k])
        return Result([str(self.item_ids[r]) for r in rows], [0.0] * len(rows), "popularity")

    def recall(
        self, users: list[int], feats: dict[str, list], ks: list[int], exclude_seen: list[bool], now_s: float
    ) -> list[Result]:
        """Top-k raw item ids per user. Users without history get the popularity fallback."""
        results: list[Result | None] = [None] * len(users)
        known = [i for i, h in enumerate(feats["hist_item_ids"]) if h]
        for i in range(len(users)):
            if i not in known:
                results[i] = self.popularity(ks[i])
        if known:
            sub = {name: [vals[i] for i in known] for name, vals in feats.items()}
            x = self.inputs([users[i] for i in known], sub, now_s)
            q = run_tower(self.session, x)
            seen = [set(int(v) for v in feats["hist_item_ids"][i]) if exclude_seen[i] else set() for i in known]
            fetch = max(ks[i] + len(s) for i, s in zip(known, seen, strict=True))
            with self._search_lock:  # one search at a time per index: Faiss threads are already busy
                scores, rows = idx.search(self.index, q, fetch)
            for j, i in enumerate(known):
                valid = rows[j] >= 0
                raw = self.item_ids[rows[j][valid]]
                keep = ~np.isin(raw, list(seen[j])) if seen[j] else np.ones(len(raw), dtype=bool)
                top_raw, top_scores = raw[keep][: ks[i]], scores[j][valid][keep][: ks[i]]
                results[i] = Result([str(x) for x in top_raw.tolist()], top_scores.tolist())
        return [r for r in results if r is not None]

    def describe(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "items": int(self.index.ntotal),
            "dim": idx.dimension(self.index),
            "index": self.version.meta["index"]["report"]["kind"],
        }
