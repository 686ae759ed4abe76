"""The feature store's event store and its immutable, fingerprinted snapshots.

Layout under ``features.dir`` (the store root)::

    events/<start>_<end>.parquet   the interactions released in [start, end) — one partition per data
                                   interval (``begin_<end>`` for the first: everything before its end)
    snapshots/<id>/                 one published state of the data: the canonical tables and behaviour
                                   snapshots of every stored event up to its end, validation.json and
                                   Data Docs, source.json, the Feast registry it was applied and
                                   materialized with (registry.db), and snapshot.json — written last,
                                   atomically: a directory without it is unpublished and never read
    latest.json                    the newest published snapshot (atomically replaced)
    registry.db, online_store.db   the live Feast registry and online store (what serving reads)

A snapshot's id is ``<end>-<fingerprint>``; its files never change once it is published, so a training
run that pins one reads the same bytes from start to end whatever the features DAG does meanwhile. A
data interval that brings nothing new publishes nothing (``unchanged``): the training DAG is not
triggered and no version is registered for the same data twice.

Intervals: ``recall_features`` passes Airflow's ``data_interval_start/end``; every source is read for
that interval, so a source holding the whole history (the synthetic world, ML-100K) *replays* it day by
day or week by week. Partitions never overlap: a re-run of the same interval rewrites its own partition
with the same bytes; an interval overlapping a stored partition with other bounds is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .datasets import Tables
from .registry import atomic_write_json, file_lock

logger = logging.getLogger(__name__)

EVENTS, SNAPSHOTS, LATEST, MANIFEST = "events", "snapshots", "latest.json", "snapshot.json"
_STAMP = "%Y%m%dT%H%M%S"
_PART = re.compile(r"^(begin|\d{8}T\d{6})_(\d{8}T\d{6})\.parquet$")


class SnapshotError(ValueError):
    """A snapshot or interval the store cannot use; the message says why and what to do."""


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime(_STAMP)


def _parse(s: str) -> dt.datetime:
    return dt.datetime.strptime(s, _STAMP).replace(tzinfo=dt.UTC)


def as_time(value: Any) -> dt.datetime:
    """A timezone-aware UTC time from a datetime, pendulum time or ISO-8601 string (naive = UTC)."""
    t = pd.Timestamp(value)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.floor("s").to_pydatetime()


@dataclass(frozen=True)
class Interval:
    start: dt.datetime | None  # None: everything before ``end``
    end: dt.datetime

    def __post_init__(self) -> None:
        if self.start is not None and self.start >= self.end:
            raise SnapshotError(f"data interval start {self.start} is not before its end {self.end}")

    @property
    def name(self) -> str:
        return f"{'begin' if self.start is None else _stamp(self.start)}_{_stamp(self.end)}"

    def __str__(self) -> str:
        return f"[{'the beginning' if self.start is None else self.start.isoformat()}, {self.end.isoformat()})"


def interval(start: Any = None, end: Any = None) -> Interval:
    """The data interval to release; no end means now. No start, or an empty interval (what Airflow gives a
    manually triggered run), means "everything new since the last stored partition"."""
    end = as_time(end if end is not None else dt.datetime.now(dt.UTC))
    start = None if start is None else as_time(start)
    return Interval(start if start is not None and start < end else None, end)


def partitions(root: str | Path) -> list[Interval]:
    """The stored partitions, by end time."""
    d = Path(root) / EVENTS
    found = []
    for p in d.glob("*.parquet") if d.is_dir() else []:
        m = _PART.match(p.name)
        if m:
            found.append(Interval(None if m[1] == "begin" else _parse(m[1]), _parse(m[2])))
    return sorted(found, key=lambda iv: iv.end)


def _coverage(root: Path, iv: Interval) -> Interval:
    """What a run for ``iv`` stores: the stored partition with the same end (a re-run redoes exactly
    it), else ``iv`` widened back to the last stored end before it (never a gap: runs the scheduler
    skipped are caught up; no start means "since the last stored end"), or everything before its end
    when nothing earlier is stored (the first run bootstraps the store). Refuses overlaps with
    partitions of other bounds, and a start-less run ending inside the stored history."""
    parts = partitions(root)
    same_end = [p for p in parts if p.end == iv.end]
    if same_end:
        return same_end[0]
    if iv.start is None and parts and parts[-1].end > iv.end:
        raise SnapshotError(
            f"the event store already holds data up to {parts[-1].end.isoformat()} and has no partition "
            f"ending at {iv.end.isoformat()} to redo; release new data with a later end"
        )
    before = [p.end for p in parts if p.end <= (iv.start or iv.end)]
    cover = Interval(max(before) if before else None, iv.end)
    for p in parts:
        lo = p.start or dt.datetime.min.replace(tzinfo=dt.UTC)
        clo = cover.start or dt.datetime.min.replace(tzinfo=dt.UTC)
        if clo < p.end and lo < cover.end:
            raise SnapshotError(
                f"data interval {iv} overlaps the stored partition {p} ({EVENTS}/{p.name}.parquet); "
                "the event store holds non-overlapping intervals — re-run that interval or pick adjacent ones"
            )
    return cover


def _write_table(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False).replace_schema_metadata(None),
                   tmp, compression="zstd", store_schema=False)  # fmt: skip
    tmp.replace(path)


def locked(root: str | Path):
    """The store's lock: one writer at a time for the event store, the snapshot being built, the live
    Feast registry and online store (a features DAG run and a `recall features run` may overlap)."""
    return file_lock(Path(root) / ".lock")


def store_events(root: str | Path, interactions: pd.DataFrame, iv: Interval) -> tuple[Interval, int]:
    """Appends the source's events of ``iv`` to the event store as one partition (idempotent: the same
    interval and source give the same bytes). Returns the partition and its row count."""
    root = Path(root)
    cover = _coverage(root, iv)
    ts = pd.to_datetime(interactions.event_timestamp, utc=True)
    keep = ts < pd.Timestamp(cover.end)
    if cover.start is not None:
        keep &= ts >= pd.Timestamp(cover.start)
    part = interactions[keep.to_numpy()].copy()
    part["event_timestamp"] = ts[keep].astype("datetime64[us, UTC]").to_numpy()
    (root / EVENTS).mkdir(parents=True, exist_ok=True)
    _write_table(part, root / EVENTS / f"{cover.name}.parquet")
    return cover, len(part)


def stored_events(root: str | Path, end: dt.datetime) -> pd.DataFrame:
    """Every stored event of the partitions ending at or before ``end``, partitions in time order and
    each in its source order (the tie rule's file order)."""
    parts = [p for p in partitions(root) if p.end <= end]
    frames = [pd.read_parquet(Path(root) / EVENTS / f"{p.name}.parquet") for p in parts]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def released(tables: Tables, root: str | Path, end: dt.datetime) -> Tables:
    """The tables as of ``end``: the stored events, and the users and items known by then (a source's
    profile or catalogue rows dated later are not released yet; ones the events use always are)."""
    inter = stored_events(root, end)
    if inter.empty:
        return Tables(inter, tables.users.iloc[:0], tables.items.iloc[:0])
    cut = pd.Timestamp(end)

    def known(df: pd.DataFrame, key: str, used: pd.Series) -> pd.DataFrame:
        if "event_timestamp" not in df:
            return df
        when = pd.to_datetime(df.event_timestamp, utc=True)
        return df[(when < cut).to_numpy() | df[key].isin(used).to_numpy()].reset_index(drop=True)

    return Tables(inter, known(tables.users, "user_id", inter.user_id), known(tables.items, "item_id", inter.item_id))


def fingerprint(tables: Tables, max_len: int) -> str:
    """Content hash of everything a snapshot holds: interactions, users, items, and the history length."""
    h = hashlib.sha256(f"L={max_len};".encode())
    for df in (tables.interactions, tables.users, tables.items):
        df = df[sorted(df.columns)].copy()
        for c in df.columns:  # list cells (genres) hash as their joined values
            if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], list | tuple | np.ndarray):
                df[c] = df[c].map(lambda v: "\x1f".join(map(str, v)))
        h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
        h.update(",".join(df.columns).encode())
    return h.hexdigest()[:16]


