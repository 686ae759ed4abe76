"""The feature pipeline against real Feast (SQLite and Redis online stores) and real Great Expectations."""

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from components import snapshots
from components.cli import app
from components.datasets import SyntheticConfig, Tables, generate_synthetic
from components.features import (
    StoreConfig,
    apply,
    materialize,
    online_features,
    push_events,
    training_examples,
    training_set,
)
from components.ingest import ingest, user_behaviour
from serving.process import redis_server as local_redis
from tests.parity import assert_histories_match

pytestmark = pytest.mark.integration
L = 10
SYNTH = SyntheticConfig(n_users=80, n_items=60, n_interactions=2000, n_clusters=4, seed=5)
PROFILE_SERVICE = "recall_profile_sequence_v1"


def _seconds(ts: pd.Series) -> pd.Series:
    return (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype("int64")


@pytest.fixture(scope="module")
def synthetic():
    return generate_synthetic(SYNTH)


@pytest.fixture(scope="module")
def feature_dir(synthetic, tmp_path_factory):
    d = tmp_path_factory.mktemp("features")
    ingest(synthetic, d, L)
    return d


@pytest.fixture(scope="module")
def fs(feature_dir):
    cfg = StoreConfig(str(feature_dir))
    store = apply(cfg)
    assert set(materialize(store, cfg).values()) == {"full"}
    return store


def test_ingest_is_idempotent_byte_for_byte(synthetic, feature_dir, tmp_path):
    ingest(synthetic, tmp_path, L)
    for t in ("interactions", "users", "items", "user_behaviour"):
        assert (tmp_path / f"{t}.parquet").read_bytes() == (feature_dir / f"{t}.parquet").read_bytes(), t


def test_behaviour_snapshots_hand_worked():
    ts = pd.to_datetime([100, 200, 200, 300, 400, 50], unit="s", utc=True)
    inter = pd.DataFrame({"user_id": [1, 1, 1, 1, 1, 2], "item_id": [10, 20, 21, 30, 40, 99], "event_timestamp": ts})
    beh = user_behaviour(inter, max_len=3)
    assert beh.user_id.tolist() == [1, 1, 1, 1, 1, 2]  # one row per event
    assert [list(h) for h in beh.hist_item_ids] == [[10], [10, 20], [10, 20, 21], [20, 21, 30], [21, 30, 40], [99]]
    assert beh.hist_len.tolist() == [1, 2, 3, 3, 3, 1]
    assert [list(h) for h in beh.hist_timestamps][2] == [100, 200, 200]
    # The tie rule: the second event of second 200 gets the key 200 s + 1 µs (file order kept).
    us = beh.event_timestamp.astype("datetime64[us, UTC]").astype("int64").tolist()
    assert us == [100_000_000, 200_000_000, 200_000_001, 300_000_000, 400_000_000, 50_000_000]


def test_training_set_has_exactly_one_row_per_example_with_the_trainers_histories(fs, feature_dir):
    inter = pd.read_parquet(feature_dir / "interactions.parquet")
    examples = training_examples(inter)
    assert len(examples) == len(inter) - 2 * inter.user_id.nunique()
    df = training_set(fs, examples, PROFILE_SERVICE)
    assert len(df) == len(examples) and df.example_id.tolist() == examples.example_id.tolist()
    assert {"hist_item_ids", "hist_len", "gender", "hour_of_day", "day_of_week"} <= set(df.columns)
    # No leakage anywhere: every history ends strictly before its target.
    last = df.hist_timestamps.map(lambda h: max(h) if len(h) else -1)
    target = _seconds(df.target_timestamp)
    assert (last < target).all()
    assert (df.hist_len == df.hist_item_ids.map(len)).all() and df.hist_len.max() == L
    # Context comes from the target's own time.
    assert (df.hour_of_day == df.target_timestamp.dt.hour).all()
    # Train/serve parity: each target's Feast history is exactly the trainer's history for it.
    assert_histories_match(Tables.read(feature_dir), examples, df, L)


def test_point_in_time_join_never_leaks_later_values(tmp_path):
    t = lambda s: pd.Timestamp(s, unit="s", tz="UTC")  # noqa: E731
    inter = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1],
            "item_id": [10, 20, 30, 31, 40],
            "event_timestamp": [t(1000), t(2000), t(3000), t(3000), t(4000)],
            "rating": [5.0] * 5,
        }
    )
    users = pd.DataFrame(  # the profile changes at t=2500: examples before it must see the old value
        {
            "user_id": [1, 1],
            "gender": ["F", "M"],
            "age_bucket": ["18-24", "25-34"],
            "occupation": ["a", "b"],
            "zip_prefix": ["01", "02"],
            "event_timestamp": [t(0), t(2500)],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [10, 20, 30, 31, 40],
            "title": list("abcde"),
            "genres": [["x"]] * 5,
            "year": [2000] * 5,
            "event_timestamp": [t(0)] * 5,
        }
    )
    ingest(Tables(inter, users, items), tmp_path, L)
    store = apply(StoreConfig(str(tmp_path)))
    examples = pd.DataFrame(
        {
            "example_id": [0, 1, 2, 3, 4],
            "user_id": [1] * 5,
            "target_item_id": [20, 30, 31, 40, 40],
            "target_timestamp": [t(2000), t(3000), t(3000), t(4000), t(2600)],
        }
    )
    df = training_set(store, examples, PROFILE_SERVICE)
    assert [list(h) for h in df.hist_item_ids] == [[10], [10, 20], [10, 20], [10, 20, 30, 31], [10, 20]]
    assert df.gender.tolist() == ["F", "M", "M", "M", "M"]  # the t=2500 change only from 2500 on
    first = training_set(store, examples.assign(target_timestamp=[t(1000)] * 5), PROFILE_SERVICE)
    assert (first.hist_len == 0).all() and first.hist_item_ids.map(len).eq(0).all()  # nothing before the first event


