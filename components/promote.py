"""Operator actions on the routing file: start an experiment, promote a variant, roll back.

Every change runs under the routing file's lock and first appends one JSON line to the audit log —
who, when, what, why, the routing file, the routing before and after, the report relied on — then
rewrites the routing file atomically (temporary file in the same directory, fsync, rename), then
appends a line marking the change applied (or aborted, if the write failed). A crash between record
and mark leaves the change pending; the next change, under the same lock, settles it first: applies it
if the routing is still its ``before`` (roll forward), marks it applied if the rename had happened,
aborted if the file was edited by hand since. So the routing is always the serial application of the
applied records, and ``rollback`` reads only those. The running service watches the file and follows
by itself.
"""

from __future__ import annotations

import datetime as dt
import functools
import getpass
import inspect
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from . import routing as rt
from .ab import decision
from .registry import Registry, VersionError, atomic_write_text, file_lock

logger = logging.getLogger(__name__)


class PromotionRefused(RuntimeError):
    """The requested change is not allowed; the message says why."""


def audit(log: str | Path, entry: dict[str, Any]) -> None:
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    record = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "actor": _actor(), **entry}
    torn = log.exists() and log.stat().st_size > 0 and _last_byte(log) != b"\n"
    with open(log, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(record, default=str) + "\n")  # (end a line a crash tore)
        f.flush()
        os.fsync(f.fileno())


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_audit(log: str | Path) -> list[dict[str, Any]]:
    """The audit log's change records, each with its ``state``: ``applied``, ``aborted`` (the routing
    could not be written, or was edited by hand before a crashed change was recovered) or ``pending``
    (recorded, not yet applied: a crash between the two; the next change completes it). A line torn by
    a crash mid-append is skipped with a warning (the next append starts a new line)."""
    p = Path(log)
    if not p.exists():
        return []
    lines = [x for x in p.read_text().splitlines() if x.strip()]
    records, marks = [], {}
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: skipping a torn audit line (a crash mid-append): %.80s", p, n, line)
            continue
        if "action" in rec:
            records.append(rec)
        for state in ("applied", "aborted"):
            if state in rec:
                marks[rec[state]] = state
    for rec in records:  # (records written before change ids existed were applied with their line)
        rec["state"] = marks.get(rec["id"], "pending") if "id" in rec else "applied"
    return records


def _actor() -> str:
    return os.environ.get("RECALL_ACTOR") or getpass.getuser()


def _serialised(change):
    """Runs a routing change under the routing file's lock: read, decide, write and audit as one step,
    so two changes at once (an operator's promotion and the item-refresh DAG's swap) never lose one."""

    signature = inspect.signature(change)

    @functools.wraps(change)
    def locked(routing_path, *args, **kwargs):
        path = Path(routing_path)
        with file_lock(path.with_name(f".{path.name}.lock")):
            _recover(path, signature.bind(routing_path, *args, **kwargs).arguments["audit_log"])
            return change(routing_path, *args, **kwargs)

    return locked


def _recover(path: Path, audit_log: str | Path) -> None:
    """Settles the last change recorded for this routing file if a crash left it pending: applies it when
    the routing is still its ``before``, marks it applied when the rename happened, aborted otherwise
    (the file was edited by hand since)."""
    mine = [e for e in read_audit(audit_log) if e.get("routing") == str(path.resolve())]
    if not mine or mine[-1]["state"] != "pending" or not path.exists():
        return
    last = mine[-1]
    current = rt.to_dict(rt.load(path))
    if current == last["before"]:
        _write(path, rt.parse(last["after"]))
    elif current != last["after"]:
        audit(audit_log, {"aborted": last["id"], "error": "the routing was edited by hand before recovery"})
        return
    audit(audit_log, {"applied": last["id"], "recovered": True})


def _commit(path: Path, audit_log: str | Path, entry: dict[str, Any], before: rt.Routing, after: rt.Routing) -> None:
    """The audit record first (with the whole new routing), then the routing file, then a line saying it
    was applied — or aborted, if writing the routing failed (see the module docstring)."""
    text = _text(after)  # never record or write what the service could not read
    change = secrets.token_hex(8)
    audit(audit_log, {**entry, "id": change, "routing": str(path.resolve()), "before": rt.to_dict(before),
                      "after": rt.to_dict(after)})  # fmt: skip
    try:
        atomic_write_text(path, text)
    except Exception as e:
        audit(audit_log, {"aborted": change, "error": f"{type(e).__name__}: {e}"})
        raise
    audit(audit_log, {"applied": change})


def _text(new: rt.Routing) -> str:
    """The routing file's text, checked to parse back (never write what the service could not read)."""
    text = yaml.safe_dump(rt.to_dict(new), sort_keys=False)
    rt.parse(yaml.safe_load(text))
    return text


def _write(routing_path: Path, new: rt.Routing) -> None:
    atomic_write_text(routing_path, _text(new))


