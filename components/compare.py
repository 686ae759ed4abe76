"""Candidate and production side by side on the candidate's own evaluation events (the TFX Evaluator's
"blessing": the baseline is scored on the new data, never quoted from its own, older data).

Production is scored exactly as serving would answer: its registered ONNX user tower over the raw
history and profile values (through its own vocabularies), its Faiss index, seen items removed. A user
it has never seen is an unknown id to it; an item it has never seen is not in its index, so a target
that is new since production is always a miss for it.

Each evaluated row also falls into slices, so a regression hidden in the average shows up by name:

    user=new | user=returning        the user is unknown / known to production (only with production)
    target=new                       the target event is later than production's training data (only
                                     with production and its snapshot): where a stale model shows
    history=1-4 | 5-19 | 20-49 | 50+ events before the target
    item=head | item=torso | item=tail  the target's training popularity: top 10 % of the catalogue,
                                     the next 40 %, the rest (never-trained items included)
    item=new                         the target is not in production's index (only with production)

With production, every metric also comes as the paired difference candidate − production over the same
rows with its standard error (:func:`differences`), overall and per slice, so the gate can tell a real
regression from retraining noise and a real improvement from a lucky split.

**Backtest** (:func:`backtest`): a stale production shows on the events it never saw, but the
candidate trained on all of them but each user's last. The newest *held-back* version of the same
recipe (registered, not served; its data ending after production's) has not: it and production are
both scored on *every* event since the held-back version's data ended (users with an earlier event),
paired per event with the error clustered by user. It says whether this recipe, retrained, beats
production on data neither trained on — evidence the gate's promotion advice uses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.data import SequenceData, Split, event_positions
from models.evaluation import eval_rows
from models.metrics import NOT_RANKED, metrics_from_ranks, paired_difference, row_metrics

from .registry import ModelVersion

logger = logging.getLogger(__name__)

HISTORY_BUCKETS = (1, 5, 20, 50)  # lower edges: history=1-4, 5-19, 20-49, 50+
HEAD_SHARE, TORSO_SHARE = 0.10, 0.50  # head = top 10 % of items by training count, torso = the next 40 %
MISS = NOT_RANKED  # the rank of a target that is not in the fetched top-K


@dataclass
class Rows:
    """The evaluated rows of one split, in raw ids (what a server would see)."""

    users: torch.Tensor  # user indices
    pos: torch.Tensor  # target position in the user's events (= history length)
    targets: torch.Tensor  # target item indices
    raw_users: np.ndarray
    raw_targets: np.ndarray
    target_time: np.ndarray  # unix seconds


def rows(data: SequenceData, split: Split, which: str, user_ids: np.ndarray, item_ids: np.ndarray) -> Rows:
    users, pos, targets = eval_rows(data, split, which)
    when = data.times[data.indptr[users] + pos].numpy()
    return Rows(users, pos, targets, user_ids[users.numpy()], item_ids[targets.numpy()], when)


def fresh_rows(data: SequenceData, since: float, user_ids: np.ndarray, item_ids: np.ndarray,
               until: float | None = None) -> Rows:
    """Every event with ``since`` ≤ time (< ``until``) whose user has an earlier event, as rows to score
    (the history of each: every earlier event of the user)."""
    user, pos = event_positions(data)
    keep = (data.times >= since) & (pos >= 1)
    if until is not None:
        keep &= data.times < until
    users, p, targets = user[keep], pos[keep], data.items[keep]
    return Rows(users, p, targets, user_ids[users.numpy()], item_ids[targets.numpy()], data.times[keep].numpy())


def data_end(meta: dict[str, Any], feature_dir: str | Path) -> float | None:
    """Unix time at which a version's training data ends (the end of the snapshot its model.json ``meta``
    names), or None if unknown."""
    from . import snapshots

    try:
        end = snapshots.manifest(feature_dir, meta["snapshot"])["end"]
        return pd.Timestamp(end).timestamp()
    except (KeyError, FileNotFoundError, ValueError, TypeError, snapshots.SnapshotError):
        return None


def production_version(routing: str, registry: str | Path | None) -> tuple[ModelVersion | None, str]:
    """The version the routing file serves by default, or None and why there is none."""
    from . import routing as rt
    from .registry import Registry, VersionError

    try:
        tag = rt.load(routing).default
    except (FileNotFoundError, rt.RoutingError) as e:
        return None, f"nothing in production yet ({e})"
    try:
        return Registry(registry).get(tag), ""
    except VersionError as e:
        return None, f"production {tag} cannot be loaded: {e}"


class ServedVersion:
    """A registered version loaded once (user tower session, index, vocabularies) to rank targets as
    serving would answer, for as many row sets as needed.

    ``exact_over``: a catalogue (raw item rows) to score the version's items *exactly* instead of through
    its approximate index: its item tower's vectors of those items in a flat index. The gate compares
    models, and the candidate is ranked exactly, so production must not be charged its index's recall
    loss (an HNSW production would make a retrain of the same model look better). A version whose
    index is already flat, or whose items are not all in the catalogue, keeps its own index."""

    def __init__(self, mv: ModelVersion, exact_over: pd.DataFrame | None = None):
        from .tower_inputs import TowerInputs

        self.mv = mv
        self.encoder = TowerInputs(mv)
        self.session, self.index, self.item_ids = mv.user_session(threads=0), mv.index(), mv.item_ids
        self.exact = mv.meta["index"]["report"]["kind"] == "flat"
        if not self.exact and exact_over is not None:
            rows = exact_over.drop_duplicates("item_id", keep="last").set_index("item_id")
            if np.isin(self.item_ids, rows.index).all():
                from . import index as idx
                from .refresh import item_vectors

                vectors = item_vectors(mv, rows.loc[self.item_ids].reset_index())
                self.index, self.exact = idx.build(vectors, idx.IndexConfig(kind="flat")), True
            else:
                logger.warning("%s: some of its items are not in the catalogue; ranking through its own index",
                               mv.tag)  # fmt: skip

    def ranks(
        self,
        data: SequenceData,
        r: Rows,
        item_ids: np.ndarray,
        users_table: pd.DataFrame,
        exclude_seen: bool,
        max_k: int,
        batch_size: int = 256,
    ) -> np.ndarray:
        """(R,) 0-based rank of each row's target in the version's served answer (ONNX tower → Faiss, seen
        items removed), or :data:`MISS` when it is not among the top ``max_k``."""
        from . import index as idx
        from .export import run_tower

        enc = self.encoder
        profile = users_table.drop_duplicates("user_id", keep="last").set_index("user_id")
        starts = data.indptr[r.users].numpy()
        pos = r.pos.numpy()
        out = np.full(len(pos), MISS, dtype=np.int64)
        for lo in range(0, len(pos), batch_size):
            sl = slice(lo, min(len(pos), lo + batch_size))
            hist = [item_ids[data.items[s : s + p].numpy()] for s, p in zip(starts[sl], pos[sl], strict=True)]
            feats: dict[str, list] = {
                "hist_item_ids": [h[-enc.max_len :].tolist() for h in hist],
                "hist_timestamps": [
                    data.times[s + max(0, p - enc.max_len) : s + p].numpy().astype(np.int64).tolist()
                    for s, p in zip(starts[sl], pos[sl], strict=True)
                ],
            }
            for name in enc.profile:
                col = profile[name] if name in profile else pd.Series(dtype=object)
                feats[name] = [col.get(u) for u in r.raw_users[sl]]
            q = run_tower(self.session, enc.encode(r.raw_users[sl].tolist(), feats, r.target_time[sl]))
            targets = r.raw_targets[sl]
            seen = [set(h.tolist()) - {t} if exclude_seen else set() for h, t in zip(hist, targets, strict=True)]
            fetch = max_k + max((len(s) for s in seen), default=0)
            _, found = idx.search(self.index, q, fetch)
            for j, (row, target, s) in enumerate(zip(found, targets, seen, strict=True)):
                raw = self.item_ids[row[row >= 0]]
                if s:
                    raw = raw[~np.isin(raw, list(s))]
                hit = np.flatnonzero(raw[:max_k] == target)
                if hit.size:
                    out[lo + j] = hit[0]
        return out


def slices(
    data: SequenceData, r: Rows, counts: torch.Tensor, production: ModelVersion | None,
    production_end: float | None = None,
) -> dict[str, np.ndarray]:
    """Slice name → boolean mask over the rows (see the module docstring). ``production_end``: unix time
    at which production's training data ends (its snapshot's end)."""
    out: dict[str, np.ndarray] = {}
    if production is not None:
        known_users = np.load(production.path / "vocab" / "user_id.npy")[1:]
        new_user = ~np.isin(r.raw_users, known_users)
        out["user=new"], out["user=returning"] = new_user, ~new_user
        if production_end is not None:
            out["target=new"] = np.asarray(r.target_time, dtype=np.float64) >= production_end
    hist = r.pos.numpy()
    edges = (*HISTORY_BUCKETS, np.inf)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        name = f"history={lo}+" if hi == np.inf else f"history={lo}-{int(hi) - 1}"
        out[name] = (hist >= lo) & (hist < hi)
    order = torch.argsort(counts[1:], descending=True, stable=True).numpy() + 1  # item indices, most trained first
    tier = np.full(len(counts), 2)
    n = len(order)
    tier[order[: int(np.ceil(HEAD_SHARE * n))]] = 0
    tier[order[int(np.ceil(HEAD_SHARE * n)) : int(np.ceil(TORSO_SHARE * n))]] = 1
    tier[counts.numpy() == 0] = 2  # an item never trained on is tail whatever the ordering of ties
    t = tier[r.targets.numpy()]
    out["item=head"], out["item=torso"], out["item=tail"] = t == 0, t == 1, t == 2
    if production is not None:
        out["item=new"] = ~np.isin(r.raw_targets, production.item_ids)
    return out


def differences(
    candidate: np.ndarray, production: np.ndarray, ks: tuple[int, ...], groups: torch.Tensor | None = None
) -> dict[str, dict[str, float]]:
    """Metric → paired difference candidate − production over the same rows (``{"diff", "se", "rows"}``;
    ``groups``: the rows' users when a user has several, for a user-clustered error)."""
    a, b = row_metrics(torch.as_tensor(candidate), ks), row_metrics(torch.as_tensor(production), ks)
    return {name: paired_difference(a[name], b[name], groups) for name in a}


def challenger(
    registry: str | Path | None, model: str, signature: str, production: ModelVersion,
    production_end: float | None, feature_dir: str | Path, last_event: float,
) -> tuple[ModelVersion | None, float | None, str]:
    """The newest registered version of ``model`` with this training ``signature`` that is not production,
    whose data ends after production's and before ``last_event`` (so events exist that neither saw);
    with its data end — or None and why there is none."""
    from .registry import TAG_PREFIX, Registry, VersionError

    reg = Registry(registry)
    for v in reversed(reg.versions(model)):
        if f"{TAG_PREFIX}{model}:{v}" == production.tag:
            break  # older ones were registered before production
        try:  # choose on model.json alone; verify (checksums, ONNX probe) only the one chosen
            meta = json.loads((reg.root / model / v / "model.json").read_text())
        except (OSError, ValueError) as e:
            logger.warning("backtest: skipping %s:%s (%s)", model, v, e)
            continue
        end = data_end(meta, feature_dir)
        if meta.get("training_signature") != signature or end is None or end > last_event:
            continue
        if production_end is not None and end <= production_end:
            break
        try:
            return reg.get(f"{model}:{v}"), end, ""
        except VersionError as e:
            logger.warning("backtest: skipping %s:%s (%s)", model, v, e)
    return None, None, f"no version of this recipe held back since {production.tag} with events after its data"


def backtest(
    data: SequenceData, user_ids: np.ndarray, item_ids: np.ndarray, tables: Any, production: ServedVersion,
    held: ModelVersion, since: float, exclude_seen: bool, ks: tuple[int, ...],
) -> dict[str, Any]:
    """The held-back version and production on every event since ``since`` (see the module docstring):
    ``{"challenger", "since", "rows", "users", "challenger_metrics", "production_metrics", "difference"}``,
    the difference being challenger − production, clustered by user."""
    r = fresh_rows(data, since, user_ids, item_ids)
    out: dict[str, Any] = {"challenger": held.tag, "production": production.mv.tag,
                           "since": pd.Timestamp(since, unit="s", tz="UTC").isoformat(), "rows": len(r.pos),
                           "users": int(torch.unique(r.users).numel())}  # fmt: skip
    if not len(r.pos):
        return out
    max_k = max(ks)
    held_back = ServedVersion(held, tables.items)
    ranks = {who: v.ranks(data, r, item_ids, tables.users, exclude_seen, max_k)
             for who, v in (("challenger", held_back), ("production", production))}  # fmt: skip
    for who, rk in ranks.items():
        out[f"{who}_metrics"] = metrics_from_ranks(torch.as_tensor(rk), ks)
    out["difference"] = differences(ranks["challenger"], ranks["production"], ks, r.users)
    return out


def sliced(ranks: dict[str, np.ndarray], masks: dict[str, np.ndarray], ks: tuple[int, ...]) -> dict[str, Any]:
    """Per slice: its row count, each ranker's metrics on those rows (rankers: name → (R,) ranks) and,
    when both a candidate and production are ranked, their paired ``difference``."""
    out: dict[str, Any] = {}
    for name, mask in masks.items():
        n = int(mask.sum())
        entry: dict[str, Any] = {"rows": n}
        for who, rk in ranks.items():
            entry[who] = metrics_from_ranks(torch.as_tensor(rk[mask]), ks) if n else {}
        if n and "candidate" in ranks and "production" in ranks:
            entry["difference"] = differences(ranks["candidate"][mask], ranks["production"][mask], ks)
        out[name] = entry
    return out