def _latest(feature_dir):
    beh = pd.read_parquet(feature_dir / "user_behaviour.parquet")
    return beh.sort_values(["user_id", "event_timestamp"]).groupby("user_id").tail(1).set_index("user_id")


def test_online_features_equal_the_latest_offline_values(fs, feature_dir, synthetic):
    latest = _latest(feature_dir)
    users = [1, 7, 33, 80]
    got = online_features(fs, users + [10**9], PROFILE_SERVICE)
    for i, u in enumerate(users):
        assert got["hist_item_ids"][i] == list(latest.loc[u, "hist_item_ids"])
        assert got["hist_len"][i] == latest.loc[u, "hist_len"]
        assert got["gender"][i] == synthetic.users.set_index("user_id").loc[u, "gender"]
    assert got["hist_item_ids"][-1] is None  # an unknown user: no features (serving falls back)
    assert len(got["hour_of_day"]) == len(users) + 1


def test_the_seen_set_holds_every_item_a_user_ever_interacted_with(fs, synthetic):
    inter = synthetic.interactions
    users = [1, 7, 33]
    got = fs.get_online_features(["user_seen:seen_item_ids"], [{"user_id": u} for u in users]).to_dict()
    for u, seen in zip(users, got["seen_item_ids"], strict=True):
        mine = inter[inter.user_id == u].sort_values("event_timestamp", kind="stable")
        assert seen == list(dict.fromkeys(mine.item_id.tolist()))  # distinct, first interaction first
        assert len(seen) > L  # more than the history holds: items seen long ago are in it


def _push_and_check(store, root, users):
    refs = ["user_behaviour:hist_item_ids", "user_behaviour:hist_timestamps", "user_seen:seen_item_ids"]
    before = store.get_online_features(refs, [{"user_id": u} for u in users]).to_dict()
    t = pd.Timestamp("2031-01-01", tz="UTC")  # later than every stored event
    events = pd.DataFrame(
        {"user_id": [users[0], users[1], users[0]], "item_id": [999_001, 999_002, before["seen_item_ids"][0][0]],
         "event_timestamp": [t, t + pd.Timedelta(seconds=5), t + pd.Timedelta(seconds=9)]}
    )  # fmt: skip
    assert push_events(store, root, events, L) == {"users": 2, "events": 3}
    after = store.get_online_features(refs, [{"user_id": u} for u in users]).to_dict()
    h0, h1 = before["hist_item_ids"][0], before["hist_item_ids"][1]
    assert after["hist_item_ids"][0] == (h0 + [999_001, before["seen_item_ids"][0][0]])[-L:]
    assert after["hist_item_ids"][1] == (h1 + [999_002])[-L:]
    assert after["hist_timestamps"][0][-1] == int(t.timestamp()) + 9
    assert after["seen_item_ids"][0] == before["seen_item_ids"][0] + [999_001]  # a re-seen item is not repeated
    assert after["seen_item_ids"][1] == before["seen_item_ids"][1] + [999_002]
    assert after["hist_item_ids"][2] == before["hist_item_ids"][2]  # nobody else changes
    # A click stamped with the same second as the row it lands on, and a late one, are not dropped (Redis
    # keeps a row only if it is newer than the stored one).
    same = pd.DataFrame({"user_id": [users[1], users[1]], "item_id": [999_003, 999_004],
                         "event_timestamp": [t + pd.Timedelta(seconds=5), t - pd.Timedelta(days=1)]})  # fmt: skip
    push_events(store, root, same, L)
    again = store.get_online_features(refs, [{"user_id": users[1]}]).to_dict()
    assert {999_003, 999_004} <= set(again["seen_item_ids"][0]) and again["hist_item_ids"][0][-1] == 999_003


