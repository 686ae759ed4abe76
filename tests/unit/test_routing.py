"""Routing as pure functions, the result cache and the response log."""

import time

import pytest

from components import routing as rt
from components.ab import read_response_log as read
from serving.logsink import ResponseLog
from serving.state import PushJournal, ResultCache

AB = {
    "default": "recall-sasrec:v3",
    "experiments": [
        {
            "name": "sasrec-v4",
            "salt": "7f3a",
            "variants": [
                {"name": "control", "model": "recall-sasrec:v3", "weight": 90},
                {"name": "treatment", "model": "recall-sasrec:v4", "weight": 10},
            ],
        }
    ],
}


def test_a_90_10_split_of_10000_users_is_within_1_5_points_and_sticky():
    r = rt.parse(AB)
    users = [str(u) for u in range(10_000)]
    first = [rt.assign(r, u) for u in users]
    share = sum(a.variant == "treatment" for a in first) / len(users)
    assert abs(share - 0.10) <= 0.015
    assert [rt.assign(r, u) for u in users] == first  # the same user always lands in the same variant
    assert {a.model for a in first} == {"recall-sasrec:v3", "recall-sasrec:v4"}
    assert all(a.experiment == "sasrec-v4" for a in first)


def test_different_salts_split_independently():
    a = rt.parse(AB)
    b = rt.parse({**AB, "experiments": [{**AB["experiments"][0], "salt": "other"}]})
    users = [str(u) for u in range(10_000)]
    both = sum(rt.assign(a, u).variant == rt.assign(b, u).variant == "treatment" for u in users) / len(users)
    assert abs(both - 0.01) < 0.005  # 10 % × 10 %: independent, not the same users again


def test_traffic_enrols_a_share_and_the_rest_get_the_default():
    r = rt.parse({**AB, "experiments": [{**AB["experiments"][0], "traffic": 20}]})
    got = [rt.assign(r, str(u)) for u in range(10_000)]
    enrolled = sum(a.experiment is not None for a in got) / len(got)
    assert abs(enrolled - 0.20) < 0.015
    assert all(a.model == "recall-sasrec:v3" and a.variant == "default" for a in got if a.experiment is None)


def test_no_experiments_routes_everyone_to_the_default():
    r = rt.parse({"default": "recall-dssm:v1"})
    assert rt.assign(r, "42") == rt.Assignment("recall-dssm:v1", None, "default")
    assert r.models() == ["recall-dssm:v1"]


def _exp(weight, **extra):
    return {"default": "a", "experiments": [{"name": "e", "salt": "s", **extra,
            "variants": [{"name": "c", "model": "m", "weight": weight}]}]}  # fmt: skip


def test_bucket_is_a_stable_hash():
    assert rt.bucket("7f3a", "42") == rt.bucket("7f3a", "42")
    assert 0 <= rt.bucket("7f3a", "42") < rt.BUCKETS
    assert len({rt.bucket("s", str(u)) for u in range(1000)}) > 900


