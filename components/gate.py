"""Quality gate: may this trained candidate become a registered version?

Three kinds of check on the candidate's metrics (test split by default, seen items masked):

- **floors**: absolute minimums from config, e.g. ``{"ndcg@10": 0.05}``;
- **popularity**: it must beat the popularity baseline on the same split on each listed metric;
- **production**: no regression beyond ``max_regression`` (relative) against the model the routing
  file serves by default, on Recall@K / NDCG@K / MRR@K. Both are scored on the *candidate's* evaluation
  events (:mod:`components.compare`: production through its registered towers and index), so the
  comparison holds on every day's new data; with nothing in production it is ``skipped`` with the reason.
  A check fails when the candidate is below the allowed bar *and* significantly below production: the
  paired difference over the same rows has its whole two-sided ``confidence`` interval under zero — a
  one-sided test at (1 + confidence) / 2, 97.5 % by default (``confidence: 0`` fails on the point
  estimate alone). Checks are not corrected for their number (metrics × slices). Retraining the same
  model on one more day of data moves the metrics by more than a 2 % tolerance on a few thousand rows;
  blocking on that noise would freeze whatever production happened to train well;
- **slices**: the same regression check per slice (``user=new``, ``history=1-4``, ``item=tail``, …)
  for the slices given a limit in ``slice_limits`` (``"*"``: every slice); a slice with fewer than
  ``min_slice_rows`` evaluated rows is too noisy to judge and is ``skipped``, saying so.

The verdict also says whether the candidate should **replace** production (``promotion``): only when
it passed and, on the first regression metric, is better than production by more than ``min_gain``
(relative, 2 % by default) with the interval's lower end above that margin — overall on the same rows;
or on the ``target=new`` slice (events later than production's training data, at least
``min_slice_rows`` of them), where a stale production shows; or in the **backtest**
(:func:`components.compare.backtest`): the newest held-back version of the same recipe beat production
by that margin on every event since its own data ended (at least ``min_slice_rows`` events), events
neither had trained on — this recipe, retrained, beats a stale production. With nothing in production it
replaces at once. Registering tolerates noise; replacing what is served does not: between −
``max_regression`` and + ``min_gain`` a candidate is registered and production kept, so a lucky split
does not swap the served model back and forth (the replay benchmark promotes by this rule; with live
traffic an A/B test decides, :mod:`components.ab`).

The verdict is a plain dict (stored as ``gate.json`` with the run and in the version's model.json);
:func:`enforce` raises :class:`GateFailed` listing every failed check.
"""

from __future__ import annotations

from typing import Any

from models.metrics import interval

from .settings import GateConfig

FRESH = "target=new"  # the slice of events later than production's training data (components.compare)


class GateFailed(RuntimeError):
    """The candidate failed the quality gate; ``verdict`` holds every check and its numbers."""

    def __init__(self, verdict: dict[str, Any]):
        self.verdict = verdict
        failed = [c for c in verdict["checks"] if c["status"] == "failed"]
        lines = "\n".join(f"  - {c['name']}: {c['detail']}" for c in failed)
        super().__init__(f"quality gate failed ({len(failed)} of {len(verdict['checks'])} checks):\n{lines}")


def _metric(metrics: dict[str, float], name: str, where: str) -> float:
    if name not in metrics:
        raise ValueError(f"gate metric {name!r} is not in the {where} metrics; have {', '.join(sorted(metrics))}")
    return float(metrics[name])


def _check(
    name: str, ok: bool | None, detail: str, value: float | None = None, threshold: float | None = None
) -> dict[str, Any]:
    """One check; ``ok=None`` means it could not be made (skipped, with the reason in ``detail``)."""
    status = "skipped" if ok is None else "passed" if ok else "failed"
    return {"name": name, "status": status, "value": value, "threshold": threshold, "detail": detail}


def _regression(
    name: str, v: float, p: float, limit: float, tag: str, diff: dict[str, float] | None, confidence: float,
    where: str = "",
) -> dict[str, Any]:
    """Fails when ``v`` is under the bar and — given the paired difference ``diff`` — significantly under
    production. Without a paired difference (an older evaluation) the point estimates decide."""
    bar = p * (1 - limit)
    detail = f"{v:.4f} vs production {p:.4f} (allowed down to {bar:.4f}, −{limit:.0%})"
    ok = v >= bar
    if diff is not None:
        lo, hi = interval(diff, confidence)
        detail += f"; difference {diff['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] at {confidence:.0%}"
        detail += f" over {diff['rows']} rows"
        if not ok and hi >= 0:
            ok, detail = True, detail + ": not significant"
    return _check(f"no regression vs {tag} on {name}{where}", ok, detail, v, bar)


