"""The training pipeline's steps as plain functions over a run directory, shared by the Airflow DAGs
(``dags/recall_features.py``, ``dags/recall_training.py``) and ``recall pipeline run``.

    features:  ingest → validate → feast apply → materialize            (FEATURE_STEPS)
    training:  training_set → train → evaluate → gate → export → index → register   (TRAINING_STEPS)

Every step takes the run config and the run directory, writes its outputs there and returns a small
JSON-able summary (what Airflow passes between tasks). Training reads the *ingested, validated* tables
of the feature store's directory, never the raw source, so bad data stops at ``validate``. Nothing is
exported or registered unless ``gate.json`` in the run directory says the candidate passed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import DataConfig, RunConfig
from .gate import GateFailed, enforce, evaluate_gate

logger = logging.getLogger(__name__)

FEATURE_STEPS = ("ingest", "validate", "apply", "materialize")
TRAINING_STEPS = ("training_set", "train", "evaluate", "gate", "export", "index", "register")
CURVE_KS = (1, 2, 5, 10, 20, 30, 50, 75, 100)


def new_run_dir(cfg: RunConfig, name: str | None = None) -> Path:
    """``<out_dir>/runs/<model>-<UTC time>`` (or ``name``): one directory per pipeline run."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or f"{cfg.model}-{stamp}"))
    return Path(cfg.out_dir) / "runs" / safe


def _read(run_dir: Path, name: str, step: str) -> dict[str, Any]:
    p = Path(run_dir) / name
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; run the {step} step first")
    return json.loads(p.read_text())


# --- features ------------------------------------------------------------------------------------------
def features(cfg: RunConfig, steps: tuple[str, ...] = FEATURE_STEPS) -> dict[str, Any]:
    """The feature DAG's steps (a validation failure raises before anything reaches Feast)."""
    from .features import run_pipeline

    out = run_pipeline(cfg, steps)
    return {"dir": str(Path(cfg.features.dir).resolve()), **out}


