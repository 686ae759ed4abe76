"""Register step: a trained run directory → a verified model version (ONNX towers, Faiss index built
from the exported item tower, vocab, feature spec, model.json) in the registry and the BentoML store."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.data import item_batch, train_item_counts
from models.registry import load_checkpoint

from . import export as ex
from . import index as idx
from .config import config_from_dict
from .registry import ModelVersion, Registry, save_to_bentoml
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


def register_run(
    run_dir: str | Path,
    registry: Registry | None = None,
    index_cfg: idx.IndexConfig | None = None,
    version: str | None = None,
    gate: dict[str, Any] | None = None,
    to_bentoml: bool = True,
    recall_queries: int = 1000,
) -> ModelVersion:
    """Exports, indexes and registers the run in ``run_dir``; returns the verified version.
    ``index_cfg`` defaults to the run config's ``index`` section."""
    registry = registry or Registry()
    run_dir = Path(run_dir)
    model, config = load_checkpoint(run_dir)
    if "run" not in config:
        raise ValueError(f"{run_dir}/config.json has no 'run' section; was it written by `recall train`?")
    cfg = config_from_dict(config["run"])
    index_cfg = index_cfg or cfg.index
    tables, enc, split = prepare(cfg)
    if tables.fingerprint() != config.get("dataset_fingerprint", tables.fingerprint()):
        raise ValueError(f"the data of {run_dir} changed since training (dataset fingerprint differs); retrain first")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    L = cfg.train.max_len

    def fill(staging: Path) -> dict[str, Any]:
        record = ex.export(model, enc, L, staging)
        items = onnx_item_vectors(staging / "item_tower.onnx", enc.data)
        g = torch.Generator().manual_seed(cfg.train.seed)
        users = 1 + torch.randperm(enc.data.n_users - 1, generator=g)[:recall_queries]
        queries = onnx_user_vectors(staging / "user_tower.onnx", enc.data, users, L)
        index, report = idx.build_and_measure(items, queries, index_cfg, k=100)
        idx.write(index, staging / "index.faiss")
        np.save(staging / "item_ids.npy", np.asarray(enc.item_ids[1:], dtype=np.int64))
        np.save(staging / "popularity.npy", train_item_counts(enc.data, split)[1:].numpy().astype(np.int64))
        logger.info("index %s over %d items: recall@%d %.4f", report.kind, report.n_items, report.k, report.recall_at_k)
        return {
            "model": model.name,
            "embedding_dim": int(items.shape[1]),
            "multi_interest": model.multi_interest,
            "n_items": int(items.shape[0]),
            "dataset_fingerprint": config.get("dataset_fingerprint"),
            "run_dir": str(run_dir),
            "config": {"model": model.config(), "run": config["run"]},
            "metrics": {
                "test": metrics.get("test_metrics"),
                "val": metrics.get("val_metrics"),
                "popularity_test": metrics.get("popularity_test"),
            },
            "gate": gate,
            "export": record,
            "index": {"config": index_cfg.__dict__, "report": report.to_dict()},
        }

    mv = registry.write(model.name, fill, version)
    if to_bentoml:
        save_to_bentoml(mv)
    return mv
