"""The event store's partitions on hand-worked intervals (components.snapshots): coverage, catch-up,
overlaps, idempotent re-runs, and a published snapshot that never changes."""

import datetime as dt
import json

import pandas as pd
import pytest

from components import snapshots as sn


def day(d: int) -> dt.datetime:
    return dt.datetime(2024, 6, d, tzinfo=dt.UTC)


def events(*days: int) -> pd.DataFrame:
    ts = pd.to_datetime([day(d) + dt.timedelta(hours=12) for d in days], utc=True)
    return pd.DataFrame({"user_id": range(len(days)), "item_id": [1] * len(days), "event_timestamp": ts})


def test_the_first_run_stores_everything_before_its_end_then_intervals_follow(tmp_path):
    src = events(1, 2, 3, 4, 5)
    part, n = sn.store_events(tmp_path, src, sn.Interval(day(3), day(4)))
    assert part == sn.Interval(None, day(4)) and n == 3  # bootstrap: days 1-3
    part, n = sn.store_events(tmp_path, src, sn.Interval(day(4), day(5)))
    assert part == sn.Interval(day(4), day(5)) and n == 1
    assert sn.stored_events(tmp_path, day(5)).user_id.tolist() == [0, 1, 2, 3]
    assert [p.name for p in sn.partitions(tmp_path)] == ["begin_20240604T000000", "20240604T000000_20240605T000000"]


def test_days_the_scheduler_skipped_are_caught_up_not_lost(tmp_path):
    src = events(1, 2, 3, 4, 5, 6)
    sn.store_events(tmp_path, src, sn.Interval(day(1), day(2)))
    part, n = sn.store_events(tmp_path, src, sn.Interval(day(5), day(6)))  # days 2-4 never ran
    assert part == sn.Interval(day(2), day(6)) and n == 4
    assert len(sn.stored_events(tmp_path, day(6))) == 5


def test_a_rerun_rewrites_its_own_partition_and_overlaps_are_refused(tmp_path):
    src = events(1, 2, 3)
    sn.store_events(tmp_path, src, sn.Interval(day(1), day(2)))
    sn.store_events(tmp_path, src, sn.Interval(day(2), day(3)))
    first = (tmp_path / "events" / "20240602T000000_20240603T000000.parquet").read_bytes()
    part, n = sn.store_events(tmp_path, src, sn.Interval(day(2), day(3)))
    assert n == 1 and (tmp_path / "events" / f"{part.name}.parquet").read_bytes() == first
    with pytest.raises(sn.SnapshotError, match="overlaps the stored partition"):
        sn.store_events(tmp_path, src, sn.Interval(day(2), dt.datetime(2024, 6, 2, 12, tzinfo=dt.UTC)))
    assert len(sn.stored_events(tmp_path, day(3))) == 2  # nothing counted twice


def test_an_empty_interval_means_since_the_last_stored_end():
    assert sn.interval("2024-06-02", "2024-06-02") == sn.Interval(None, day(2))  # Airflow 3's @daily
    assert sn.interval("2024-06-01", "2024-06-02") == sn.Interval(day(1), day(2))
    with pytest.raises(sn.SnapshotError, match="not before its end"):
        sn.Interval(day(2), day(1))


def test_publishing_twice_leaves_the_published_snapshot_as_it_was(tmp_path):
    d = sn.snapshot_dir(tmp_path, "s1")
    d.mkdir(parents=True)
    (d / "validation.json").write_text(json.dumps({"success": True}))
    first = sn.publish(tmp_path, "s1", {"end": day(2).isoformat(), "fingerprint": "f"}, None)
    again = sn.publish(tmp_path, "s1", {"end": day(2).isoformat(), "fingerprint": "other"}, None)
    assert again == first and sn.latest(tmp_path) == first and sn.published(tmp_path) == ["s1"]
    (d.parent / "s2").mkdir()
    (d.parent / "s2" / "validation.json").write_text(json.dumps({"success": False}))
    with pytest.raises(sn.SnapshotError, match="has not passed validation"):
        sn.publish(tmp_path, "s2", {"end": day(3).isoformat(), "fingerprint": "g"}, None)
    assert sn.latest(tmp_path)["id"] == "s1"


def test_without_a_start_a_run_releases_what_is_new_since_the_last_stored_end(tmp_path):
    src = events(1, 2, 3, 4)
    assert sn.store_events(tmp_path, src, sn.Interval(None, day(2))) == (sn.Interval(None, day(2)), 1)
    assert sn.store_events(tmp_path, src, sn.Interval(None, day(4))) == (sn.Interval(day(2), day(4)), 2)
    assert sn.store_events(tmp_path, src, sn.Interval(None, day(4)))[0] == sn.Interval(day(2), day(4))  # re-run
    with pytest.raises(sn.SnapshotError, match="no partition ending at 2024-06-03"):
        sn.store_events(tmp_path, src, sn.Interval(None, day(3)))
