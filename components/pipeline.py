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

from . import tracking
from .gate import GateFailed, enforce, evaluate_gate
from .k8s import RUN_CONFIG  # the run's settings as its first step saw them (a step in another pod loads it)
from .settings import DataConfig, RunConfig

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
def features(
    cfg: RunConfig, steps: tuple[str, ...] = FEATURE_STEPS, interval: Any = None, snapshot: str | None = None
) -> dict[str, Any]:
    """The feature DAG's steps for a data interval (a validation failure raises before anything reaches
    Feast); the snapshot is published when materialize is done (components.snapshots)."""
    from .features import run_pipeline

    out = run_pipeline(cfg, steps, interval, snapshot)
    return {"dir": str(Path(cfg.features.dir).resolve()), **out}


# --- training ------------------------------------------------------------------------------------------
PIN = "snapshot.json"  # the feature snapshot a training run reads, from its first step to its last


class NothingNew(Exception):
    """This model with these settings was already trained on this snapshot; ``version`` has it."""

    def __init__(self, reason: str, version: str | None):
        super().__init__(reason)
        self.version = version


def pinned(cfg: RunConfig, run_dir: str | Path, snapshot: str | None = None) -> dict[str, Any]:
    """The run's feature snapshot: pinned by its first step (``snapshot``, else ``features.snapshot``,
    else the latest published one) and read back by every later step and retry. Refuses a snapshot that
    is unpublished, failed validation, or holds data of other settings than the run asks for."""
    from . import snapshots as sn

    p = Path(run_dir) / PIN
    if p.exists():
        record = json.loads(p.read_text())
        if snapshot and snapshot != record["id"]:
            raise ValueError(f"run directory {run_dir} is pinned to snapshot {record['id']}, not {snapshot}; "
                             "use another run name for another snapshot")  # fmt: skip
        return record
    root = Path(cfg.features.dir)
    sid = snapshot or cfg.features.snapshot or (sn.latest(root) or {}).get("id")
    if not sid:
        raise FileNotFoundError(f"{root} has no published feature snapshot: run the recall_features DAG "
                                "(or `recall features run`)")  # fmt: skip
    record = sn.manifest(root, sid)
    d = Path(record["dir"])
    report = json.loads((d / "validation.json").read_text()) if (d / "validation.json").exists() else {}
    if not report.get("success", False):
        raise ValueError(f"snapshot {sid} failed validation ({d / 'validation.json'}); fix the data, re-run features")
    wanted = cfg.data_settings()
    if record["data"] != wanted:
        diff = sorted(k for k in set(record["data"]) | set(wanted) if record["data"].get(k) != wanted.get(k))
        raise ValueError(
            f"snapshot {sid} holds data ingested with other data settings ({', '.join('data.' + k for k in diff)}: "
            f"{[record['data'].get(k) for k in diff]} there, {[wanted.get(k) for k in diff]} asked for); "
            "run recall_features with the same config and overrides first"
        )
    _write(run_dir, PIN, record)
    return record


def already_trained(cfg: RunConfig, snapshot: dict[str, Any]) -> str | None:
    """The registered version of this model trained on this snapshot's data with the same settings."""
    from .registry import Registry

    mv = Registry(cfg.registry).find(
        cfg.model, training_signature=cfg.training_signature(), snapshot_fingerprint=snapshot["fingerprint"]
    )
    return None if mv is None else mv.tag


