"""Operator actions on the routing file: start, promote, rollback, refusals, audit, crash safety."""

import multiprocessing

import pytest
import yaml

from components import ab
from components import promote as pr
from components import routing as rt
from tests.unit.test_ab import simulate


@pytest.fixture
def files(tmp_path):
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump({"default": "recall-sasrec:v1", "experiments": []}))
    return routing, tmp_path / "audit.jsonl"


def _report(lift, experiment="sasrec-v2"):
    resp, fb = simulate(7, lift)
    resp["experiment"] = experiment
    return ab.report(resp, fb, ab.ReportConfig(experiment))


def test_start_promote_rollback_with_an_audit_trail(files):
    routing, audit = files
    new = pr.start(routing, "recall-sasrec:v2", 10, audit, reason="new candidate")
    exp = new.experiments[0]
    assert exp.name == "sasrec-v2" and [(v.model, v.weight) for v in exp.variants] == [
        ("recall-sasrec:v1", 90),
        ("recall-sasrec:v2", 10),
    ]
    assert rt.load(routing) == new
    with pytest.raises(pr.PromotionRefused, match="already running"):
        pr.start(routing, "recall-sasrec:v2", 10, audit)

    new = pr.promote(routing, "sasrec-v2", "treatment", _report(0.04), audit)
    assert new.default == "recall-sasrec:v2" and new.experiments == () and rt.load(routing) == new

    back = pr.rollback(routing, audit, reason="conversion dipped")
    assert back.default == "recall-sasrec:v1" and rt.load(routing) == back
    with pytest.raises(pr.PromotionRefused, match="nothing to roll back"):
        pr.rollback(routing, audit)

    log = pr.read_audit(audit)
    assert [e["action"] for e in log] == ["start", "promote", "rollback"]
    assert all({"time", "actor", "before", "after"} <= set(e) for e in log)
    assert log[1]["report"]["comparison"]["hit_rate"]["diff"] > 0 and log[1]["previous_default"] == "recall-sasrec:v1"
    assert log[2]["reason"] == "conversion dipped"


def test_promotion_is_refused_without_a_significant_win(files):
    routing, audit = files
    pr.start(routing, "recall-sasrec:v2", 50, audit)
    before = routing.read_text()
    with pytest.raises(pr.PromotionRefused, match="no significant difference"):
        pr.promote(routing, "sasrec-v2", "treatment", _report(0.0), audit)
    with pytest.raises(pr.PromotionRefused, match="no report"):
        pr.promote(routing, "sasrec-v2", "treatment", None, audit)
    with pytest.raises(pr.PromotionRefused, match="needs a reason"):
        pr.promote(routing, "sasrec-v2", "treatment", None, audit, force=True)
    with pytest.raises(pr.PromotionRefused, match="no running experiment 'nope'"):
        pr.promote(routing, "nope", "treatment", None, audit, force=True, reason="x")
    assert routing.read_text() == before  # refusals change nothing
    assert [e["action"] for e in pr.read_audit(audit)] == ["start"]
    new = pr.promote(routing, "sasrec-v2", "treatment", None, audit, force=True, reason="product decision")
    assert new.default == "recall-sasrec:v2" and pr.read_audit(audit)[-1]["forced"]


def _crash_during_rename(routing, audit):
    import os

    def die(*_a, **_k):
        os._exit(3)  # killed after the new file is written, before it replaces the old one

    os.replace = die
    pr.promote(routing, "sasrec-v2", "treatment", None, audit, force=True, reason="x")


def test_killing_a_promotion_midway_leaves_a_valid_routing_file(files):
    routing, audit = files
    pr.start(routing, "recall-sasrec:v2", 10, audit)
    before = routing.read_text()
    p = multiprocessing.get_context("spawn").Process(target=_crash_during_rename, args=(routing, audit))
    p.start()
    p.join(60)
    assert p.exitcode == 3
    assert routing.read_text() == before and rt.load(routing).experiments[0].name == "sasrec-v2"  # old, intact
    assert list(routing.parent.glob(".routing.yaml.*.tmp"))  # the half-done write is a separate file
    # The audit record came first: the promotion is recorded and not applied yet. The next change, under
    # the same lock, applies it before its own, so routing and audit agree again.
    assert [e["action"] for e in pr.read_audit(audit)] == ["start", "promote"]
    assert [e["state"] for e in pr.read_audit(audit)] == ["applied", "pending"]
    pr.rollback(routing, audit, reason="undo the forced promotion")
    entries = pr.read_audit(audit)
    assert [(e["action"], e["state"]) for e in entries] == [("start", "applied"), ("promote", "applied"),
                                                            ("rollback", "applied")]  # fmt: skip
    _assert_serial(routing, entries)
    assert rt.load(routing) == rt.Routing("recall-sasrec:v1")  # the promotion happened, then was undone