def promotion(verdict: dict[str, Any]) -> dict[str, Any]:
    """Should this candidate replace production? ``{"recommended", "why"}`` (see the module docstring)."""
    if not verdict["passed"]:
        return {"recommended": False, "why": "the gate failed"}
    production = verdict.get("production")
    if production is None:
        return {"recommended": True, "why": "nothing in production"}
    cfg = verdict["config"]
    if not cfg["regression_metrics"]:
        return {"recommended": False, "why": "gate.regression_metrics is empty: nothing to compare production on"}
    name, gain, conf = cfg["regression_metrics"][0], cfg.get("min_gain", 0.0), cfg["confidence"]
    diff = (production.get("difference") or {}).get(name)
    if diff is None:
        v, p = verdict["candidate"][name], production["metrics"][name]
        why = f"{name} {v:.4f} vs production {p:.4f} (no paired difference)"
        return {"recommended": v > p * (1 + gain), "why": why}
    # The same rows; then the events newer than production's data, where a stale production shows (most
    # evaluation rows are users with nothing new, seen alike by both); then the held-back version's backtest.
    evidence = [(f"{name} ", diff, production["metrics"][name], f" vs {production['tag']}", "rows", True)]
    entry = (verdict.get("slices") or {}).get(FRESH) or {}
    if (fresh := (entry.get("difference") or {}).get(name)) is not None:
        big = entry["rows"] >= cfg["min_slice_rows"]
        evidence.append((f"{FRESH}: ", fresh, entry["production"][name], "", "rows", big))
    bt = verdict.get("backtest") or {}
    if (held := (bt.get("difference") or {}).get(name)) is not None:
        big = bt["rows"] >= cfg["min_slice_rows"]
        evidence.append((f"backtest {bt['challenger']} − {bt['production']}: ", held, bt["production_metrics"][name],
                         f" since {bt['since'][:10]} ({bt['users']} users)", "events", big))  # fmt: skip
    parts = []
    for label, d, p, where, unit, big in evidence:
        lo, hi = interval(d, conf)
        parts.append(f"{label}{d['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]{where} over {d['rows']} {unit}"
                     + ("" if big else " (too few to judge)"))  # fmt: skip
        if big and lo > p * gain:
            won = "significantly better" if gain == 0 else f"better by more than {gain:.0%} (+{p * gain:.4f})"
            return {"recommended": True, "why": "; ".join(parts) + f": {won}"}
    lost = "not significantly better" if gain == 0 else f"not better by more than {gain:.0%} at {conf:.0%}"
    return {"recommended": False, "why": "; ".join(parts) + f": {lost}"}


def evaluate_gate(
    candidate: dict[str, float],
    popularity: dict[str, float],
    cfg: GateConfig,
    production: dict[str, Any] | None = None,
    slices: dict[str, dict[str, Any]] | None = None,
    no_production: str = "nothing in production yet",
    backtest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All checks and the verdict. ``production``: ``{"tag", "metrics", "difference"}``, the version served
    by default scored on the candidate's split (``difference``: metric → paired candidate − production,
    :func:`components.compare.differences`), or None (``no_production`` says why). ``slices``: name →
    ``{"rows", "candidate", "production", …}`` on the same split (:func:`components.compare.sliced`).
    ``backtest``: the held-back version vs production on the events neither saw
    (:func:`components.compare.backtest`), or ``{"why"}`` there was none; it only informs the promotion."""
    checks: list[dict[str, Any]] = []
    for name, floor in sorted(cfg.floors.items()):
        v = _metric(candidate, name, "candidate")
        rel = "≥" if v >= floor else "<"
        checks.append(_check(f"floor {name}", v >= floor, f"{v:.4f} {rel} floor {floor:.4f}", v, floor))
    for name in cfg.beat_popularity:
        v, p = _metric(candidate, name, "candidate"), _metric(popularity, name, "popularity")
        checks.append(_check(f"beats popularity on {name}", v > p, f"{v:.4f} vs popularity {p:.4f}", v, p))
    if production is None:
        checks.append(_check("no regression vs production", None, no_production))
    else:
        tag = production["tag"]
        for name in cfg.regression_metrics:
            v, p = _metric(candidate, name, "candidate"), _metric(production["metrics"], name, tag)
            diff = (production.get("difference") or {}).get(name)
            checks.append(_regression(name, v, p, cfg.max_regression, tag, diff, cfg.confidence))
        checks += _slice_checks(cfg, tag, slices or {})
    passed = all(c["status"] != "failed" for c in checks)
    verdict = {
        "passed": passed,
        "split": cfg.split,
        "checks": checks,
        "candidate": candidate,
        "popularity": popularity,
        "production": production,
        "slices": slices,
        "backtest": backtest,
        "config": {**cfg.__dict__, "beat_popularity": list(cfg.beat_popularity),
                   "regression_metrics": list(cfg.regression_metrics)},  # fmt: skip
    }
    verdict["promotion"] = promotion(verdict)
    return verdict


def _slice_checks(cfg: GateConfig, tag: str, slices: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    unknown = sorted(set(cfg.slice_limits) - set(slices) - {"*"})
    if unknown:
        raise ValueError(f"gate.slice_limits names unknown slices {unknown}; this run has: {', '.join(slices)}")
    checks = []
    for sl, entry in slices.items():
        limit = cfg.slice_limits.get(sl, cfg.slice_limits.get("*"))
        if limit is None or "production" not in entry:
            continue
        for name in cfg.regression_metrics:
            where = f" [{sl}]"
            if entry["rows"] < cfg.min_slice_rows:
                why = (f"slice {sl} has {entry['rows']} rows (< gate.min_slice_rows {cfg.min_slice_rows}): "
                       "too few to judge")  # fmt: skip
                checks.append(_check(f"no regression vs {tag} on {name}{where}", None, why))
                continue
            v = _metric(entry["candidate"], name, f"candidate's {sl}")
            p = _metric(entry["production"], name, f"{tag}'s {sl}")
            diff = (entry.get("difference") or {}).get(name)
            checks.append(_regression(name, v, p, limit, tag, diff, cfg.confidence, where))
    return checks


def enforce(verdict: dict[str, Any]) -> dict[str, Any]:
    if not verdict["passed"]:
        raise GateFailed(verdict)
    return verdict