def snapshot_dir(root: str | Path, snapshot_id: str) -> Path:
    return Path(root) / SNAPSHOTS / snapshot_id


def manifest(root: str | Path, snapshot_id: str) -> dict[str, Any]:
    """A published snapshot's manifest; refuses an unknown or unpublished one."""
    p = snapshot_dir(root, snapshot_id) / MANIFEST
    if not p.is_file():
        have = ", ".join(published(root)[-5:]) or "none"
        raise SnapshotError(f"snapshot {snapshot_id!r} is not published in {root} (latest published: {have})")
    return json.loads(p.read_text())


def published(root: str | Path) -> list[str]:
    d = Path(root) / SNAPSHOTS
    return sorted(p.parent.name for p in d.glob(f"*/{MANIFEST}")) if d.is_dir() else []


def latest(root: str | Path) -> dict[str, Any] | None:
    p = Path(root) / LATEST
    return json.loads(p.read_text()) if p.is_file() else None


def publish(root: str | Path, snapshot_id: str, info: dict[str, Any], registry_db: Path | None) -> dict[str, Any]:
    """Makes a built, validated, applied and materialized snapshot visible: the Feast registry state is
    copied in, the manifest written (atomically, last), then ``latest.json`` moves to it."""
    d = snapshot_dir(root, snapshot_id)
    if (d / MANIFEST).exists():  # published already (a retried step): immutable, nothing to redo
        return json.loads((d / MANIFEST).read_text())
    if registry_db is not None and registry_db.exists():
        tmp = d / ".registry.db.tmp"
        shutil.copy2(registry_db, tmp)
        tmp.replace(d / "registry.db")
    validation = json.loads((d / "validation.json").read_text()) if (d / "validation.json").exists() else {}
    if not validation.get("success"):
        raise SnapshotError(f"snapshot {snapshot_id} has not passed validation; it cannot be published")
    record = {"id": snapshot_id, "dir": str(d.resolve()), **info,
              "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
    atomic_write_json(d / MANIFEST, record)
    current = latest(root)
    if current is None or current["end"] <= record["end"]:
        atomic_write_json(Path(root) / LATEST, record)
    logger.info("published snapshot %s", snapshot_id)
    return record