def test_a_hand_edit_is_never_overwritten_by_recovery_and_a_torn_line_is_ignored(files):
    routing, audit = files
    pr.start(routing, "recall-sasrec:v2", 10, audit)
    pr.promote(routing, "sasrec-v2", "treatment", None, audit, force=True, reason="x")
    # An operator reverts the file by hand (git checkout) to what it was before the promotion: the next
    # command must not re-apply the promotion (it was applied and marked so).
    before_promotion = pr.read_audit(audit)[-1]["before"]
    routing.write_text(yaml.safe_dump(before_promotion))
    with open(audit, "a") as f:
        f.write('{"time": "2026-11-28T10:00:00+00:00", "action": "sw')  # a crash mid-append
    pr.swap(routing, "recall-sasrec:v1", "recall-sasrec:v3", audit)
    assert rt.load(routing).default == "recall-sasrec:v3"  # the swap on the hand-edited file, nothing else
    assert [e["action"] for e in pr.read_audit(audit)][-1] == "swap"
    # A pending change whose routing was edited by hand before recovery is marked aborted, not applied.
    pr.audit(audit, {"action": "promote", "id": "feed", "routing": str(routing.resolve()),
                     "before": {"default": "recall-x:v1", "experiments": []},
                     "after": {"default": "recall-x:v2", "experiments": []}})  # fmt: skip
    pr.rollback(routing, audit)  # settles the pending record first
    assert [e for e in pr.read_audit(audit) if e.get("id") == "feed"][0]["state"] == "aborted"


def _assert_serial(routing, entries):
    """The routing is the serial application of the applied records: each starts where the last ended."""
    entries = [e for e in entries if e["state"] == "applied"]
    for a, b in zip(entries, entries[1:], strict=False):
        assert a["after"] == b["before"], (a["action"], b["action"])
    assert rt.to_dict(rt.load(routing)) == entries[-1]["after"]


def _hammer(routing, audit, i):
    """One operator command of a crowd; refusals (no experiment to promote, nothing to roll back) are fine."""
    try:
        if i % 3 == 0:
            pr.start(routing, f"recall-sasrec:v{10 + i}", 10, audit)
        elif i % 3 == 1:
            running = rt.load(routing).experiments
            if running:
                pr.promote(routing, running[0].name, "treatment", None, audit, force=True, reason=f"op {i}")
        else:
            pr.rollback(routing, audit, reason=f"op {i}")
    except pr.PromotionRefused:
        pass


def test_twenty_concurrent_commands_leave_the_routing_equal_to_the_audit_log(files):
    routing, audit = files
    ctx = multiprocessing.get_context("fork")  # (the children only read and write files)
    procs = [ctx.Process(target=_hammer, args=(routing, audit, i)) for i in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    entries = pr.read_audit(audit)
    assert sum(e["action"] == "start" for e in entries) == 7  # every start lands (distinct challengers)
    _assert_serial(routing, entries)


def test_operator_walkthrough_on_the_cli(files, tmp_path):
    """(experiment running) → ab report → promote → rollback, as an operator types it. (`recall ab start`,
    which verifies the challenger in the registry, runs against a real service in the serving tests.)"""
    import json

    from typer.testing import CliRunner

    from components.cli import app

    routing, audit = files
    common = ["--routing", str(routing), "--audit-log", str(audit)]
    runner = CliRunner()
    res = runner.invoke(app, ["ab", "start", "--challenger", "recall-sasrec:v2", "--registry", str(tmp_path), *common])
    assert res.exit_code == 1 and "cannot be served" in res.output  # not a registered version: refused
    pr.start(routing, "recall-sasrec:v2", 50, audit)
    resp, fb = simulate(11, lift=0.04)
    log = tmp_path / "responses.jsonl"
    with open(log, "w") as f:
        for r in resp.assign(experiment="sasrec-v2").drop(columns="response_id").to_dict("records"):
            f.write(json.dumps(r) + "\n")
    fb.rename(columns={"time": "event_timestamp"}).to_parquet(tmp_path / "feedback.parquet")  # unix seconds
    data = ["--log", str(log), "--feedback", str(tmp_path / "feedback.parquet"), "--out", str(tmp_path / "ab")]
    res = runner.invoke(app, ["ab", "report", "-e", "sasrec-v2", *data])
    assert res.exit_code == 0 and "promote" in res.output, res.output
    assert (tmp_path / "ab" / "sasrec-v2.html").exists() and (tmp_path / "ab" / "sasrec-v2.json").exists()
    res = runner.invoke(app, ["promote", "-e", "sasrec-v2", "--variant", "treatment", *data, *common])
    assert res.exit_code == 0 and "default is now recall-sasrec:v2" in res.output, res.output
    res = runner.invoke(app, ["rollback", "--reason", "test", *common])
    assert res.exit_code == 0 and "default is now recall-sasrec:v1" in res.output, res.output
    assert [e["action"] for e in pr.read_audit(audit)] == ["start", "promote", "rollback"]
