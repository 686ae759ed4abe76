"""Training component: config → trained checkpoint directory with metrics and the run's config."""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models import distributed
from models.data import Split, leave_last_out, train_item_counts
from models.evaluation import evaluate_model, evaluate_popularity
from models.registry import build_model
from models.trainer import MatchTrainer, TrainResult

from .datasets import Encoded, Tables, encode, generate_synthetic, load_ml100k
from .registry import atomic_write_json
from .settings import RunConfig

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_tables(cfg: RunConfig) -> Tables:
    """The canonical tables of the configured source."""
    src = cfg.data
    if src.source == "synthetic":
        return generate_synthetic(src.synthetic)
    if src.source == "ml100k":
        return load_ml100k(src.path)
    if src.path is None:
        raise ValueError(f"data.source={src.source} needs data.path")
    if src.source == "file":
        from .ingest import read_interactions_file, tables_from_interactions

        return tables_from_interactions(read_interactions_file(src.path, src.columns, src.timestamp_unit))
    return Tables.read(src.path)


def prepare(cfg: RunConfig) -> tuple[Tables, Encoded, Split]:
    tables = load_tables(cfg)
    enc = encode(tables, max_len=cfg.train.max_len)
    return tables, enc, leave_last_out(enc.data)


@dataclass(frozen=True)
class TrainOutput:
    run_dir: str
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    popularity_test: dict[str, float]
    best_epoch: int
    train_seconds: float
    examples_per_s: float


def resume_config(run_dir: str | Path) -> RunConfig:
    """The settings of the interrupted run in ``run_dir`` (kept in its ``train_state.pt``), writing there
    again: :func:`run` with them continues after the last finished epoch."""
    from .config import config_from_dict

    state_path = Path(run_dir, "train_state.pt")
    if not state_path.exists():
        done = " (it holds a finished run)" if Path(run_dir, "model.pt").exists() else ""
        raise FileNotFoundError(f"nothing to resume in {run_dir}{done}: a run keeps train_state.pt from its first "
                                "finished epoch until its checkpoint is written")  # fmt: skip
    run = torch.load(state_path, map_location="cpu", weights_only=True, mmap=True).get("run")  # weights not read
    if not run:
        raise ValueError(f"{state_path} does not record its run's settings (written by an older version); "
                         "start the run again with its config")  # fmt: skip
    return dataclasses.replace(config_from_dict(run), out_dir=str(run_dir))


def run(cfg: RunConfig, prepared: tuple[Tables, Encoded, Split] | None = None) -> TrainOutput | None:
    """Trains ``cfg.model`` on the training split, early-stops on validation, then scores the test split.

    Writes ``model.pt``, ``config.json`` (model + run config) and ``metrics.json`` into ``cfg.out_dir``;
    a run into a directory where an interrupted run of the same recipe and data left its
    ``train_state.pt`` resumes it. Under ``torchrun --nproc_per_node=N`` the training is data-parallel
    (:class:`models.trainer.MatchTrainer`); rank 0 does everything after it, the other ranks return None.
    """
    world = distributed.setup(cfg.train.device)
    seed_everything(cfg.train.seed)
    tables, enc, split = prepared or prepare(cfg)
    model = build_model(cfg.model, enc.schema, **cfg.model_params)
    trainer = MatchTrainer(model, cfg.train, enc.data, split)
    extra = {"run": cfg.to_dict(), "dataset_fingerprint": tables.fingerprint()}
    result: TrainResult = trainer.fit(cfg.out_dir, extra)
    distributed.teardown()
    if not world.main:
        return None
    test = evaluate_model(model, enc.data, split, "test", cfg.train.max_len, cfg.exclude_seen, cfg.ks)
    pop = evaluate_popularity(train_item_counts(enc.data, split), enc.data, split, "test", cfg.exclude_seen, cfg.ks)
    out = TrainOutput(
        run_dir=str(cfg.out_dir),
        val_metrics=result.val_metrics,
        test_metrics=test,
        popularity_test=pop,
        best_epoch=result.best_epoch,
        train_seconds=result.train_seconds,
        examples_per_s=result.examples_per_s,
    )
    atomic_write_json(Path(cfg.out_dir, "metrics.json"), {**asdict(out), "history": result.history})
    track(cfg, out, result.history, extra["dataset_fingerprint"])
    return out


def track(cfg: RunConfig, out: TrainOutput, history: list[dict], fingerprint: str) -> None:
    """The run in MLflow (components.tracking): settings, per-epoch loss and validation, test metrics."""
    from .tracking import flat, record

    settings = {k: v for k, v in flat(cfg.to_dict()).items() if not k.startswith("tracking.")}
    per_epoch = [(h["epoch"], {("loss" if k == "loss" else f"val/{k}"): v for k, v in h.items() if k != "epoch"})
                 for h in history]  # fmt: skip
    metrics = {**{f"test/{k}": v for k, v in out.test_metrics.items()},
               **{f"popularity_test/{k}": v for k, v in out.popularity_test.items()},
               "best_epoch": out.best_epoch, "train_seconds": out.train_seconds,
               "examples_per_s": out.examples_per_s}  # fmt: skip
    tags = {"dataset_fingerprint": fingerprint, "data.source": cfg.data.source}
    record(cfg, cfg.out_dir, "train", params=settings, metrics=metrics, per_step=per_epoch, tags=tags)
