"""Register step: a trained run directory → a verified model version (ONNX towers, Faiss index built
from the exported item tower, vocab, feature spec, model.json) in the registry and the BentoML store."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.data import item_batch, train_item_counts
from models.registry import load_checkpoint

from . import export as ex
from . import index as idx
from .config import config_from_dict
from .registry import ModelVersion, Registry, atomic_write_json, save_to_bentoml, sha256
from .tracking import tracked_run
from .train import prepare

logger = logging.getLogger(__name__)


def onnx_item_vectors(path: Path, data, batch_size: int = 65536) -> np.ndarray:
    """Every real item's vector through the exported item tower (rows = item index 1..N-1)."""
    sess = ex.session(path, threads=0)
    items = torch.arange(1, data.n_items)
    return np.concatenate(
        [ex.run_tower(sess, item_batch(data, items[i : i + batch_size])) for i in range(0, len(items), batch_size)]
    )


def onnx_user_vectors(path: Path, data, users: torch.Tensor, max_len: int, batch_size: int = 1024) -> np.ndarray:
    sess = ex.session(path, threads=0)
    return np.concatenate(
        [
            ex.run_tower(sess, ex.serving_batch(data, users[i : i + batch_size], max_len))
            for i in range(0, len(users), batch_size)
        ]
    )


PACKAGE = "package"  # a run's staged version files, before they are copied into the registry


def export_run(run_dir: str | Path, loaded: tuple | None = None) -> dict[str, Any]:
    """Export step: both towers of the run to ONNX (parity-checked), vocab and feature spec, staged in
    ``run_dir/package``. Returns the export record. ``loaded``: :func:`load_run`'s result, if at hand."""
    run_dir = Path(run_dir)
    model, config, cfg, (tables, enc, split) = loaded or load_run(run_dir)
    pkg = _fresh(run_dir / PACKAGE)
    record = ex.export(model, enc, cfg.train.max_len, pkg)
    atomic_write_json(run_dir / "export.json", record)
    return record


def index_run(
    run_dir: str | Path,
    index_cfg: idx.IndexConfig | None = None,
    recall_queries: int = 1000,
    loaded: tuple | None = None,
) -> dict:
    """Index step: item vectors from the exported item tower → Faiss index (ANN recall@100 measured
    against exact search on real user vectors), id map and popularity fallback, next to the export."""
    run_dir = Path(run_dir)
    pkg = run_dir / PACKAGE
    if not (pkg / "item_tower.onnx").exists():
        raise FileNotFoundError(f"{pkg} has no exported towers; run the export step first")
    model, config, cfg, (tables, enc, split) = loaded or load_run(run_dir)
    index_cfg = index_cfg or cfg.index
    L = cfg.train.max_len
    items = onnx_item_vectors(pkg / "item_tower.onnx", enc.data)
    g = torch.Generator().manual_seed(cfg.train.seed)
    users = 1 + torch.randperm(enc.data.n_users - 1, generator=g)[:recall_queries]
    queries = onnx_user_vectors(pkg / "user_tower.onnx", enc.data, users, L)
    index, report = idx.build_and_measure(items, queries, index_cfg, k=100)
    idx.write(index, pkg / "index.faiss")
    np.save(pkg / "item_ids.npy", np.asarray(enc.item_ids[1:], dtype=np.int64))
    np.save(pkg / "popularity.npy", train_item_counts(enc.data, split)[1:].numpy().astype(np.int64))
    logger.info("index %s over %d items: recall@%d %.4f", report.kind, report.n_items, report.k, report.recall_at_k)
    out = {"config": index_cfg.__dict__, "report": report.to_dict(), "embedding_dim": int(items.shape[1])}
    atomic_write_json(run_dir / "index.json", out)
    return out


