"""Feature store step: apply the Feast definitions, materialize to the online store, build training
sets with point-in-time joins, and read online features for serving.

The store is configured by ``feature_repo/feature_store.yaml`` (SQLite online store) or
``feature_repo/feature_store.redis.yaml`` with ``${RECALL_FEATURE_DIR}`` (the ingested tables and the
registry/online files) and ``${REDIS_CONNECTION}`` substituted here, never hard-coded.

Point in time: a ``user_behaviour`` snapshot holds the history up to and including its event. A
training example whose target has event key k (its time, same-second ties spread by 1 µs in file order:
:func:`components.ingest.event_order`) asks for the features as of k − 1 µs, so its history is exactly
the events before the target in the trainer's order, and no profile value is newer than the target.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .registry import atomic_write_json

os.environ.setdefault("FEAST_USAGE", "False")

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1] / "feature_repo"
CONFIGS = {"sqlite": REPO / "feature_store.yaml", "redis": REPO / "feature_store.redis.yaml"}
BEHAVIOUR = ["hist_item_ids", "hist_timestamps", "hist_len"]
ONE_MICROSECOND = pd.Timedelta(microseconds=1)


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str  # the store's directory: the live registry and the SQLite online store live here
    online: str = "sqlite"  # sqlite | redis
    redis: str = "localhost:6379"
    registry: str | None = None  # another registry file (a snapshot's, for its point-in-time joins)

    def __post_init__(self) -> None:
        if self.online not in CONFIGS:
            raise ValueError(f"unknown online store {self.online!r}; choose one of: {', '.join(CONFIGS)}")


def _render(cfg: StoreConfig) -> dict[str, Any]:
    text = CONFIGS[cfg.online].read_text()
    values = {"RECALL_FEATURE_DIR": str(Path(cfg.data_dir).resolve()), "REDIS_CONNECTION": cfg.redis}
    text = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), os.environ.get(m.group(1), m.group(0))), text)
    return yaml.safe_load(text)


def store(cfg: StoreConfig):
    """A Feast ``FeatureStore`` for ``cfg`` (the YAML config rendered with its paths)."""
    import feature_repo  # noqa: F401  (before Feast: its import without typeguard, see the package docstring)

    # isort: split
    from feast import FeatureStore, RepoConfig

    raw = _render(cfg)
    if cfg.registry is not None:
        raw["registry"]["path"] = str(Path(cfg.registry).resolve())
    config = RepoConfig(**raw)
    config.repo_path = REPO
    return FeatureStore(config=config)


def apply(cfg: StoreConfig, tables_dir: str | Path | None = None):
    """Registers entities, views (their sources: the tables in ``tables_dir``, a snapshot; default the
    store's directory), the on-demand context view and the feature services."""
    from feature_repo.definitions import build

    fs = store(cfg)
    objs = build(tables_dir or cfg.data_dir)
    fs.apply([*objs["entities"], *objs["views"], *objs["on_demand"], *objs["services"]])
    logger.info("applied %d feature views over %s to %s", len(objs["views"]), tables_dir or cfg.data_dir, cfg.data_dir)
    return fs


def _earliest(data_dir: Path) -> dt.datetime:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    lows = [
        pc.min(pq.read_table(data_dir / f"{t}.parquet", columns=["event_timestamp"]).column(0)).as_py()
        for t in ("users", "items", "user_behaviour")
    ]
    return min(x for x in lows if x is not None) - dt.timedelta(seconds=1)


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def materialize(
    fs, cfg: StoreConfig, tables_dir: str | Path | None = None, end: dt.datetime | None = None
) -> dict[str, str]:
    """Loads the feature values up to ``end`` (default now) into the online store, incrementally.

    A view never materialized before is loaded from the earliest timestamp in the data (Feast's
    default first window, now − TTL, would miss old data such as ML-100K's 1997-98 events); later
    calls continue from where the previous one ended (``materialize_incremental``). A view already
    materialized past ``end`` (a re-run of an earlier interval) is left alone: the online store never
    goes back in time.
    """
    end = end or dt.datetime.now(dt.UTC)
    done: dict[str, str] = {}
    views = fs.list_feature_views()
    first = [v.name for v in views if v.most_recent_end_time is None]
    if first:
        fs.materialize(start_date=_earliest(Path(tables_dir or cfg.data_dir)), end_date=end, feature_views=first)
        done |= {v: "full" for v in first}
    rest = [v.name for v in views if v.name not in first and _utc(v.most_recent_end_time) < end]
    if rest:
        fs.materialize_incremental(end_date=end, feature_views=rest)
        done |= {v: "incremental" for v in rest}
    done |= {v.name: "already later" for v in views if v.name not in done}
    return done


def training_examples(interactions: pd.DataFrame, holdout: int = 2) -> pd.DataFrame:
    """Every training target, as the leave-last-out split has them: each user's events except the last
    ``holdout`` (validation and test) — all events of a user with too few to hold any out — in the
    trainer's order (time, stable on ties); ``target_timestamp`` is the event's key
    (:func:`components.ingest.event_order`), so same-second events stay distinct and ordered."""
    from .ingest import event_order

    df, keys = event_order(interactions)
    df["event_timestamp"] = pd.to_datetime(keys, unit="us", utc=True)
    from_end = df.groupby("user_id").cumcount(ascending=False).to_numpy()
    count = df.groupby("user_id").user_id.transform("size").to_numpy()
    out = df[(from_end >= holdout) | (count <= holdout)].reset_index(drop=True)
    out.insert(0, "example_id", np.arange(len(out), dtype=np.int64))
    return out.rename(columns={"item_id": "target_item_id", "event_timestamp": "target_timestamp"})


def training_set(fs, examples: pd.DataFrame, service: str | None = None, features: list[str] | None = None):
    """Point-in-time features for every example: exactly one row per example, in example order.

    ``examples`` has ``example_id``, ``user_id`` and ``target_timestamp``; features are read as of
    ``target_timestamp − 1 µs`` and the context as of the target time itself.
    """
    entity = pd.DataFrame(
        {
            "example_id": examples.example_id.to_numpy(),
            "user_id": examples.user_id.to_numpy(),
            "event_timestamp": pd.to_datetime(examples.target_timestamp, utc=True) - ONE_MICROSECOND,
            "request_time": pd.to_datetime(examples.target_timestamp, utc=True),
        }
    )
    refs = fs.get_feature_service(service) if service else (features or [f"user_behaviour:{f}" for f in BEHAVIOUR])
    df = fs.get_historical_features(entity_df=entity, features=refs).to_df()
    if len(df) != len(entity) or df.example_id.duplicated().any():
        raise RuntimeError(
            f"point-in-time join returned {len(df)} rows for {len(entity)} examples; expected exactly one per example"
        )
    df = df.sort_values("example_id").reset_index(drop=True)
    extra = [c for c in examples.columns if c not in ("example_id", "user_id")]
    df = df.merge(examples[["example_id", *extra]], on="example_id", how="left", validate="one_to_one")
    if "hist_item_ids" in df:  # a first event has no earlier snapshot: an empty history
        for col in ("hist_item_ids", "hist_timestamps"):
            if col in df:
                df[col] = df[col].map(lambda x: [] if x is None else list(x))
        df["hist_len"] = df.hist_len.fillna(0).astype("int64")
    return df


def history_parity(tables: Any, examples: pd.DataFrame, feast: pd.DataFrame, max_len: int) -> dict[str, Any]:
    """Train/serve parity: for every training target, the raw item ids the trainer feeds as its history
    (the user's events before it in the encoded order, the last ``max_len``) against the
    ``hist_item_ids`` Feast's point-in-time join returned, and — where the join has them — the context
    the trainer gives the target (its moment's hour, weekday, …) against Feast's on-demand ``context``
    view. Also counts the targets with a same-second predecessor (where the tie rule matters)."""
    from .datasets import encode

    enc = encode(tables, max_len=max_len)
    data = enc.data
    pos = examples.groupby("user_id").cumcount().to_numpy()  # examples are each user's events in order
    uidx = np.searchsorted(enc.user_ids[1:], examples.user_id.to_numpy()) + 1
    start = data.indptr[uidx].numpy()
    items = data.items.numpy()
    if not (enc.item_ids[items[start + pos]] == examples.target_item_id.to_numpy()).all():
        raise RuntimeError("training examples are not in the trainer's event order")
    mismatches, first = 0, None
    for i, (s, p, got) in enumerate(zip(start, pos, feast.hist_item_ids, strict=True)):
        expected = enc.item_ids[items[s + max(0, p - max_len) : s + p]].tolist()
        if list(got) != expected:
            mismatches += 1
            first = first or {"example": i, "feast": list(got), "trainer": expected}
    context: dict[str, int] = {}
    for name, values in data.event_table.items():
        if name in feast:
            trainer = values.numpy()[start + pos].astype(np.int64) - 1
            wrong = np.flatnonzero(trainer != feast[name].to_numpy(dtype=np.int64))
            context[name] = len(wrong)
            if len(wrong) and first is None:
                first = {"example": int(wrong[0]), "feature": name, "feast": int(feast[name].iloc[wrong[0]]),
                         "trainer": int(trainer[wrong[0]])}  # fmt: skip
    sec = examples.target_timestamp.dt.floor("s")
    ties = int((sec.groupby(examples.user_id).diff() == pd.Timedelta(0)).sum())
    return {"targets": len(examples), "mismatches": mismatches, "context_mismatches": context, "first": first,
            "same_second_predecessors": ties}  # fmt: skip


def online_features(fs, user_ids: list[int], service: str | None = None, request_time: dt.datetime | None = None):
    """The latest features of these users from the online store (what serving calls).

    Returns a dict of column → list, one entry per user, in order; a user the store does not know gets
    ``None`` values (serving then falls back to popularity).
    """
    t = request_time or dt.datetime.now(dt.UTC)
    rows = [{"user_id": int(u), "request_time": t} for u in user_ids]
    refs = fs.get_feature_service(service) if service else [f"user_behaviour:{f}" for f in BEHAVIOUR]
    return fs.get_online_features(features=refs, entity_rows=rows).to_dict()


PUSH_SOURCES = ("user_behaviour_push", "user_seen_push")
PUSH_LOCK = ".push.lock"  # held by every push and by materialize: a push never interleaves with a load


def push_events(
    fs, root: str | Path, events: pd.DataFrame, max_len: int, on_pushed: Any = None
) -> dict[str, int]:
    """New interactions → the online store at once, through the behaviour and seen-set push sources.

    ``events`` has ``user_id``, ``item_id`` and ``event_timestamp``. Each user's online history (the last
    ``max_len`` items with their times, in seconds) and seen set are read, the events merged in time
    order (one in the same second as a stored one comes after it) and both rows pushed, so the next
    request for that user sees them. Read, merge, write and ``on_pushed(users)`` (serving's cache
    invalidation) hold the store's push lock: concurrent pushes (several serving workers) and the
    daily materialize (which takes the same lock) never lose a click.

    A row is stamped with the user's latest event, or just after the stored row when that is not later
    (Feast's Redis store ignores a write not newer than what it holds, and its timestamps read back in
    whole seconds): a late or same-second click is never dropped. The daily features run ingests the
    same events from the source of record; its materialize writes the same histories. (Redis never
    replaces a newer pushed row with an older batch one; SQLite writes unconditionally, so a
    materialize whose interval ends before a pushed click undoes it until the next run.)
    """
    from .registry import file_lock

    if events.empty:
        return {"users": 0, "events": 0}
    ev = events[["user_id", "item_id", "event_timestamp"]].copy()
    ev["t"] = pd.to_datetime(ev.event_timestamp, utc=True).astype("datetime64[us, UTC]")
    ev = ev.sort_values(["user_id", "t"], kind="stable")
    users = ev.user_id.astype("int64").unique().tolist()
    refs = ["user_behaviour:hist_item_ids", "user_behaviour:hist_timestamps", "user_seen:seen_item_ids"]
    beh, seen = [], []
    with file_lock(Path(root) / PUSH_LOCK):
        cur = fs.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users])
        cur = cur.to_dict(include_event_timestamps=True)
        for j, (u, g) in enumerate(ev.groupby("user_id", sort=False)):
            items = list(cur["hist_item_ids"][j] or []) + g.item_id.astype("int64").tolist()
            secs = list(cur["hist_timestamps"][j] or []) + (g.t.astype("int64") // 1_000_000).tolist()
            order = sorted(range(len(items)), key=lambda i: secs[i])[-max_len:]  # stable: stored first on ties
            known = list(cur["seen_item_ids"][j] or [])
            new = [i for i in dict.fromkeys(g.item_id.astype("int64").tolist()) if i not in set(known)]
            stored = max(cur["hist_item_ids__ts"][j] or 0, cur["seen_item_ids__ts"][j] or 0)  # seconds
            t = max(g.t.max(), pd.Timestamp(stored + 1, unit="s", tz="UTC") if stored else g.t.max())
            beh.append({"user_id": int(u), "event_timestamp": t, "hist_item_ids": [items[i] for i in order],
                        "hist_timestamps": [secs[i] for i in order], "hist_len": len(order)})  # fmt: skip
            seen.append({"user_id": int(u), "event_timestamp": t, "seen_item_ids": known + new})
        fs.push(PUSH_SOURCES[0], pd.DataFrame(beh))
        fs.push(PUSH_SOURCES[1], pd.DataFrame(seen))
        if on_pushed is not None:
            on_pushed(users)
    return {"users": len(users), "events": len(ev)}


STEPS = ("ingest", "validate", "apply", "materialize")
PENDING = "pending.json"  # the last ingest's record: which snapshot the next steps build and publish


def ingest_interval(cfg: Any, iv: Any = None) -> dict[str, Any]:
    """Ingest step: the source's events of the data interval go to the event store; the tables as of the
    interval's end become a new snapshot directory — unless nothing changed (``unchanged``: the latest
    published snapshot already holds exactly this data) or it is already published (a re-run).

    Without an interval start (a manual run, the CLI), everything new since the last stored partition up
    to the interval's end (default now) is released.
    An event later than the present moment is bad data in any interval: it is released at once, so
    that validation names it (in a replay, events after the interval's end are simply not due yet).
    """
    from . import snapshots as sn
    from .train import load_tables

    root = Path(cfg.features.dir)
    tables = load_tables(cfg)
    with sn.locked(root):  # the partitions are read and written by one run at a time
        return _ingest_locked(cfg, root, tables, iv or sn.interval())


def _ingest_locked(cfg: Any, root: Path, tables: Any, iv: Any) -> dict[str, Any]:
    from . import snapshots as sn
    from .ingest import ingest

    inter = tables.interactions
    now = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=cfg.validation.future_slack_s)
    impossible = pd.to_datetime(inter.event_timestamp, utc=True) > now
    iv, n_new = sn.store_events(root, inter[~impossible.to_numpy()], iv)  # iv: what the partition covers
    released = sn.released(tables, root, iv.end)
    if impossible.any():
        released.interactions = pd.concat([released.interactions, inter[impossible.to_numpy()]], ignore_index=True)
        n_new += int(impossible.sum())
    L = cfg.train.max_len
    fp = sn.fingerprint(released, L)
    record: dict[str, Any] = {
        "snapshot": f"{sn._stamp(iv.end)}-{fp[:8]}", "interval": str(iv), "end": iv.end.isoformat(),
        "partition": iv.name, "new_events": n_new, "fingerprint": fp, "max_len": L,
        "data": cfg.data_settings(),
    }  # fmt: skip
    current = sn.latest(root)
    if released.interactions.empty:
        record |= {"status": "unchanged", "why": f"no events up to {iv.end.isoformat()} yet: nothing to publish"}
    elif current is not None and current["fingerprint"] == fp:
        why = f"no new data in {iv}: snapshot {current['id']} already holds exactly these tables"
        record |= {"status": "unchanged", "snapshot": current["id"], "why": why}
    elif (sn.snapshot_dir(root, record["snapshot"]) / sn.MANIFEST).exists():
        record |= {"status": "published", "why": f"snapshot {record['snapshot']} is already published"}
    else:
        d = sn.snapshot_dir(root, record["snapshot"])
        res = ingest(released, d, L)
        record |= {"status": "new", "rows": res.rows}
        atomic_write_json(d / "source.json", record)
    atomic_write_json(root / PENDING, record)
    return record


