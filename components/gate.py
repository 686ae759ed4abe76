"""Quality gate: may this trained candidate become a registered version?

Three kinds of check on the candidate's metrics (test split by default, seen items masked):

- **floors**: absolute minimums from config, e.g. ``{"ndcg@10": 0.05}``;
- **popularity**: it must beat the popularity baseline on the same split on each listed metric;
- **production**: no regression beyond ``max_regression`` (relative) against the model the routing
  file serves by default, on Recall@K / NDCG@K / MRR@K. Production numbers are only comparable on the
  same data, so this check compares when the dataset fingerprints match and otherwise records why it
  could not (``skipped``, never a silent pass).

The verdict is a plain dict (stored as ``gate.json`` with the run and in the version's model.json);
:func:`enforce` raises :class:`GateFailed` listing every failed check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateConfig:
    split: str = "test"  # test | val: which of the run's metrics the gate reads
    floors: dict[str, float] = field(default_factory=dict)
    beat_popularity: tuple[str, ...] = ("recall@20", "ndcg@10")
    regression_metrics: tuple[str, ...] = ("recall@20", "ndcg@10", "mrr@10")
    max_regression: float = 0.02  # allowed relative drop vs production (0.02 = 2 %)

    def __post_init__(self) -> None:
        if self.split not in ("test", "val"):
            raise ValueError(f"gate.split must be test or val, got {self.split!r}")
        if not 0 <= self.max_regression < 1:
            raise ValueError(f"gate.max_regression is a fraction in [0, 1), got {self.max_regression}")
        object.__setattr__(self, "beat_popularity", tuple(self.beat_popularity))
        object.__setattr__(self, "regression_metrics", tuple(self.regression_metrics))


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


def evaluate_gate(
    candidate: dict[str, float],
    popularity: dict[str, float],
    cfg: GateConfig,
    production: dict[str, Any] | None = None,
    candidate_fingerprint: str | None = None,
) -> dict[str, Any]:
    """All checks and the verdict. ``production``: ``{"tag", "metrics", "dataset_fingerprint"}`` of the
    version served by default, or None when nothing is in production yet."""
    checks: list[dict[str, Any]] = []
    for name, floor in sorted(cfg.floors.items()):
        v = _metric(candidate, name, "candidate")
        rel = "≥" if v >= floor else "<"
        checks.append(_check(f"floor {name}", v >= floor, f"{v:.4f} {rel} floor {floor:.4f}", v, floor))
    for name in cfg.beat_popularity:
        v, p = _metric(candidate, name, "candidate"), _metric(popularity, name, "popularity")
        checks.append(_check(f"beats popularity on {name}", v > p, f"{v:.4f} vs popularity {p:.4f}", v, p))
    if production is None:
        checks.append(_check("no regression vs production", None, "nothing in production yet"))
    elif production.get("dataset_fingerprint") != candidate_fingerprint or not production.get("metrics"):
        why = (f"{production['tag']} was measured on other data "
               f"({production.get('dataset_fingerprint')} vs {candidate_fingerprint}); not comparable")  # fmt: skip
        checks.append(_check(f"no regression vs {production['tag']}", None, why))
    else:
        for name in cfg.regression_metrics:
            v, p = _metric(candidate, name, "candidate"), _metric(production["metrics"], name, production["tag"])
            bar = p * (1 - cfg.max_regression)
            checks.append(
                _check(f"no regression vs {production['tag']} on {name}", v >= bar,
                       f"{v:.4f} vs production {p:.4f} (allowed down to {bar:.4f}, −{cfg.max_regression:.0%})", v, bar)
            )  # fmt: skip
    passed = all(c["status"] != "failed" for c in checks)
    return {
        "passed": passed,
        "split": cfg.split,
        "checks": checks,
        "candidate": candidate,
        "popularity": popularity,
        "production": production,
        "config": {**cfg.__dict__, "beat_popularity": list(cfg.beat_popularity),
                   "regression_metrics": list(cfg.regression_metrics)},  # fmt: skip
    }


def enforce(verdict: dict[str, Any]) -> dict[str, Any]:
    if not verdict["passed"]:
        raise GateFailed(verdict)
    return verdict
