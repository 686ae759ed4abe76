"""Ingest step: a source → the canonical parquet tables plus the ``user_behaviour`` snapshot table.

Sources: ``synthetic``, ``ml100k``, ``parquet`` (a directory of canonical tables) or ``file``: any
parquet/CSV of interactions with a column mapping in config (``data.columns``), with optional user and
item files. Output, under a run-scoped directory::

    interactions.parquet   user_id int64, item_id int64, event_timestamp timestamp[us, UTC], rating float64
    users.parquet          user_id + profile columns + event_timestamp
    items.parquet          item_id + attributes + event_timestamp
    user_behaviour.parquet one row per event, at the event's key (its time, ties spread by 1 µs in file
                           order, see :func:`event_order`): hist_item_ids list<int64> (the last L items
                           up to and including that event, oldest → newest), hist_timestamps
                           list<int64> (unix seconds), hist_len
    user_seen.parquet      one row per user, at the key of their last event: seen_item_ids list<int64>,
                           every distinct item they interacted with (first interaction first) — what
                           serving excludes with ``exclude_seen``, however long ago it was seen

A snapshot is the state right after its event, which is what the online store must hold. A training
example whose target has key k therefore reads the snapshot as of k − 1 µs (see components.features):
its history is exactly the events before its target in the trainer's order. Ingest is idempotent: the
same input writes the same bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .datasets import Tables

logger = logging.getLogger(__name__)
progress_log = logging.getLogger("recall.progress")  # what the user should see without --verbose

TABLES = ("interactions", "users", "items", "user_behaviour", "user_seen")
CANONICAL_INTERACTIONS = ("user_id", "item_id", "event_timestamp", "rating")


ORDINAL_EPOCH = pd.Timestamp("2000-01-01", tz="UTC")  # ordinal r is read as this + r seconds (r: dense rank)
_UNIT_FLOORS = (("ns", 1e17), ("us", 1e14), ("ms", 1e11), ("s", 6.3e8))  # unix values after ~1990 in each unit


def timestamp_unit(ts: pd.Series) -> str:
    """What ``auto`` takes a timestamp column for: text → ``iso``; numbers by magnitude — unix
    nanoseconds, microseconds, milliseconds or seconds when their largest value is a time after 1990 in
    that unit, else ``ordinal`` (small numbers that can only order events)."""
    if not pd.api.types.is_numeric_dtype(ts):
        return "iso"
    top = float(ts.max())
    return next((unit for unit, floor in _UNIT_FLOORS if top >= floor), "ordinal")


def parse_timestamps(ts: pd.Series, unit: str, where: str) -> pd.Series:
    """A timestamp column in ``unit`` (see ``data.timestamp_unit``) → UTC datetimes."""
    chosen = timestamp_unit(ts) if unit == "auto" else unit
    if unit == "auto":
        progress_log.info("%s: timestamps read as %s (auto; set data.timestamp_unit to choose)", where, chosen)
    try:
        if chosen == "iso":
            return pd.to_datetime(ts, utc=True, format="ISO8601")
        if not pd.api.types.is_numeric_dtype(ts):
            raise ValueError(f"unit {chosen!r} needs numbers, the column holds {ts.dtype}")
        if chosen == "ordinal":
            rank = ts.rank(method="dense").astype("int64") - 1  # equal ordinals stay ties
            return ORDINAL_EPOCH + pd.to_timedelta(rank, unit="s")
        return pd.to_datetime(ts, unit=chosen, utc=True)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{where}: cannot read the timestamps as {chosen} (data.timestamp_unit): {e}") from None


def read_interactions_file(
    path: str | Path, columns: dict[str, str] | None = None, timestamp_unit: str = "auto"
) -> pd.DataFrame:
    """Any parquet/CSV of interactions → canonical columns. ``columns`` maps canonical → source names,
    e.g. ``{"user_id": "uid", "item_id": "movie", "event_timestamp": "ts"}``; ``timestamp_unit`` says
    what the timestamps are (:func:`parse_timestamps`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"interactions file {path} does not exist")
    df = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    mapping = {c: c for c in CANONICAL_INTERACTIONS} | (columns or {})
    unknown = set(mapping) - set(CANONICAL_INTERACTIONS)
    if unknown:
        raise ValueError(f"unknown canonical columns {sorted(unknown)}; map any of {', '.join(CANONICAL_INTERACTIONS)}")
    missing = [f"{canon} (from {src!r})" for canon, src in mapping.items() if src not in df and canon != "rating"]
    if missing:
        example = "{user_id: uid, item_id: movie, event_timestamp: ts}"
        raise ValueError(f"{path}: missing columns {', '.join(missing)}; the file has {list(df.columns)} "
                         f"(data.columns maps yours, e.g. {example})")  # fmt: skip
    where = f"{path}: column {mapping['event_timestamp']!r}"
    ts = parse_timestamps(df[mapping["event_timestamp"]], timestamp_unit, where)
    out = pd.DataFrame(
        {
            "user_id": df[mapping["user_id"]],
            "item_id": df[mapping["item_id"]],
            "event_timestamp": ts,
        }
    )
    if mapping["rating"] in df:
        out["rating"] = df[mapping["rating"]].astype("float64")
    return out