def pending(root: str | Path, snapshot: str | None = None) -> dict[str, Any]:
    """The record of the snapshot being built (``snapshot``, or the last ingested one)."""
    p = Path(root) / PENDING
    if not p.exists():
        raise FileNotFoundError(f"{root} has no ingested data: run the ingest step first")
    from . import snapshots as sn

    record = json.loads(p.read_text())
    if snapshot is not None and record["snapshot"] != snapshot:
        src = sn.snapshot_dir(root, snapshot) / "source.json"
        if not src.exists():
            raise FileNotFoundError(f"snapshot {snapshot} was never ingested into {root}")
        record = {**json.loads(src.read_text()), "status": "new"}
    if record["status"] == "new" and (sn.snapshot_dir(root, record["snapshot"]) / sn.MANIFEST).exists():
        record |= {"status": "published", "why": f"snapshot {record['snapshot']} is already published"}
    return record


def run_pipeline(cfg: Any, steps: tuple[str, ...] = STEPS, interval: Any = None,
                 snapshot: str | None = None) -> dict[str, Any]:  # fmt: skip
    """ingest → validate → apply → materialize (→ publish) for a ``RunConfig`` and a data interval; returns
    the snapshot record, each step's wall time (s) and row counts. Validation failure raises before
    anything reaches the feature store; a snapshot is published only after materialize succeeded."""
    import time

    from . import snapshots as sn
    from .validate import validate

    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    root = Path(cfg.features.dir)
    store_cfg = StoreConfig(str(root), cfg.features.online, cfg.features.redis)
    out: dict[str, Any] = {"seconds": {}, "rows": {}}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        result = fn()
        out["seconds"][name] = time.perf_counter() - t0
        logger.info("%s: %.1fs", name, out["seconds"][name])
        return result

    if "ingest" in steps:
        record = timed("ingest", lambda: ingest_interval(cfg, interval))
        snapshot = record["snapshot"]
    else:
        record = pending(root, snapshot)
    out |= {k: record.get(k) for k in ("snapshot", "status", "why", "interval", "new_events")}
    out["rows"].update(record.get("rows", {}))
    if record["status"] != "new":
        logger.info("nothing to build: %s", record.get("why"))
        return out
    d = sn.snapshot_dir(root, record["snapshot"])
    if "validate" in steps:
        vcfg = dataclasses.replace(cfg.validation, max_len=cfg.train.max_len)
        rep = timed("validate", lambda: validate(d, vcfg))
        out["data_docs"] = rep.data_docs
    if "apply" in steps:
        with sn.locked(root):
            timed("apply", lambda: apply(store_cfg, d))
    if "materialize" in steps:
        end = dt.datetime.fromisoformat(record["end"])

        def load_and_publish() -> dict[str, Any]:
            from .registry import file_lock

            # The live registry must be this snapshot's when it is copied in; a push must not read a
            # user's row before this load and write it back after.
            with sn.locked(root), file_lock(root / PUSH_LOCK):
                fs = store(store_cfg)
                if not _applied(fs, d):  # another run applied its snapshot in between
                    fs = apply(store_cfg, d)
                materialize(fs, store_cfg, d, end)
                return sn.publish(root, record["snapshot"], record, root / "registry.db")

        out["published"] = timed("materialize", load_and_publish)
    return out


def _applied(fs, tables_dir: Path) -> bool:
    """Whether the live registry's behaviour view reads this snapshot's tables."""
    try:
        path = fs.get_feature_view("user_behaviour").batch_source.path
    except Exception:  # noqa: BLE001 - not applied yet
        return False
    return Path(path).resolve() == (Path(tables_dir) / "user_behaviour.parquet").resolve()