# --- training ------------------------------------------------------------------------------------------
def training_set(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """Every training target's features, point in time, from Feast's offline store."""
    from .features import run_pipeline

    _require_features(cfg)
    out = run_pipeline(cfg, ("training_set",))
    summary = {"path": str(Path(cfg.features.dir) / "training_set.parquet"), "rows": out["rows"]["training_set"],
               "seconds": out["seconds"]["training_set"]}  # fmt: skip
    _write(run_dir, "training_set.json", summary)
    return summary


def _require_features(cfg: RunConfig) -> None:
    d = Path(cfg.features.dir)
    missing = [f for f in ("interactions.parquet", "validation.json") if not (d / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"{d} lacks {', '.join(missing)}: run the recall_features DAG (or `recall features run`)"
        )
    report = json.loads((d / "validation.json").read_text())
    if not report.get("success", False):
        raise ValueError(f"the data in {d} failed validation ({d / 'validation.json'}); fix it and re-run features")
    source = d / "source.json"
    if source.exists():
        ingested = json.loads(source.read_text())["data"]
        wanted = json.loads(json.dumps(dataclasses.asdict(cfg.data), default=str))
        if ingested != wanted:
            diff = sorted(k for k in set(ingested) | set(wanted) if ingested.get(k) != wanted.get(k))
            raise ValueError(
                f"{d} holds data ingested with other data settings ({', '.join('data.' + k for k in diff)}: "
                f"{[ingested.get(k) for k in diff]} there, {[wanted.get(k) for k in diff]} asked for); "
                "run recall_features with the same config and overrides first"
            )


def training_config(cfg: RunConfig, run_dir: str | Path) -> RunConfig:
    """The run config the train step uses: the feature store's validated tables, output in ``run_dir``."""
    data = DataConfig(source="parquet", path=str(Path(cfg.features.dir).resolve()))
    return dataclasses.replace(cfg, data=data, out_dir=str(Path(run_dir).resolve()))


def train(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    from . import train as tr

    _require_features(cfg)
    out = tr.run(training_config(cfg, run_dir))
    return {"run_dir": out.run_dir, "best_epoch": out.best_epoch, "train_seconds": round(out.train_seconds, 2),
            "examples_per_s": round(out.examples_per_s), "test": out.test_metrics}  # fmt: skip


def evaluate(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """Full-corpus metrics (seen items masked) on validation and test of the candidate, popularity and
    the production version — all three on the candidate's evaluation events (:mod:`components.compare`)
    — overall and per slice, Recall@K curves; writes evaluation.json and report.html."""
    import torch

    from models.data import train_item_counts
    from models.evaluation import model_ranks, popularity_ranks
    from models.metrics import metrics_from_ranks
    from models.registry import load_checkpoint

    from . import compare
    from .config import config_from_dict
    from .report import write_report
    from .train import prepare

    run_dir = Path(run_dir)
    model, config = load_checkpoint(run_dir)
    rcfg = config_from_dict(config["run"])
    tables, enc, split = prepare(rcfg)
    counts = train_item_counts(enc.data, split)
    ks = tuple(sorted(set(rcfg.ks) | set(CURVE_KS)))
    L = rcfg.train.max_len
    prod, why = compare.production_version(cfg.routing, cfg.registry)
    result: dict[str, Any] = {"model": model.name, "ks": list(rcfg.ks), "curve_ks": list(CURVE_KS), "slices": {}}
    if prod is not None:
        fp = prod.meta.get("dataset_fingerprint")
        result["production"] = {"tag": prod.tag, "dataset_fingerprint": fp, "n_items": len(prod.item_ids)}
    else:
        result["production"] = None
    result["no_production"] = why
    for part in ("val", "test"):
        rows = compare.rows(enc.data, split, part, enc.user_ids, enc.item_ids)
        ranks = {"candidate": model_ranks(model, enc.data, split, part, L, rcfg.exclude_seen).numpy(),
                 "popularity": popularity_ranks(counts, enc.data, split, part, rcfg.exclude_seen).numpy()}  # fmt: skip
        if prod is not None:
            ranks["production"] = compare.version_ranks(
                prod, enc.data, rows, enc.item_ids, tables.users, rcfg.exclude_seen, max(ks)
            )
            result["production"][part] = metrics_from_ranks(torch.as_tensor(ranks["production"]), ks)
        result[part] = metrics_from_ranks(torch.as_tensor(ranks["candidate"]), ks)
        result[f"popularity_{part}"] = metrics_from_ranks(torch.as_tensor(ranks["popularity"]), ks)
        result["slices"][part] = compare.sliced(ranks, compare.slices(enc.data, rows, counts, prod), rcfg.ks)
    result["dataset_fingerprint"] = config.get("dataset_fingerprint")
    result["exclude_seen"] = rcfg.exclude_seen
    history = json.loads((run_dir / "metrics.json").read_text()).get("history", [])
    result["report"] = str(write_report(result, history, run_dir / "report.html"))
    _write(run_dir, "evaluation.json", result)
    return {"report": result["report"], "test": {k: result["test"][k] for k in _headline(rcfg.ks)}}


def _headline(ks: tuple[int, ...]) -> list[str]:
    return [f"{m}@{k}" for k in ks[:2] for m in ("recall", "ndcg", "mrr")]


def gate(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """Writes gate.json (always, with every check's numbers); raises GateFailed if the candidate fails."""
    ev = _read(Path(run_dir), "evaluation.json", "evaluate")
    split = cfg.gate.split
    prod = ev.get("production")
    production = None if prod is None else {"tag": prod["tag"], "metrics": prod[split]}
    why = ev.get("no_production") or "nothing in production yet"
    verdict = evaluate_gate(ev[split], ev[f"popularity_{split}"], cfg.gate, production,
                            ev.get("slices", {}).get(split), why)  # fmt: skip
    verdict["decided_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _write(run_dir, "gate.json", verdict)
    from .report import add_gate

    add_gate(Path(run_dir) / "report.html", verdict)
    enforce(verdict)
    return {"passed": True, "checks": [f"{c['name']}: {c['status']}" for c in verdict["checks"]]}


def _passed_gate(run_dir: Path) -> dict[str, Any]:
    verdict = _read(run_dir, "gate.json", "gate")
    if not verdict.get("passed"):
        raise GateFailed(verdict)
    return verdict


def export(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    from .register import export_run

    _passed_gate(Path(run_dir))
    rec = export_run(run_dir)
    return {"max_abs_diff": max(rec["parity"]["user"]["max_abs_diff"], rec["parity"]["item"]["max_abs_diff"])}


def index(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    from .register import index_run

    _passed_gate(Path(run_dir))
    out = index_run(run_dir, cfg.index)
    return {k: out["report"][k] for k in ("kind", "n_items", "k", "recall_at_k")}


def register(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """Registers the gated, exported, indexed run as a *candidate* version (routing untouched)."""
    from .register import publish_run
    from .registry import Registry

    verdict = _passed_gate(Path(run_dir))
    mv = publish_run(run_dir, Registry(cfg.registry), gate=verdict, to_bentoml=cfg.bentoml_store)
    out = {"tag": mv.tag, "path": str(mv.path), "stage": mv.meta["stage"]}
    _write(run_dir, "registered.json", out)
    return out


STEP_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "training_set": training_set, "train": train, "evaluate": evaluate, "gate": gate,
    "export": export, "index": index, "register": register,
}  # fmt: skip


def run(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    with_features: bool = True,
    on_step: Callable[[str, dict[str, Any], float], None] | None = None,
) -> dict[str, Any]:
    """Every step in order without an orchestrator (``recall pipeline run``); stops at the first failure.
    Returns each step's summary and wall time."""
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def step(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        steps[name] = fn()
        seconds[name] = round(time.perf_counter() - t0, 2)
        if on_step:
            on_step(name, steps[name], seconds[name])

    if with_features:
        step("features", lambda: features(cfg))
    for name in TRAINING_STEPS:
        step(name, lambda fn=STEP_FUNCTIONS[name]: fn(cfg, run_dir))
    return {"run_dir": str(run_dir), "steps": steps, "seconds": seconds}


def _write(run_dir: str | Path, name: str, data: dict[str, Any]) -> None:
    """Results are written atomically: a retried or killed step never leaves half a JSON file."""
    from .registry import atomic_write_json

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(run_dir) / name, data)
