"""One model version ready to serve: raw online features → user tower (onnxruntime) → Faiss top-K.

The feature spec of the version says which inputs the tower takes and how raw feature values become
tensors (:class:`components.tower_inputs.TowerInputs`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from components import index as idx
from components.export import run_tower
from components.registry import ModelVersion
from components.tower_inputs import TowerInputs

SEEN = "user_seen:seen_item_ids"  # every item the user interacted with, however long ago


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
        self.encoder = TowerInputs(mv)
        # What to read from the feature store per request: the tower's inputs and the full seen set.
        self.feature_refs = [*self.encoder.feature_refs, SEEN]
        pop_path = mv.path / "popularity.npy"
        pop = np.load(pop_path) if pop_path.exists() else np.zeros(len(self.item_ids))
        self.popular_rows = np.argsort(-pop, kind="stable")
        self._search_lock = threading.Lock()

    # --- retrieval -----------------------------------------------------------------------------------
    def popularity(self, k: int, seen: set[int] | None = None) -> Result:
        rows = self.popular_rows
        if seen:
            rows = [r for r in rows[: k + len(seen)] if int(self.item_ids[r]) not in seen]
        rows = list(rows[:k])
        return Result([str(self.item_ids[r]) for r in rows], [0.0] * len(rows), "popularity")

    def recall(
        self, users: list[int], feats: dict[str, list], ks: list[int], exclude_seen: list[bool],
        now_s: float | list[float],
    ) -> list[Result]:
        """Top-k raw item ids per user, without the items they have seen (their whole seen set and
        history) where ``exclude_seen``. Users without history get the popularity fallback. ``now_s``:
        the moment of the request (one for all users, or one each) — history ages and context inputs."""
        now = np.broadcast_to(np.asarray(now_s, dtype=np.float64), (len(users),))
        results: list[Result | None] = [None] * len(users)
        known = [i for i, h in enumerate(feats["hist_item_ids"]) if h]
        for i in range(len(users)):
            if i not in known:
                results[i] = self.popularity(ks[i])
        if known:
            sub = {name: [vals[i] for i in known] for name, vals in feats.items()}
            x = self.encoder.encode([users[i] for i in known], sub, now[known])
            q = run_tower(self.session, x)
            everything = feats.get("seen_item_ids") or [None] * len(users)
            seen = [
                {int(v) for v in (everything[i] or [])} | {int(v) for v in feats["hist_item_ids"][i]}
                if exclude_seen[i] else set()
                for i in known
            ]  # fmt: skip
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