def tables_from_interactions(inter: pd.DataFrame) -> Tables:
    """Minimal users/items tables (ids and first-seen time) for a source that only has interactions."""
    users = inter.groupby("user_id", sort=True).event_timestamp.min().reset_index()
    items = inter.groupby("item_id", sort=True).event_timestamp.min().reset_index()
    items["title"] = items.item_id.astype(str)
    items["genres"] = [[] for _ in range(len(items))]
    items["year"] = 0
    return Tables(inter, users, items)


def event_order(interactions: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The events sorted per user by time, stable on ties (file order): the order the trainer's causal
    histories use. Also returns each event's *event key*: its timestamp in µs, moved forward just enough
    to be strictly increasing within the user (``key[i] = max(ts[i], key[i-1] + 1 µs)``).

    The tie rule: two events of a user in the same second (ML-100K has thousands) keep file order,
    and the later one's history contains the earlier one — in training, in Feast's point-in-time join
    (a target at key k reads the snapshot as of k − 1 µs, which is the previous event's) and in serving.
    Keys are used only for the behaviour snapshots and training targets; the interactions table keeps
    its timestamps as given (so duplicates are still caught by validation).
    """
    df = interactions[["user_id", "item_id", "event_timestamp"]].copy()
    df["_row"] = np.arange(len(df))
    df = df.sort_values(["user_id", "event_timestamp", "_row"], kind="stable").drop(columns="_row")
    users = df.user_id.to_numpy()
    us = df.event_timestamp.to_numpy(dtype="datetime64[us]").astype(np.int64)
    n = len(df)
    first = np.maximum.accumulate(np.where(np.r_[True, users[1:] != users[:-1]], np.arange(n), 0))
    step = np.arange(n) - first  # position within the user
    shifted = pd.Series(us - step).groupby(users).cummax().to_numpy()  # running max of ts[j] − j
    return df.reset_index(drop=True), shifted + step


def user_behaviour(interactions: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """The snapshot table: one row per event, at its event key (:func:`event_order`), holding the user's
    last ``max_len`` items up to and including that event. Vectorised over all users."""
    if max_len < 1:
        raise ValueError(f"max_len must be ≥ 1, got {max_len}")
    df, keys = event_order(interactions)
    users = df.user_id.to_numpy()
    items = df.item_id.to_numpy(dtype=np.int64)
    secs = df.event_timestamp.to_numpy(dtype="datetime64[us]").astype(np.int64) // 1_000_000
    n = len(df)
    new_user = np.r_[True, users[1:] != users[:-1]]
    first = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))  # first event row of each user
    ends = np.arange(1, n + 1)  # exclusive end of each snapshot's history window
    starts = np.maximum(first, ends - max_len)
    lengths = ends - starts
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32 if lengths.sum() < 2**31 else np.int64)
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    lists = pa.LargeListArray if offsets.dtype == np.int64 else pa.ListArray
    hist = lists.from_arrays(offsets, items[gather])
    hist_ts = lists.from_arrays(offsets, secs[gather])
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(keys, pa.timestamp("us", tz="UTC")),
            "hist_item_ids": hist,
            "hist_timestamps": hist_ts,
            "hist_len": pa.array(lengths, pa.int64()),
        }
    ).to_pandas()


def user_seen(interactions: pd.DataFrame) -> pa.Table:
    """The seen-set table: one row per user at the key of their last event, with every distinct item
    they interacted with, in order of first interaction. Vectorised over all users."""
    df, keys = event_order(interactions)  # by user, then time
    users = df.user_id.to_numpy(dtype=np.int64)
    items = df.item_id.to_numpy(dtype=np.int64)
    last = np.r_[users[1:] != users[:-1], True]  # each user's last event row
    first_seen = ~pd.DataFrame({"u": users, "i": items}).duplicated().to_numpy()
    u_seen = users[first_seen]
    counts = np.bincount(np.searchsorted(users[last], u_seen), minlength=int(last.sum()))
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32 if len(u_seen) < 2**31 else np.int64)
    lists = pa.LargeListArray if offsets.dtype == np.int64 else pa.ListArray
    return pa.table(
        {
            "user_id": pa.array(users[last], pa.int64()),
            "event_timestamp": pa.array(keys[last], pa.timestamp("us", tz="UTC")),
            "seen_item_ids": lists.from_arrays(offsets, items[first_seen]),
        }
    )


def _canonical(df: pd.DataFrame, key: str) -> pa.Table:
    """Stable column order and types: timestamps as µs UTC, ids int64, rows sorted by key (and time)."""
    df = df.copy()
    for c in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[c]):
            df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    sort = [key, "event_timestamp"] if "event_timestamp" in df else [key]
    df = df.sort_values(sort, kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    for i, f in enumerate(table.schema):  # lists that are all empty (a log without genres) are list<null>:
        if pa.types.is_list(f.type) and pa.types.is_null(f.type.value_type):  # give them the string items
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(pa.string())))  # Feast reads
    return table


def _write(table: pa.Table, path: Path) -> None:
    """Deterministic bytes: no pandas metadata, fixed compression, written atomically."""
    table = table.replace_schema_metadata(None)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd", write_statistics=True, store_schema=False)
    tmp.replace(path)


@dataclass(frozen=True)
class IngestOutput:
    directory: str
    rows: dict[str, int]
    fingerprint: str


def ingest(tables: Tables, out_dir: str | Path, max_len: int = 50) -> IngestOutput:
    """Writes the four canonical tables under ``out_dir``. Interactions keep their source order
    within equal timestamps (the split's tie rule) — only a stable sort by time is applied."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").unlink(missing_ok=True)  # new data is unvalidated until validate runs again
    inter = tables.interactions.copy()
    inter["event_timestamp"] = pd.to_datetime(inter.event_timestamp, utc=True).astype("datetime64[us, UTC]")
    for c in ("user_id", "item_id"):
        if inter[c].notna().all():
            inter[c] = inter[c].astype("int64")
    # (Unsorted: the split breaks timestamp ties by source order, so the file keeps it.)
    _write(pa.Table.from_pandas(inter.reset_index(drop=True), preserve_index=False), out / "interactions.parquet")
    _write(_canonical(tables.users, "user_id"), out / "users.parquet")
    _write(_canonical(tables.items, "item_id"), out / "items.parquet")
    clean = inter.dropna(subset=["user_id", "item_id", "event_timestamp"])
    beh = user_behaviour(clean, max_len)
    _write(pa.Table.from_pandas(beh, preserve_index=False), out / "user_behaviour.parquet")
    seen = user_seen(clean)
    _write(seen, out / "user_seen.parquet")
    rows = {
        "interactions": len(inter),
        "users": len(tables.users),
        "items": len(tables.items),
        "user_behaviour": len(beh),
        "user_seen": seen.num_rows,
    }
    logger.info("ingested %s into %s", rows, out)
    return IngestOutput(str(out), rows, Tables(clean, tables.users, tables.items).fingerprint())


def read(directory: str | Path) -> tuple[Tables, pd.DataFrame]:
    """The canonical tables and the behaviour table written by :func:`ingest`."""
    d = Path(directory)
    missing = [t for t in TABLES if not (d / f"{t}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{d} lacks {', '.join(t + '.parquet' for t in missing)}; run `recall features ingest`")
    return Tables.read(d), pd.read_parquet(d / "user_behaviour.parquet")