def test_pushed_events_reach_the_online_history_and_seen_set(synthetic, tmp_path):
    d = tmp_path / "push"
    ingest(synthetic, d, L)
    cfg = StoreConfig(str(d))
    store = apply(cfg)
    materialize(store, cfg)
    _push_and_check(store, d, [4, 9, 12])


def test_materialize_is_incremental(synthetic, tmp_path):
    inter = synthetic.interactions
    cut = inter.event_timestamp.quantile(0.7)
    d = tmp_path / "inc"
    ingest(Tables(inter[inter.event_timestamp <= cut], synthetic.users, synthetic.items), d, L)
    cfg = StoreConfig(str(d))
    store = apply(cfg)
    end1 = cut.to_pydatetime() + pd.Timedelta(seconds=1)
    assert set(materialize(store, cfg, end=end1).values()) == {"full"}
    before = online_features(store, [1, 2, 3])["hist_item_ids"]
    ingest(synthetic, d, L)  # new events arrive
    assert set(materialize(store, cfg).values()) == {"incremental"}
    after = online_features(store, [1, 2, 3])["hist_item_ids"]
    latest = _latest(d)
    assert after == [list(latest.loc[u, "hist_item_ids"]) for u in (1, 2, 3)]
    assert after != before


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    try:
        with local_redis(tmp_path_factory.mktemp("redis")) as addr:
            yield addr
    except FileNotFoundError as e:
        pytest.fail(str(e))


def test_redis_online_store_serves_the_same_features(redis_server, synthetic, fs, tmp_path):
    d = tmp_path / "redis"
    ingest(synthetic, d, L)
    cfg = StoreConfig(str(d), online="redis", redis=redis_server)
    store = apply(cfg)
    materialize(store, cfg)
    users = [1, 7, 33, 80]
    got = online_features(store, users, PROFILE_SERVICE)
    want = online_features(fs, users, PROFILE_SERVICE)
    for col in ("hist_item_ids", "hist_len", "gender", "occupation"):
        assert got[col] == want[col], col
    import redis

    host, port = redis_server.split(":")
    assert redis.Redis(host=host, port=int(port)).dbsize() > 0  # the values really live in Redis
    _push_and_check(store, d, [4, 9, 12])  # pushes go through Redis the same way


def test_cli_features_run_publishes_a_snapshot_and_says_when_nothing_is_new(tmp_path):
    args = ["features", "run", "-s", f"features.dir={tmp_path}", "-s", "train.max_len=10", "-s", "model=dssm"]
    for k, v in dataclasses.asdict(SYNTH).items():
        args += ["-s", f"data.synthetic.{k}={v}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    for step in ("ingest", "validate", "apply", "materialize", "total"):
        assert step in res.output
    latest = snapshots.latest(tmp_path)
    assert f"snapshot {latest['id']}" in res.output and "published" in res.output
    d = tmp_path / "snapshots" / latest["id"]
    assert json.loads((d / "validation.json").read_text())["success"] and (d / "registry.db").exists()
    assert (tmp_path / "online_store.db").exists() and (tmp_path / "registry.db").exists()
    again = CliRunner().invoke(app, args)  # the source has nothing newer: nothing is published
    assert again.exit_code == 0 and "nothing to do: no new data" in again.output, again.output
    assert snapshots.published(tmp_path) == [latest["id"]]


@pytest.mark.parametrize("checks", ["0", "1"])
def test_feast_imports_without_typeguard_unless_asked(checks):
    """The feature repository makes Feast's ``@typechecked`` a no-op (7 s of start-up per process,
    benchmarks/imports.py); RECALL_FEAST_TYPECHECKS=1 keeps Feast's argument checks."""
    import subprocess
    import sys

    probe = ("import feature_repo, feast\n"
             "try:\n    feast.Entity(name=3, join_keys=['user_id'])\n    print('unchecked')\n"
             "except Exception as e:\n    print(type(e).__name__)\n")  # fmt: skip
    env = {**os.environ, "RECALL_FEAST_TYPECHECKS": checks}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], env=env, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.stdout.split() == (["TypeCheckError"] if checks == "1" else ["unchecked"])
