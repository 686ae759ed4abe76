"""The evaluation report of a training run: one self-contained HTML page (inline SVG, no scripts).

Metrics table (candidate vs popularity vs production, all scored on the candidate's validation and test
events), the same per slice (new/returning users, history length, item popularity, items new since
production), Recall@K and NDCG@K curves, the training loss and validation curves per epoch, and — once
the gate has run — its verdict with every check.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from models.metrics import interval

from .charts import CSS, line_chart, table
from .registry import atomic_write_text

GATE_MARK, GATE_END = "<!-- gate -->", "<!-- /gate -->"
COLUMNS = ("recall", "ndcg", "mrr", "hit", "precision")


def _rows(ev: dict[str, Any], part: str, ks: list[int]) -> list[list[object]]:
    cols = [f"{m}@{k}" for k in ks[:2] for m in COLUMNS]
    named = [(ev["model"] + " (candidate)", ev[part]), ("popularity", ev[f"popularity_{part}"])]
    prod = ev.get("production")
    if prod and prod.get(part):
        named.append((f"{prod['tag']} (production)", prod[part]))
    return [[name, *(float(m.get(c, float("nan"))) for c in cols)] for name, m in named]


def write_report(
    ev: dict[str, Any], history: list[dict[str, Any]], path: str | Path, best_epoch: int | None = None
) -> Path:
    """The evaluation report; ``best_epoch``: the epoch whose weights were kept, marked on the curves."""
    ks = ev["ks"]
    head = ["model", *(f"{m}@{k}" for k in ks[:2] for m in COLUMNS)]
    curve_ks = ev["curve_ks"]

    def curve(metric: str) -> str:
        series = {ev["model"]: [(k, ev["test"][f"{metric}@{k}"]) for k in curve_ks],
                  "popularity": [(k, ev["popularity_test"][f"{metric}@{k}"]) for k in curve_ks]}  # fmt: skip
        prod = ev.get("production")
        if prod and prod.get("test"):
            series[f"{prod['tag']}"] = [(k, prod["test"][f"{metric}@{k}"]) for k in curve_ks]
        return line_chart(series, {"recall": "Recall@K", "ndcg": "NDCG@K"}[metric] + " (test)", "K")

    loss = {"training loss": [(h["epoch"], float(h["loss"])) for h in history]}
    monitored = sorted({k for h in history for k in h if k in ("ndcg@10", "recall@10", "recall@20")})
    val = {m: [(h["epoch"], float(h[m])) for h in history] for m in monitored}
    mark = (best_epoch, f"kept: epoch {best_epoch}") if best_epoch else None
    prod = ev.get("production")
    prod_line = (
        f"production: {html.escape(prod['tag'])}, scored on these same events through its registered towers "
        "and index (items it never saw are misses for it)"
        if prod
        else f"production: none ({html.escape(ev.get('no_production') or 'nothing in production yet')})"
    )
    doc = "\n".join(
        [
            f'<!doctype html><html><head><meta charset="utf-8"><title>Evaluation: {html.escape(ev["model"])}</title>',
            f"<style>{CSS}</style></head><body>",
            f"<h1>{html.escape(ev['model'])}: evaluation</h1>",
            f"<p>Full corpus, seen items {'masked' if ev.get('exclude_seen', True) else 'not masked'}; "
            f"dataset {html.escape(str(ev.get('dataset_fingerprint')))}; {prod_line}.</p>",
            _parity_html(ev.get("training_set")),
            GATE_MARK + GATE_END,
            "<h2>Test</h2>" + table(head, _rows(ev, "test", ks)),
            "<h2>Validation</h2>" + table(head, _rows(ev, "val", ks)),
            _slices_html(ev, "test"),
            "<h2>Curves</h2>",
            f"<figure>{curve('recall')}<figcaption>Recall@K on the test events</figcaption></figure>",
            f"<figure>{curve('ndcg')}<figcaption>NDCG@K on the test events</figcaption></figure>",
            f"<figure>{line_chart(loss, 'Training loss', 'epoch', mark=mark)}"
            "<figcaption>mean loss per epoch</figcaption></figure>",
            f"<figure>{line_chart(val, 'Validation (early stopping)', 'epoch', mark=mark)}"
            "<figcaption>validation metrics per epoch; dashed: the epoch kept</figcaption></figure>",
            "</body></html>",
        ]
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, doc)
    return path


def _parity_html(ts: dict[str, Any] | None) -> str:
    """The feature snapshot trained on and the train/serve history parity check of the training set."""
    if not ts:
        return ""
    p = ts["parity"]
    ok = p["targets"] - p["mismatches"]
    word = '<span class="pass">identical</span>' if not p["mismatches"] else '<span class="fail">DIFFERENT</span>'
    return (f"<p>Feature snapshot {html.escape(ts['snapshot'])}: {ok:,} of {p['targets']:,} training targets have "
            f"{word} histories in Feast's point-in-time training set and in training "
            f"({p['same_second_predecessors']:,} follow an event of the same second)"
            + "".join(f"; {n}: {p['targets'] - bad:,} identical" for n, bad in p.get("context_mismatches", {}).items())
            + ".</p>")  # fmt: skip


def _slices_html(ev: dict[str, Any], part: str) -> str:
    """One row per slice: its size and the headline metrics of candidate, production and popularity."""
    slices = (ev.get("slices") or {}).get(part)
    if not slices:
        return ""
    ks = ev["ks"]
    metrics = [f"ndcg@{ks[0]}", f"recall@{ks[1] if len(ks) > 1 else ks[0]}"]
    who = [w for w in ("candidate", "production", "popularity") if any(w in e for e in slices.values())]
    head = ["slice", "rows", *(f"{m} {w}" for m in metrics for w in who)]
    rows = [
        [name, e["rows"], *(float(e.get(w, {}).get(m, float("nan"))) for m in metrics for w in who)]
        for name, e in slices.items()
    ]
    return f"<h2>Slices ({part})</h2>" + table(head, rows)


def gate_html(verdict: dict[str, Any]) -> str:
    cls = {"passed": "pass", "failed": "fail", "skipped": "skip"}
    rows = [
        [c["name"], f'<span class="{cls[c["status"]]}">{c["status"]}</span>', html.escape(c["detail"])]
        for c in verdict["checks"]
    ]
    word = '<span class="pass">PASSED</span>' if verdict["passed"] else '<span class="fail">FAILED</span>'
    promo = verdict.get("promotion")
    advice = "" if promo is None else (
        f"<p>Replace production: <b>{'yes' if promo['recommended'] else 'no'}</b> — {html.escape(promo['why'])}</p>")
    return f"<h2>Quality gate: {word}</h2>" + advice + table(["check", "result", "numbers"], rows) + _backtest(verdict)


def _backtest(verdict: dict[str, Any]) -> str:
    """The held-back version against production on the events neither trained on (components.compare)."""
    bt = verdict.get("backtest") or {}
    if not bt.get("difference"):
        return f"<p>Backtest: {html.escape(bt['why'])}.</p>" if bt.get("why") else ""
    conf = verdict["config"]["confidence"]
    rows = []
    for name in verdict["config"]["regression_metrics"]:
        d = bt["difference"][name]
        lo, hi = interval(d, conf)
        rows.append([name, f"{bt['challenger_metrics'][name]:.4f}", f"{bt['production_metrics'][name]:.4f}",
                     f"{d['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"])  # fmt: skip
    head = (f"<h3>Backtest: {html.escape(bt['challenger'])} (held back) vs {html.escape(bt['production'])} on "
            f"{bt['rows']:,} events of {bt['users']:,} users since {html.escape(bt['since'])}</h3>")
    return head + table(["metric", "held back", "production", f"difference ({conf:.0%}, clustered by user)"], rows)


def add_gate(path: str | Path, verdict: dict[str, Any]) -> None:
    """Puts the gate verdict at the top of an existing report."""
    path = Path(path)
    if path.exists():
        doc = path.read_text()
        a, b = doc.find(GATE_MARK), doc.find(GATE_END)
        if a >= 0 and b > a:
            atomic_write_text(path, doc[: a + len(GATE_MARK)] + gate_html(verdict) + doc[b:])