@_serialised
def start(
    routing_path: str | Path,
    challenger: str,
    weight: float,
    audit_log: str | Path,
    registry: Registry | None = None,
    name: str | None = None,
    reason: str = "",
) -> rt.Routing:
    """Adds an experiment: the current default as ``control`` (100 − weight) vs ``challenger`` as
    ``treatment`` (weight). The challenger must be a sound registered version."""
    path = Path(routing_path)
    current = rt.load(path)
    if not 0 < weight < 100:
        raise PromotionRefused(f"weight must be between 0 and 100 (exclusive), got {weight}")
    if challenger == current.default:
        raise PromotionRefused(f"{challenger} is already the default")
    if registry is not None:
        try:
            registry.get(challenger)
        except VersionError as e:
            raise PromotionRefused(f"challenger {challenger} cannot be served: {e}") from None
    name = name or challenger.removeprefix("recall-").replace(":", "-")  # recall-mind:v1 → mind-v1
    if any(e.name == name for e in current.experiments):
        raise PromotionRefused(f"an experiment named {name!r} is already running")
    exp = rt.Experiment(
        name,
        secrets.token_hex(16),  # the salt decides every user's variant: not guessable
        (rt.Variant("control", current.default, 100 - weight), rt.Variant("treatment", challenger, weight)),
    )
    new = rt.Routing(current.default, (*current.experiments, exp))
    _commit(path, audit_log, {"action": "start", "experiment": name, "challenger": challenger, "weight": weight,
                              "reason": reason}, current, new)  # fmt: skip
    return new


@_serialised
def promote(
    routing_path: str | Path,
    experiment: str,
    variant: str,
    report: dict[str, Any] | None,
    audit_log: str | Path,
    force: bool = False,
    reason: str = "",
) -> rt.Routing:
    """Makes ``variant``'s model the default and ends ``experiment``. Refused unless ``report`` shows a
    significant win with no guardrail breach, or ``force`` with a ``reason``."""
    path = Path(routing_path)
    current = rt.load(path)
    exp = next((e for e in current.experiments if e.name == experiment), None)
    if exp is None:
        raise PromotionRefused(
            f"no running experiment {experiment!r}; running: {[e.name for e in current.experiments]}"
        )
    chosen = next((v for v in exp.variants if v.name == variant), None)
    if chosen is None:
        raise PromotionRefused(f"experiment {experiment!r} has no variant {variant!r}")
    if force:
        if not reason.strip():
            raise PromotionRefused("--force needs a reason (it goes into the audit log)")
        verdict = "forced"
    else:
        if report is None:
            raise PromotionRefused("no report to rely on; run `recall ab report` (or --force with a reason)")
        if report.get("experiment") != experiment:
            raise PromotionRefused(f"the report is for {report.get('experiment')!r}, not {experiment!r}")
        ok, why = decision(report, variant)
        if not ok:
            raise PromotionRefused(f"refusing to promote {variant} of {experiment}: {why}")
        verdict = why
    new = rt.Routing(chosen.model, tuple(e for e in current.experiments if e.name != experiment))
    summary = None
    if report is not None:
        summary = {"json": report.get("json"), "comparison": report.get("comparisons", {}).get(variant)}
    _commit(path, audit_log, {"action": "promote", "experiment": experiment, "variant": variant,
                              "model": chosen.model, "previous_default": current.default, "forced": force,
                              "reason": reason, "verdict": verdict, "report": summary}, current, new)  # fmt: skip
    return new


@_serialised
def swap(routing_path: str | Path, old: str, new: str, audit_log: str | Path, reason: str = "") -> rt.Routing:
    """Serves ``new`` wherever the routing names ``old`` (the default and any experiment variant): how a
    refreshed version (same model, current catalogue) replaces its parent. Assignments do not move; a
    repeated swap (a retry) changes nothing."""
    from .registry import parse_ref

    path = Path(routing_path)
    current = rt.load(path)
    same = parse_ref(old)

    updated = rt.rename(current, {m: new for m in current.models() if parse_ref(m) == same})
    if updated == current and parse_ref(new) in [parse_ref(m) for m in current.models()]:
        return current  # swapped already (a retry): nothing to do
    if updated == current:
        raise PromotionRefused(f"the routing does not serve {old}; nothing to replace (it serves {current.models()})")
    _commit(path, audit_log, {"action": "swap", "old": old, "new": new, "reason": reason}, current, updated)
    return updated


@_serialised
def rollback(routing_path: str | Path, audit_log: str | Path, reason: str = "") -> rt.Routing:
    """Restores the default that the most recent promotion (not yet rolled back) replaced."""
    path = Path(routing_path)
    current = rt.load(path)
    entries = [e for e in read_audit(audit_log) if e["state"] == "applied"]
    undone = 0
    target = None
    for e in reversed(entries):
        if e.get("action") == "rollback":
            undone += 1
        elif e.get("action") == "promote":
            if undone:
                undone -= 1
                continue
            target = e
            break
    if target is None:
        raise PromotionRefused("nothing to roll back: no promotion in the audit log")
    new = rt.Routing(target["previous_default"], current.experiments)
    entry = {"action": "rollback", "undoes": target["time"], "restored_default": target["previous_default"],
             "reason": reason}  # fmt: skip
    _commit(path, audit_log, entry, current, new)
    return new