def publish_run(
    run_dir: str | Path,
    registry: Registry | None = None,
    gate: dict[str, Any] | None = None,
    version: str | None = None,
    stage: str = "candidate",
    to_bentoml: bool = True,
) -> ModelVersion:
    """Register step: copies the staged package into the registry as a new verified version (atomic:
    it appears complete or not at all) with its metrics and gate verdict, and into the BentoML store.
    A new version is a *candidate*: the routing file, not the registry, decides what is served.

    Idempotent: the version is keyed by the run (:func:`run_key`), so a retried register step returns
    the version the first attempt created instead of registering a second one."""
    registry = registry or Registry()
    run_dir = Path(run_dir)
    pkg = run_dir / PACKAGE
    missing = [f for f in ("export.json", "index.json") if not (run_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}; run the export and index steps first")
    model, config = load_checkpoint(run_dir)
    record = json.loads((run_dir / "export.json").read_text())
    index = json.loads((run_dir / "index.json").read_text())
    pin = run_dir / "snapshot.json"  # the feature snapshot a pipeline run trained on (components.pipeline)
    snapshot = json.loads(pin.read_text()) if pin.exists() else {}
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}

    def fill(staging: Path) -> dict[str, Any]:
        shutil.copytree(pkg, staging, dirs_exist_ok=True)
        return {
            "model": model.name,
            "stage": stage,
            "embedding_dim": index["embedding_dim"],
            "multi_interest": model.multi_interest,
            "n_items": int(index["report"]["n_items"]),
            "dataset_fingerprint": config.get("dataset_fingerprint"),
            "snapshot": snapshot.get("id"),
            "snapshot_fingerprint": snapshot.get("fingerprint"),
            "training_signature": config_from_dict(config["run"]).training_signature(),
            "run_dir": str(run_dir),
            "mlflow_run_id": tracked_run(run_dir),  # where the run is compared (None: not tracked)
            "config": {"model": model.config(), "run": config["run"]},
            "metrics": {
                "test": metrics.get("test_metrics"),
                "val": metrics.get("val_metrics"),
                "popularity_test": metrics.get("popularity_test"),
            },
            "gate": gate,
            "export": record,
            "index": {"config": index["config"], "report": index["report"]},
        }

    mv = registry.write(model.name, fill, version, key=run_key(run_dir))
    if to_bentoml:
        save_to_bentoml(mv)
    return mv


def run_key(run_dir: str | Path) -> str:
    """What identifies a run's registration: its directory, the checkpoint it trained and the index
    settings it was packaged with (exporting the same run with another index is another version)."""
    import hashlib

    run_dir = Path(run_dir).resolve()
    index = json.loads((run_dir / "index.json").read_text())["config"] if (run_dir / "index.json").exists() else {}
    settings = hashlib.sha256(json.dumps(index, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{run_dir}@{sha256(run_dir / 'model.pt')[:16]}/{settings}"


def register_run(
    run_dir: str | Path,
    registry: Registry | None = None,
    index_cfg: idx.IndexConfig | None = None,
    version: str | None = None,
    gate: dict[str, Any] | None = None,
    to_bentoml: bool = True,
    recall_queries: int = 1000,
) -> ModelVersion:
    """Export → index → register in one call (the pipeline runs them as separate steps).
    ``index_cfg`` defaults to the run config's ``index`` section."""
    loaded = load_run(Path(run_dir))  # the checkpoint and the data, read once for both steps
    export_run(run_dir, loaded)
    index_run(run_dir, index_cfg, recall_queries, loaded)
    return publish_run(run_dir, registry, gate, version, to_bentoml=to_bentoml)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def load_run(run_dir: Path):
    """(model, checkpoint config, run config, (tables, encoded, split)) of a trained run; refuses if its
    data changed since training."""
    model, config = load_checkpoint(run_dir)
    if "run" not in config:
        raise ValueError(f"{run_dir}/config.json has no 'run' section; was it written by `recall train`?")
    cfg = config_from_dict(config["run"])
    prepared = prepare(cfg)
    if prepared[0].fingerprint() != config.get("dataset_fingerprint", prepared[0].fingerprint()):
        raise ValueError(f"the data of {run_dir} changed since training (dataset fingerprint differs); retrain first")
    return model, config, cfg, prepared