@pytest.mark.parametrize(
    "doc,message",
    [
        ({}, "missing 'default'"),
        ([], "must be a mapping"),
        ({"default": "a", "extra": 1}, "unknown keys"),
        ({"default": "a", "experiments": [{"salt": "s", "variants": []}]}, "experiments[0]: missing 'name'"),
        ({"default": "a", "experiments": [{"name": "e", "variants": [{"name": "c", "model": "m", "weight": 1}]}]},
         "experiments[0]: missing 'salt'"),
        (_exp(-1), "weight must be a number ≥ 0"),
        (_exp(0), "at least one variant with a positive weight"),
        (_exp(1, traffic=150), "traffic must be a percentage"),
    ],
)  # fmt: skip
def test_malformed_configs_say_what_is_wrong(doc, message):
    with pytest.raises(rt.RoutingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rt.parse(doc)


def test_round_trip_and_models():
    r = rt.parse(AB)
    assert rt.parse(rt.to_dict(r)) == r
    assert r.models() == ["recall-sasrec:v3", "recall-sasrec:v4"]


def test_rename_to_canonical_tags_and_the_generation_follows_the_content():
    short = {**AB, "default": "sasrec:v3"}
    r = rt.rename(rt.parse(short), {"sasrec:v3": "recall-sasrec:v3"})
    assert r == rt.parse(AB)  # the default renamed; variants not in the mapping untouched
    assert rt.generation(r) == rt.generation(rt.parse(AB)) and len(rt.generation(r)) == 12
    assert rt.generation(rt.parse({"default": "recall-sasrec:v4"})) != rt.generation(r)
    # The salt is left out (the generation is public on /readyz; a salt would predict assignment).
    resalted = {**AB, "experiments": [{**AB["experiments"][0], "salt": "another"}]}
    assert rt.generation(rt.parse(resalted)) == rt.generation(r)


@pytest.mark.parametrize(
    "ref,parsed",
    [("recall-sasrec:v3", ("sasrec", "v3")), ("sasrec:v3", ("sasrec", "v3")), ("youtube_dnn", ("youtube_dnn", None)),
     (" recall-mind ", ("mind", None))],
)  # fmt: skip
def test_version_references_parse_to_a_model_and_version(ref, parsed):
    from components.registry import canonical, parse_ref

    assert parse_ref(ref) == parsed
    assert canonical(ref) == (None if parsed[1] is None else f"recall-{parsed[0]}:{parsed[1]}")


@pytest.mark.parametrize("ref", ["recall-../x:.", "../../etc", "sasrec:v1/../../x", "sasrec:latest", "", "recall-",
                                 "SASRec:v1", "sasrec:v-1", "a" * 65])  # fmt: skip
def test_version_references_that_could_leave_the_registry_are_refused(ref):
    from components.registry import parse_ref

    with pytest.raises(ValueError, match="bad model reference"):
        parse_ref(ref)


def test_load_reports_missing_and_invalid_files(tmp_path):
    with pytest.raises(rt.RoutingError, match="does not exist"):
        rt.load(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("default: [unclosed")
    with pytest.raises(rt.RoutingError, match="not valid YAML"):
        rt.load(tmp_path / "bad.yaml")


def test_result_cache_is_bounded_expires_and_counts_hits():
    c = ResultCache(max_entries=2, ttl_s=0.2)
    a, b, cc = ("m", "1", 10), ("m", "2", 10), ("m", "3", 10)
    c.put(a, 1)
    c.put(b, 2)
    assert c.get(a) == 1  # a is now the most recent
    c.put(cc, 3)  # evicts b, the least recently used
    assert c.get(b) is None and c.get(cc) == 3 and len(c) == 2
    assert c.hit_rate == pytest.approx(2 / 3)
    time.sleep(0.25)
    assert c.get(a) is None  # expired


def test_result_cache_forgets_the_users_whose_features_changed():
    c = ResultCache(max_entries=10, ttl_s=60)
    for key in [("m1", "1", 10), ("m2", "1", 5), ("m1", "2", 10)]:
        c.put(key, key)
    c.drop_users(["1", "99"])
    assert c.get(("m1", "1", 10)) is None and c.get(("m2", "1", 5)) is None and c.get(("m1", "2", 10))
    c.drop_users(None)
    assert len(c) == 0
    # A result computed from features read before the user was dropped is not cached.
    before = c.version("3")
    c.drop_users(["3"])
    c.put(("m1", "3", 10), "stale", before)
    assert c.get(("m1", "3", 10)) is None
    c.put(("m1", "3", 10), "fresh", c.version("3"))
    assert c.get(("m1", "3", 10)) == "fresh"


def test_the_push_journal_tells_every_reader_which_users_changed(tmp_path):
    path = tmp_path / "pushes.log"
    reader, writer = PushJournal(path), PushJournal(path)  # two workers
    assert reader.changed() == []
    writer.record(["7", "8"])
    assert reader.changed() == ["7", "8"] and reader.changed() == []
    with open(path, "a") as f:
        f.write("9")  # a line still being written is read once complete
    assert reader.changed() == []
    with open(path, "a") as f:
        f.write("\n")
    assert reader.changed() == ["9"]
    PushJournal.MAX_BYTES, before = 4, PushJournal.MAX_BYTES
    try:
        writer.record(["10"])  # the journal is over its size: replaced by a new one
    finally:
        PushJournal.MAX_BYTES = before
    assert reader.changed() is None  # rotated: whatever it missed, the reader drops everything
    writer.record(["11"])
    assert reader.changed() == ["11"]
    with open(path, "w") as f:  # truncated in place (same inode): the reader cannot know what it missed
        f.write("")
    assert reader.changed() is None


def test_response_log_rotates_and_reads_back_in_order(tmp_path):
    log = ResponseLog(tmp_path / "r.jsonl", max_bytes=300, backups=50)
    for i in range(40):
        log.write({"i": i, "items": ["1", "2", "3"]})
    log.flush()
    assert len(list(tmp_path.glob("r.jsonl.*"))) > 1  # rotated
    assert [r["i"] for r in read(tmp_path / "r.jsonl")] == list(range(40))


def test_response_log_merges_per_worker_files_by_time(tmp_path):
    a, b = ResponseLog(tmp_path / "r.101.jsonl"), ResponseLog(tmp_path / "r.202.jsonl")
    for t in range(6):
        (a if t % 2 else b).write({"time": t})
    a.flush()
    b.flush()
    assert [r["time"] for r in read(tmp_path / "r.jsonl")] == list(range(6))


@pytest.mark.parametrize("name", ["../x", "a/b", "", "-x", "x" * 65, "a b", "e\n"])
def test_experiment_and_variant_names_that_could_name_other_files_are_refused(name):
    from components.ab import ReportConfig

    bad = {"default": "recall-sasrec:v3", "experiments": [{**AB["experiments"][0], "name": name}]}
    with pytest.raises(rt.RoutingError, match="experiment name|missing 'name'"):
        rt.parse(bad)
    variant = {**AB["experiments"][0]["variants"][0], "name": name}
    bad = {"default": "recall-sasrec:v3", "experiments": [{**AB["experiments"][0], "variants": [variant]}]}
    with pytest.raises(rt.RoutingError, match="variant name|missing 'name'"):
        rt.parse(bad)
    if name:
        with pytest.raises(rt.RoutingError, match="experiment"):
            ReportConfig(experiment=name)
