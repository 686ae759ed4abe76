"""A/B analysis: feedback events joined with the service's response log, per-variant metrics with
confidence intervals, a fixed-horizon z-test and an always-valid (sequential) test, guardrails, and
an HTML report.

Attribution: a feedback event (user, item, time) belongs to the latest response served to that user
at or before the event, within ``window``, whose list contains the item; its rank is the item's
position in that list. A served list "hits" if at least one event is attributed to it.

Statistics: users are the randomisation unit, and one user sees many lists, so per-list outcomes are
not independent. Each variant's hit rate is a ratio of per-user sums (hits / lists); its variance is
the delta-method (user-clustered) variance, which reduces to the textbook two-proportion variance when
every user has one list. The difference vs control gets a 95 % interval and a two-sided z-test, and an
always-valid p-value and confidence sequence from the normal mixture SPRT (Johari et al., 2017), so
looking at the report every day does not inflate false positives.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .charts import CSS, line_chart

Z95 = 1.959963984540054


def normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


# --- inputs -------------------------------------------------------------------------------------------
def read_feedback(path: str | Path) -> pd.DataFrame:
    """Feedback events from parquet/CSV: ``user_id``, ``item_id``, ``event_type``, ``event_timestamp``
    (datetime or unix seconds). Ids become strings, as in the serving API."""
    p = Path(path)
    files = sorted(p.glob("*.parquet")) + sorted(p.glob("*.csv")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no feedback files in {p}")
    frames = [pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f) for f in files]
    df = pd.concat(frames, ignore_index=True)
    missing = {"user_id", "item_id", "event_timestamp"} - set(df.columns)
    if missing:
        raise ValueError(f"feedback lacks columns {sorted(missing)}; has {list(df.columns)}")
    ts = df.event_timestamp
    secs = (
        ts.astype("float64")
        if pd.api.types.is_numeric_dtype(ts)
        else (pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()  # any datetime unit
    )
    return pd.DataFrame(
        {
            "user_id": df.user_id.astype(str),
            "item_id": df.item_id.astype(str),
            "event_type": df.get("event_type", pd.Series(["click"] * len(df))).astype(str),
            "time": secs.to_numpy(dtype="float64"),
        }
    )


def read_response_log(path: str | Path) -> list[dict[str, Any]]:
    """Every record of the service's response log at ``path`` — including the per-worker files
    ``<stem>.<pid><suffix>`` and their rotated copies — ordered by ``time`` (file order on ties)."""
    p = Path(path)
    files = sorted(f for f in p.parent.glob(f"{p.stem}*{p.suffix}*") if f.is_file())

    def rotation(f: Path) -> int:  # x.jsonl.3 is older than x.jsonl.1, which is older than x.jsonl
        tail = f.name.rsplit(".", 1)[-1]
        return -int(tail) if tail.isdigit() else 0

    out: list[dict[str, Any]] = []
    for f in sorted(files, key=lambda f: (f.name.split(p.suffix)[0], rotation(f))):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return sorted(out, key=lambda r: r.get("time", 0))


def responses_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(records)
    if df.empty:
        return pd.DataFrame(columns=["time", "user_id", "experiment", "variant", "model", "items", "latency_ms"])
    df["user_id"] = df.user_id.astype(str)
    df["response_id"] = np.arange(len(df))
    return df


def attribute(responses: pd.DataFrame, feedback: pd.DataFrame, window_s: float = 86400.0) -> pd.DataFrame:
    """Each feedback event matched to the response that caused it (or dropped): columns of the event
    plus ``response_id``, ``variant``, ``model``, ``rank`` (0-based)."""
    if responses.empty or feedback.empty:
        return feedback.assign(response_id=pd.Series(dtype="int64"), rank=pd.Series(dtype="int64")).iloc[0:0]
    # Explode served lists to (response, item, rank), then as-of join events onto them by user+item.
    served = responses[["response_id", "time", "user_id", "items"]].explode("items").dropna(subset=["items"])
    served["rank"] = served.groupby("response_id").cumcount()
    served = served.rename(columns={"items": "item_id", "time": "served_time"})
    served["item_id"] = served.item_id.astype(str)
    served["served_time"] = served.served_time.astype("float64")
    served = served.sort_values("served_time", kind="stable")
    events = feedback.assign(time=feedback.time.astype("float64")).sort_values("time", kind="stable")
    events = events.reset_index(drop=True)
    joined = pd.merge_asof(
        events,
        served,
        left_on="time",
        right_on="served_time",
        by=["user_id", "item_id"],
        direction="backward",
        tolerance=window_s,
    )
    joined = joined.dropna(subset=["response_id"])
    joined["response_id"] = joined.response_id.astype("int64")
    joined["rank"] = joined["rank"].astype("int64")
    meta = responses.set_index("response_id")[["experiment", "variant", "model"]]
    return joined.join(meta, on="response_id")


# --- statistics ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatioEstimate:
    """A ratio of per-user sums, sum(y)/sum(n), with its delta-method (user-clustered) variance."""

    value: float
    variance: float
    users: int
    units: int

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)


def ratio(y: np.ndarray, n: np.ndarray) -> RatioEstimate:
    """``y``, ``n``: per-user numerator and denominator (e.g. hit lists, served lists)."""
    y, n = np.asarray(y, dtype=float), np.asarray(n, dtype=float)
    m = len(y)
    if m == 0 or n.sum() == 0:
        return RatioEstimate(float("nan"), float("nan"), m, int(n.sum()))
    r = y.sum() / n.sum()
    if m < 2:
        return RatioEstimate(float(r), float("nan"), m, int(n.sum()))
    nbar = n.mean()
    resid = y - r * n
    var = float(np.sum(resid**2) / (m - 1) / (m * nbar**2))
    return RatioEstimate(float(r), var, m, int(n.sum()))


@dataclass(frozen=True)
class Comparison:
    control: float
    treatment: float
    diff: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float
    always_valid_p: float
    cs_low: float
    cs_high: float
    relative: float

    def significant(self, alpha: float = 0.05, sequential: bool = False) -> bool:
        return (self.always_valid_p if sequential else self.p_value) < alpha


def compare(control: RatioEstimate, treatment: RatioEstimate, tau2: float = 1e-4, alpha: float = 0.05) -> Comparison:
    """Treatment − control with a 95 % interval, a two-sided z-test, and the mixture-SPRT always-valid
    p-value and (1 − alpha) confidence sequence with mixing variance ``tau2`` (the squared size of
    effect one expects, on the metric's scale)."""
    diff = treatment.value - control.value
    v = control.variance + treatment.variance
    if not (v > 0) or math.isnan(diff):
        nan = float("nan")
        return Comparison(control.value, treatment.value, diff, nan, nan, nan, nan, nan, nan, nan, nan)
    se = math.sqrt(v)
    z = diff / se
    p = 2 * normal_sf(abs(z))
    # mSPRT with a N(0, tau2) mixture over the effect: Λ = sqrt(V/(V+τ²)) exp(θ̂² τ² / (2 V (V+τ²))).
    log_lambda = 0.5 * math.log(v / (v + tau2)) + diff**2 * tau2 / (2 * v * (v + tau2))
    always_p = min(1.0, math.exp(-log_lambda))
    half = math.sqrt(v * (v + tau2) / tau2 * (math.log((v + tau2) / v) + 2 * math.log(1 / alpha)))
    rel = diff / control.value if control.value else float("nan")
    return Comparison(control.value, treatment.value, diff, diff - Z95 * se, diff + Z95 * se, z, p, always_p,
                      diff - half, diff + half, rel)  # fmt: skip


# --- the report -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Guardrails:
    max_p99_latency_ms: float = 50.0  # absolute ceiling for any variant
    max_p99_regression: float = 1.25  # treatment p99 ≤ control p99 × this (+ 2 ms of noise allowance)
    max_fallback_rate_increase: float = 0.02
    max_error_rate: float = 0.001


@dataclass(frozen=True)
class ReportConfig:
    experiment: str
    control: str = "control"
    k: int = 10
    window_s: float = 86400.0
    tau2: float = 1e-4
    alpha: float = 0.05
    sequential: bool = True  # promotion decisions use the always-valid test
    guardrails: Guardrails = field(default_factory=Guardrails)

    def __post_init__(self) -> None:
        from .routing import check_name

        check_name(self.experiment, "experiment")  # it names the report files
        check_name(self.control, "control variant")


def _per_user(resp: pd.DataFrame, attributed: pd.DataFrame, k: int) -> pd.DataFrame:
    hits = attributed.groupby("response_id").size().rename("events")
    at_k = attributed[attributed["rank"] < k].groupby("response_id").size().rename("events_at_k")
    df = resp.join(hits, on="response_id").join(at_k, on="response_id").fillna({"events": 0, "events_at_k": 0})
    df["hit"] = (df.events > 0).astype(float)
    df["shown"] = df["items"].map(lambda x: min(k, len(x)))
    return df.groupby("user_id").agg(lists=("hit", "size"), hits=("hit", "sum"), clicks=("events_at_k", "sum"),
                                     shown=("shown", "sum"))  # fmt: skip


def report(responses: pd.DataFrame, feedback: pd.DataFrame, cfg: ReportConfig) -> dict[str, Any]:
    """Per-variant metrics, comparisons vs control and guardrails for one experiment (JSON-ready)."""
    resp = responses[responses.experiment == cfg.experiment]
    if resp.empty:
        raise ValueError(f"no served responses for experiment {cfg.experiment!r} in the log")
    variants = sorted(resp.variant.unique(), key=lambda v: (v != cfg.control, v))
    if cfg.control not in variants:
        raise ValueError(f"experiment {cfg.experiment!r} has no {cfg.control!r} variant; saw {variants}")
    attributed = attribute(resp, feedback, cfg.window_s)
    rows: dict[str, Any] = {}
    estimates: dict[str, tuple[RatioEstimate, RatioEstimate]] = {}
    for v in variants:
        r = resp[resp.variant == v]
        users = _per_user(r, attributed[attributed.response_id.isin(r.response_id)], cfg.k)
        hit = ratio(users.hits.to_numpy(), users.lists.to_numpy())
        ctr = ratio(users.clicks.to_numpy(), users.shown.to_numpy())
        estimates[v] = (hit, ctr)
        lat = r.latency_ms.to_numpy(dtype=float) if "latency_ms" in r else np.array([np.nan])
        rows[v] = {
            "models": sorted(r.model.unique().tolist()),
            "users": int(len(users)),
            "requests": int(len(r)),
            "hit_rate": hit.value,
            "hit_rate_ci": [hit.value - Z95 * hit.se, hit.value + Z95 * hit.se],
            f"ctr@{cfg.k}": ctr.value,
            "latency_p99_ms": float(np.nanpercentile(lat, 99)) if len(lat) else float("nan"),
            "fallback_rate": float(r.fallback.notna().mean()) if "fallback" in r else 0.0,
            "error_rate": float(r["error"].notna().mean()) if "error" in r else 0.0,
        }
    comparisons = {}
    for v in variants[1:]:
        comparisons[v] = {
            "hit_rate": asdict(compare(estimates[cfg.control][0], estimates[v][0], cfg.tau2, cfg.alpha)),
            f"ctr@{cfg.k}": asdict(compare(estimates[cfg.control][1], estimates[v][1], cfg.tau2, cfg.alpha)),
            "guardrails": guardrail_check(rows[cfg.control], rows[v], cfg.guardrails),
        }
    return {
        "experiment": cfg.experiment,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {**asdict(cfg)},
        "feedback_events": int(len(feedback)),
        "attributed_events": int(len(attributed)),
        "variants": rows,
        "comparisons": comparisons,
        "timeline": timeline(resp, attributed),
    }


def guardrail_check(control: dict[str, Any], treat: dict[str, Any], g: Guardrails) -> dict[str, Any]:
    breaches = []
    if treat["latency_p99_ms"] > g.max_p99_latency_ms:
        breaches.append(f"latency p99 {treat['latency_p99_ms']:.1f} ms > {g.max_p99_latency_ms} ms")
    if treat["latency_p99_ms"] > control["latency_p99_ms"] * g.max_p99_regression + 2.0:
        breaches.append(
            f"latency p99 {treat['latency_p99_ms']:.1f} ms vs control {control['latency_p99_ms']:.1f} ms "
            f"(> ×{g.max_p99_regression})"
        )
    if treat["fallback_rate"] - control["fallback_rate"] > g.max_fallback_rate_increase:
        breaches.append(f"fallback rate {treat['fallback_rate']:.3f} vs control {control['fallback_rate']:.3f}")
    if treat["error_rate"] > g.max_error_rate:
        breaches.append(f"error rate {treat['error_rate']:.4f} > {g.max_error_rate}")
    return {"ok": not breaches, "breaches": breaches}


def timeline(resp: pd.DataFrame, attributed: pd.DataFrame, freq: str = "D") -> dict[str, list]:
    """Cumulative hit rate per variant over time (what the report plots)."""
    hit_ids = set(attributed.response_id.tolist())
    df = resp.assign(hit=resp.response_id.isin(hit_ids).astype(float))
    df["period"] = pd.to_datetime(df.time, unit="s", utc=True).dt.floor(freq)
    out: dict[str, list] = {}
    for v, g in df.groupby("variant"):
        per = g.groupby("period").agg(lists=("hit", "size"), hits=("hit", "sum")).cumsum()
        out[str(v)] = [[str(t.date()), float(h / n)] for t, (n, h) in per.iterrows()]
    return out


def decision(rep: dict[str, Any], variant: str) -> tuple[bool, str]:
    """Whether ``variant`` may be promoted: a significant win on hit rate and no guardrail breach."""
    cfg = rep["config"]
    comp = rep["comparisons"].get(variant)
    if comp is None:
        return False, f"{variant!r} is not a treatment of {rep['experiment']!r} (have {sorted(rep['comparisons'])})"
    hit = comp["hit_rate"]
    p = hit["always_valid_p"] if cfg["sequential"] else hit["p_value"]
    test = "always-valid" if cfg["sequential"] else "z-test"
    if not (p < cfg["alpha"]):
        return False, f"no significant difference in hit rate ({test} p = {p:.3g} ≥ {cfg['alpha']})"
    if hit["diff"] <= 0:
        return False, f"{variant} is significantly worse: hit rate {hit['diff']:+.4f} vs control"
    if not comp["guardrails"]["ok"]:
        return False, "guardrail breach: " + "; ".join(comp["guardrails"]["breaches"])
    return True, f"hit rate {hit['diff']:+.4f} ({hit['relative']:+.1%}), {test} p = {p:.3g}; guardrails ok"


# --- HTML ------------------------------------------------------------------------------------------------
def write_html(rep: dict[str, Any], path: str | Path) -> Path:
    k = rep["config"]["k"]
    rows = ""
    for v, r in rep["variants"].items():
        lo, hi = r["hit_rate_ci"]
        cells = [
            html.escape(v),
            ", ".join(r["models"]),
            f"{r['users']:,}",
            f"{r['requests']:,}",
            f"{r['hit_rate']:.4f} [{lo:.4f}, {hi:.4f}]",
            f"{r[f'ctr@{k}']:.4f}",
            f"{r['latency_p99_ms']:.1f}",
            f"{r['fallback_rate']:.3f}",
            f"{r['error_rate']:.4f}",
        ]
        rows += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    comps = ""
    for v, c in rep["comparisons"].items():
        h = c["hit_rate"]
        ok, why = decision(rep, v)
        cells = [
            html.escape(v),
            f"{h['diff']:+.4f} ({h['relative']:+.1%})",
            f"[{h['ci_low']:+.4f}, {h['ci_high']:+.4f}]",
            f"{h['p_value']:.3g}",
            f"{h['always_valid_p']:.3g}",
            "ok" if c["guardrails"]["ok"] else "breach",
            f"{'promote' if ok else 'hold'}: {html.escape(why)}",
        ]
        comps += "<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>"
    name = html.escape(rep["experiment"])
    head = ["variant", "model", "users", "requests", "hit rate [95% CI]", f"CTR@{k}", "p99 ms", "fallback", "errors"]
    head2 = ["variant", "difference", "95% CI", "z-test p", "always-valid p", "guardrails", "decision"]
    doc = "\n".join(
        [
            f'<!doctype html><html><head><meta charset="utf-8"><title>A/B report: {name}</title>',
            f"<style>{CSS}</style></head><body><h1>Experiment {name}</h1>",
            f"<p>generated {rep['generated_at']}; {rep['attributed_events']:,} of {rep['feedback_events']:,} "
            "feedback events attributed</p>",
            "<h2>Variants</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{rows}</table>",
            "<h2>Against control (hit rate)</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head2) + "</tr>",
            f"{comps}</table>",
            f"<h2>Cumulative hit rate over time</h2>{line_chart(rep['timeline'], x_label='day', width=640)}",
            "</body></html>",
        ]
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    return path


def run_report(
    log_path: str | Path, feedback_path: str | Path, cfg: ReportConfig, out_dir: str | Path
) -> dict[str, Any]:
    """Reads the response log and feedback, writes ``<experiment>.json`` and ``.html`` to ``out_dir``."""
    rep = report(responses_frame(read_response_log(log_path)), read_feedback(feedback_path), cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{cfg.experiment}.json").write_text(json.dumps(rep, indent=2, default=str))
    rep["html"] = str(write_html(rep, out / f"{cfg.experiment}.html"))
    rep["json"] = str(out / f"{cfg.experiment}.json")
    return rep