def training_set(cfg: RunConfig, run_dir: str | Path, snapshot: str | None = None, force: bool = False) -> dict:
    """The first training step: pins the feature snapshot, stops with :class:`NothingNew` when this model
    was already trained on that data with the same settings (unless ``force``), then builds Feast's
    point-in-time training set for every target and checks train/serve parity: each target's Feast
    history and context must equal the trainer's (components.features.history_parity); a difference
    fails the run."""
    import time

    from feature_repo.definitions import service_for

    from . import features as ft
    from .datasets import Tables

    snap = pinned(cfg, run_dir, snapshot)
    _write(run_dir, RUN_CONFIG, json.loads(json.dumps(cfg.to_dict(), default=str)))
    if not force and (tag := already_trained(cfg, snap)):
        why = (f"nothing new: {tag} was trained on snapshot {snap['id']} (the same data) with the same settings; "
               "nothing to train (force it with the force param / --force)")  # fmt: skip
        _write(run_dir, "nothing_new.json", {"reason": why, "version": tag, "snapshot": snap["id"]})
        raise NothingNew(why, tag)
    t0 = time.perf_counter()
    d = Path(snap["dir"])
    tables = Tables.read(d)
    fcfg = cfg.features
    fs = ft.store(ft.StoreConfig(str(fcfg.dir), fcfg.online, fcfg.redis, registry=str(d / "registry.db")))
    examples = ft.training_examples(tables.interactions)
    df = ft.training_set(fs, examples, service_for(cfg.model))
    parity = ft.history_parity(tables, examples, df, cfg.train.max_len)
    summary = {"snapshot": snap["id"], "rows": len(df), "parity": parity,
               "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    _write(run_dir, "training_set.json", summary)
    if parity["mismatches"] or any(parity["context_mismatches"].values()):
        raise ValueError(f"train/serve skew on snapshot {snap['id']}: of {parity['targets']} training targets, "
                         f"{parity['mismatches']} see another history in Feast than in training and "
                         f"{parity['context_mismatches']} another context, "
                         f"e.g. {parity['first']}")  # fmt: skip
    return summary


def run_config(run_dir: str | Path) -> RunConfig:
    """The settings training_set saved in the run directory: what a later step in another pod or container
    (the Kubernetes train pod, Kubeflow's steps) runs with."""
    from .config import config_from_dict

    return config_from_dict(_read(Path(run_dir), RUN_CONFIG, "training_set"))


def training_config(cfg: RunConfig, run_dir: str | Path) -> RunConfig:
    """The run config the train step uses: the pinned snapshot's validated tables, output in ``run_dir``."""
    data = DataConfig(source="parquet", path=pinned(cfg, run_dir)["dir"])
    return dataclasses.replace(cfg, data=data, out_dir=str(Path(run_dir).resolve()))


def train(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    from . import train as tr

    out = tr.run(training_config(cfg, run_dir))
    if out is None:  # a torchrun worker: rank 0 reports
        return {}
    return {"run_dir": out.run_dir, "best_epoch": out.best_epoch, "train_seconds": round(out.train_seconds, 2),
            "examples_per_s": round(out.examples_per_s), "test": out.test_metrics}  # fmt: skip


def train_in_pod(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """The train step where the step itself is a pod (Kubeflow): in this process; under torchrun, one
    process per GPU, with ``kubernetes.gpus`` > 1; with ``kubernetes.nodes`` > 1 as a PyTorchJob that this
    pod submits and waits for (its ServiceAccount needs infra/k8s/base/training.yaml's Role)."""
    import subprocess

    from .k8s import submit_and_wait, train_command

    k8s, run_dir = cfg.kubernetes, str(Path(run_dir).resolve())
    if k8s.nodes > 1:
        submit_and_wait(k8s, run_dir)
    elif k8s.gpus > 1:
        subprocess.run(train_command(k8s, run_dir), check=True)
    else:
        return train(cfg, run_dir)
    m = _read(Path(run_dir), "metrics.json", "train")  # rank 0 wrote it on the shared volume
    return {"run_dir": run_dir, "best_epoch": m["best_epoch"], "train_seconds": round(m["train_seconds"], 2),
            "examples_per_s": round(m["examples_per_s"]), "test": m["test_metrics"]}  # fmt: skip


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
    served = None if prod is None else compare.ServedVersion(prod, tables.items)  # once for both splits, exact
    prod_end = None if prod is None else compare.data_end(prod.meta, rcfg.features.dir)
    result: dict[str, Any] = {"model": model.name, "ks": list(rcfg.ks), "curve_ks": list(CURVE_KS), "slices": {}}
    if prod is not None:
        fp = prod.meta.get("dataset_fingerprint")
        result["production"] = {"tag": prod.tag, "dataset_fingerprint": fp, "n_items": len(prod.item_ids),
                                "scored_exactly": served.exact}  # fmt: skip
    else:
        result["production"] = None
    result["no_production"] = why
    for part in ("val", "test"):
        rows = compare.rows(enc.data, split, part, enc.user_ids, enc.item_ids)
        ranks = {"candidate": model_ranks(model, enc.data, split, part, L, rcfg.exclude_seen).numpy(),
                 "popularity": popularity_ranks(counts, enc.data, split, part, rcfg.exclude_seen).numpy()}  # fmt: skip
        if served is not None:
            ranks["production"] = served.ranks(enc.data, rows, enc.item_ids, tables.users, rcfg.exclude_seen, max(ks))
            result["production"][part] = metrics_from_ranks(torch.as_tensor(ranks["production"]), ks)
            result["production"].setdefault("difference", {})[part] = compare.differences(
                ranks["candidate"], ranks["production"], rcfg.ks)  # fmt: skip
        result[part] = metrics_from_ranks(torch.as_tensor(ranks["candidate"]), ks)
        result[f"popularity_{part}"] = metrics_from_ranks(torch.as_tensor(ranks["popularity"]), ks)
        masks = compare.slices(enc.data, rows, counts, prod, prod_end)
        result["slices"][part] = compare.sliced(ranks, masks, rcfg.ks)
    if served is not None:  # the newest held-back version of this recipe vs production on events neither saw
        held, since, why = compare.challenger(cfg.registry, model.name, rcfg.training_signature(), prod, prod_end,
                                              rcfg.features.dir, float(enc.data.times.max()))  # fmt: skip
        result["backtest"] = {"why": why} if held is None else compare.backtest(
            enc.data, enc.user_ids, enc.item_ids, tables, served, held, since, rcfg.exclude_seen, rcfg.ks)  # fmt: skip
    result["dataset_fingerprint"] = config.get("dataset_fingerprint")
    result["exclude_seen"] = rcfg.exclude_seen
    if (run_dir / "training_set.json").exists():  # the snapshot and the train/serve parity check
        result["training_set"] = json.loads((run_dir / "training_set.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    result["report"] = str(write_report(result, trained.get("history", []), run_dir / "report.html",
                                        trained.get("best_epoch")))  # fmt: skip
    _write(run_dir, "evaluation.json", result)
    tracking.record(cfg, run_dir, "evaluate", files=(run_dir / "report.html", run_dir / "evaluation.json"))
    return {"report": result["report"], "test": {k: result["test"][k] for k in _headline(rcfg.ks)}}


def _headline(ks: tuple[int, ...]) -> list[str]:
    return [f"{m}@{k}" for k in ks[:2] for m in ("recall", "ndcg", "mrr")]


def gate(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """Writes gate.json (always, with every check's numbers); raises GateFailed if the candidate fails."""
    ev = _read(Path(run_dir), "evaluation.json", "evaluate")
    split = cfg.gate.split
    prod = ev.get("production")
    production = None if prod is None else {"tag": prod["tag"], "metrics": prod[split],
                                            "difference": (prod.get("difference") or {}).get(split)}
    why = ev.get("no_production") or "nothing in production yet"
    verdict = evaluate_gate(ev[split], ev[f"popularity_{split}"], cfg.gate, production,
                            ev.get("slices", {}).get(split), why, ev.get("backtest"))  # fmt: skip
    verdict["decided_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _write(run_dir, "gate.json", verdict)
    from .report import add_gate

    add_gate(Path(run_dir) / "report.html", verdict)
    tracking.record(cfg, run_dir, "gate", tags={"gate": "passed" if verdict["passed"] else "failed"},
                    files=(Path(run_dir) / "gate.json", Path(run_dir) / "report.html"))  # fmt: skip
    enforce(verdict)
    return {"passed": True, "checks": [f"{c['name']}: {c['status']}" for c in verdict["checks"]],
            "replace_production": verdict["promotion"]}  # fmt: skip


def passed_gate(run_dir: str | Path) -> dict[str, Any]:
    """The run's gate verdict; :class:`GateFailed` (every failed check) unless the candidate passed."""
    verdict = _read(Path(run_dir), "gate.json", "gate")
    if not verdict.get("passed"):
        raise GateFailed(verdict)
    return verdict


def export(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    from .register import export_run

    passed_gate(run_dir)
    rec = export_run(run_dir)
    return {"max_abs_diff": max(rec["parity"]["user"]["max_abs_diff"], rec["parity"]["item"]["max_abs_diff"])}


def index(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    from .register import index_run

    passed_gate(run_dir)
    out = index_run(run_dir, cfg.index)
    return {k: out["report"][k] for k in ("kind", "n_items", "k", "recall_at_k")}


def register(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """Registers the gated, exported, indexed run as a *candidate* version (routing untouched)."""
    from .register import publish_run
    from .registry import Registry

    verdict = passed_gate(run_dir)
    mv = publish_run(run_dir, Registry(cfg.registry), gate=verdict, to_bentoml=cfg.bentoml_store)
    out = {"tag": mv.tag, "path": str(mv.path), "stage": mv.meta["stage"]}
    _write(run_dir, "registered.json", out)
    tracking.record(cfg, run_dir, "register", tags={"registered_version": mv.tag, "stage": mv.meta["stage"]})
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
    force: bool = False,
) -> dict[str, Any]:
    """Every step in order without an orchestrator (``recall pipeline run``); stops at the first failure.
    Returns each step's summary and wall time; when this model was already trained on the snapshot's data
    with the same settings, stops after pinning it with ``nothing_new`` (the reason) and ``version``."""
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
    try:
        step("training_set", lambda: training_set(cfg, run_dir, force=force))
    except NothingNew as e:
        return {"run_dir": str(run_dir), "steps": steps, "seconds": seconds,
                "nothing_new": str(e), "version": e.version}  # fmt: skip
    for name in TRAINING_STEPS[1:]:
        step(name, lambda fn=STEP_FUNCTIONS[name]: fn(cfg, run_dir))
    return {"run_dir": str(run_dir), "steps": steps, "seconds": seconds}


def _write(run_dir: str | Path, name: str, data: dict[str, Any]) -> None:
    """Results are written atomically: a retried or killed step never leaves half a JSON file."""
    from .registry import atomic_write_json

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(run_dir) / name, data)
