"""Raw feature values → a registered version's tower inputs, as its ``feature_spec.json`` says.

Item and user ids go through ``vocab/*.npy``, categorical profile values through ``vocab/<name>.json``
(unknown → 0), histories are left-padded to the spec's length, ``hist_age`` is days between each history
event and the request time, context inputs (hour, weekday, …) are the request time's, computed by the
function behind Feast's on-demand ``context`` view. Serving uses this for every request; the gate uses it to score the
production version offline on a candidate's evaluation events, exactly as serving would; item refresh
uses :meth:`TowerInputs.encode_items` to place catalogue rows with the version's own item tower.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from feature_repo.context import CONTEXT, context_values

from .datasets import MAX_GENRES, decades
from .registry import ModelVersion


class TowerInputs:
    def __init__(self, mv: ModelVersion):
        self.spec = mv.spec
        self.max_len = int(self.spec["max_len"])
        item_vocab = np.load(mv.path / "vocab" / "item_id.npy")
        self.item_index = {int(r): i for i, r in enumerate(item_vocab) if i > 0}
        user_vocab = np.load(mv.path / "vocab" / "user_id.npy")
        self.user_index = {int(r): i for i, r in enumerate(user_vocab) if i > 0}
        self.vocabs: dict[str, dict[str, int]] = {}
        for spec in [*self.spec["user_inputs"], *self.spec["item_inputs"]]:
            v = spec.get("vocab", "")
            if v.endswith(".json"):
                values = json.loads((mv.path / v).read_text())
                self.vocabs[spec["name"]] = {str(x): i + 1 for i, x in enumerate(values)}
        # Categorical user-tower inputs read from the profile (the gate fills them from the users table).
        self.profile = [s["name"] for s in self.spec["user_inputs"] if s["name"] in self.vocabs]
        self.feature_refs = self._feature_refs()  # what to read from the feature store, per request

    def _feature_refs(self) -> list[str]:
        refs = ["user_behaviour:hist_item_ids"]
        for spec in self.spec["user_inputs"]:
            src = spec["source"].split(" ")[0]
            if src.startswith(("entity:", "context:")):  # the id itself; computed from the request time
                continue
            if spec["name"] == "hist_age":
                refs.append("user_behaviour:hist_timestamps")
            elif src not in refs:
                refs.append(src)
        return list(dict.fromkeys(refs))

    def _pad(self, rows: list[list[float]], dtype) -> np.ndarray:
        out = np.zeros((len(rows), self.max_len), dtype=dtype)
        for i, r in enumerate(rows):
            r = r[-self.max_len :]
            if len(r):
                out[i, self.max_len - len(r) :] = r
        return out

    def encode(self, users: list[int], feats: dict[str, list], now_s: float | np.ndarray) -> dict[str, np.ndarray]:
        """The tower's input tensors for these users; ``now_s``: the request time (one for all, or one
        per user), unix seconds."""
        hist_raw = [list(h or []) for h in feats["hist_item_ids"]]
        now = np.broadcast_to(np.asarray(now_s, dtype=np.float64), (len(users),))
        out: dict[str, np.ndarray] = {}
        moment = pd.DataFrame()
        for spec in self.spec["user_inputs"]:
            name = spec["name"]
            if name == "hist_item_ids":
                out[name] = self._pad([[self.item_index.get(int(x), 0) for x in h] for h in hist_raw], np.int64)
            elif name == "hist_age":
                ts = [list(t or []) for t in feats["hist_timestamps"]]
                out[name] = self._pad(
                    [[max(0.0, (n - t) / 86400.0) for t in row] for n, row in zip(now, ts, strict=True)], np.float32
                )
            elif name == "user_id":
                out[name] = np.array([self.user_index.get(int(u), 0) for u in users], dtype=np.int64)
            elif name in CONTEXT:
                if name not in moment:
                    moment = context_values(pd.Series(pd.to_datetime(now, unit="s", utc=True)))
                out[name] = moment[name].to_numpy(dtype=np.int64) + 1
            else:
                vocab = self.vocabs.get(name, {})
                out[name] = np.array([vocab.get(str(v), 0) for v in feats[name]], dtype=np.int64)
        return out

    def encode_items(self, items: pd.DataFrame) -> dict[str, np.ndarray]:
        """Item-tower inputs for raw catalogue rows (``item_id``, ``year``, ``genres``, …), encoded as in
        training: ids through the version's vocabulary (an item it never saw gets 0, so its vector comes
        from its attributes alone), attributes through their vocabularies (unknown → 0)."""
        out: dict[str, np.ndarray] = {}
        for spec in self.spec["item_inputs"]:
            name = spec["name"]
            vocab = self.vocabs.get(name, {})
            if name == "item_id":
                out[name] = np.array([self.item_index.get(int(i), 0) for i in items.item_id], dtype=np.int64)
            elif name == "genres":
                rows = [[vocab.get(str(g), 0) for g in list(gs)[:MAX_GENRES]] for gs in items.genres]
                out[name] = np.zeros((len(rows), MAX_GENRES), dtype=np.int64)
                for i, r in enumerate(rows):
                    if r:
                        out[name][i, MAX_GENRES - len(r) :] = r
            else:
                values = decades(items.year) if name == "decade" else items[name].astype(str)
                out[name] = np.array([vocab.get(v, 0) for v in values], dtype=np.int64)
        return out
