"""Feature store step: apply the Feast definitions, materialize to the online store, build training
sets with point-in-time joins, and read online features for serving.

The store is configured by ``feature_repo/feature_store.yaml`` (SQLite online store) or
``feature_repo/feature_store.redis.yaml`` with ``${RECALL_FEATURE_DIR}`` (the ingested tables and the
registry/online files) and ``${REDIS_CONNECTION}`` substituted here, never hard-coded.

Point in time: a ``user_behaviour`` snapshot holds the history at or before its timestamp. A training
example whose target happened at t asks for the features as of t − 1 µs, so its history (and any
profile value) is strictly older than its target.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

os.environ.setdefault("FEAST_USAGE", "False")

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1] / "feature_repo"
CONFIGS = {"sqlite": REPO / "feature_store.yaml", "redis": REPO / "feature_store.redis.yaml"}
BEHAVIOUR = ["hist_item_ids", "hist_timestamps", "hist_len"]
ONE_MICROSECOND = pd.Timedelta(microseconds=1)


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str  # the ingested tables; registry and SQLite online store live here too
    online: str = "sqlite"  # sqlite | redis
    redis: str = "localhost:6379"

    def __post_init__(self) -> None:
        if self.online not in CONFIGS:
            raise ValueError(f"unknown online store {self.online!r}; choose one of: {', '.join(CONFIGS)}")


def _render(cfg: StoreConfig) -> dict[str, Any]:
    text = CONFIGS[cfg.online].read_text()
    values = {"RECALL_FEATURE_DIR": str(Path(cfg.data_dir).resolve()), "REDIS_CONNECTION": cfg.redis}
    text = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), os.environ.get(m.group(1), m.group(0))), text)
    return yaml.safe_load(text)


def store(cfg: StoreConfig):
    """A Feast ``FeatureStore`` for ``cfg`` (the YAML config rendered with its paths)."""
    from feast import FeatureStore, RepoConfig

    raw = _render(cfg)
    config = RepoConfig(**raw)
    config.repo_path = REPO
    return FeatureStore(config=config)


def apply(cfg: StoreConfig):
    """Registers entities, views, the on-demand context view and the feature services."""
    from feature_repo.definitions import build

    fs = store(cfg)
    objs = build(cfg.data_dir)
    fs.apply([*objs["entities"], *objs["views"], *objs["on_demand"], *objs["services"]])
    logger.info("applied %d feature views to %s", len(objs["views"]), cfg.data_dir)
    return fs


def _earliest(data_dir: Path) -> dt.datetime:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    lows = [
        pc.min(pq.read_table(data_dir / f"{t}.parquet", columns=["event_timestamp"]).column(0)).as_py()
        for t in ("users", "items", "user_behaviour")
    ]
    return min(x for x in lows if x is not None) - dt.timedelta(seconds=1)


def materialize(fs, cfg: StoreConfig, end: dt.datetime | None = None) -> dict[str, str]:
    """Loads the latest feature values into the online store, incrementally.

    A view never materialized before is loaded from the earliest timestamp in the data (Feast's
    default first window, now − TTL, would miss old data such as ML-100K's 1997-98 events); later
    calls continue from where the previous one ended (``materialize_incremental``).
    """
    end = end or dt.datetime.now(dt.UTC)
    done: dict[str, str] = {}
    first = [v.name for v in fs.list_feature_views() if v.most_recent_end_time is None]
    if first:
        fs.materialize(start_date=_earliest(Path(cfg.data_dir)), end_date=end, feature_views=first)
        done |= {v: "full" for v in first}
    rest = [v.name for v in fs.list_feature_views() if v.name not in first]
    if rest:
        fs.materialize_incremental(end_date=end, feature_views=rest)
        done |= {v: "incremental" for v in rest}
    return done


def training_examples(interactions: pd.DataFrame, holdout: int = 2) -> pd.DataFrame:
    """Every training target: each user's events except the last ``holdout`` (validation and test),
    ordered by time, stable on ties, as in the leave-last-out split."""
    df = interactions[["user_id", "item_id", "event_timestamp"]].copy()
    df["_row"] = np.arange(len(df))
    df = df.sort_values(["user_id", "event_timestamp", "_row"], kind="stable")
    from_end = df.groupby("user_id").cumcount(ascending=False)
    out = df[from_end.to_numpy() >= holdout].drop(columns="_row").reset_index(drop=True)
    out.insert(0, "example_id", np.arange(len(out), dtype=np.int64))
    return out.rename(columns={"item_id": "target_item_id", "event_timestamp": "target_timestamp"})


def training_set(fs, examples: pd.DataFrame, service: str | None = None, features: list[str] | None = None):
    """Point-in-time features for every example: exactly one row per example, in example order.

    ``examples`` has ``example_id``, ``user_id`` and ``target_timestamp``; features are read as of
    ``target_timestamp − 1 µs`` and the context as of the target time itself.
    """
    entity = pd.DataFrame(
        {
            "example_id": examples.example_id.to_numpy(),
            "user_id": examples.user_id.to_numpy(),
            "event_timestamp": pd.to_datetime(examples.target_timestamp, utc=True) - ONE_MICROSECOND,
            "request_time": pd.to_datetime(examples.target_timestamp, utc=True),
        }
    )
    refs = fs.get_feature_service(service) if service else (features or [f"user_behaviour:{f}" for f in BEHAVIOUR])
    df = fs.get_historical_features(entity_df=entity, features=refs).to_df()
    if len(df) != len(entity) or df.example_id.duplicated().any():
        raise RuntimeError(
            f"point-in-time join returned {len(df)} rows for {len(entity)} examples; expected exactly one per example"
        )
    df = df.sort_values("example_id").reset_index(drop=True)
    extra = [c for c in examples.columns if c not in ("example_id", "user_id")]
    df = df.merge(examples[["example_id", *extra]], on="example_id", how="left", validate="one_to_one")
    if "hist_item_ids" in df:  # a first event has no earlier snapshot: an empty history
        for col in ("hist_item_ids", "hist_timestamps"):
            if col in df:
                df[col] = df[col].map(lambda x: [] if x is None else list(x))
        df["hist_len"] = df.hist_len.fillna(0).astype("int64")
    return df


def online_features(fs, user_ids: list[int], service: str | None = None, request_time: dt.datetime | None = None):
    """The latest features of these users from the online store (what serving calls).

    Returns a dict of column → list, one entry per user, in order; a user the store does not know gets
    ``None`` values (serving then falls back to popularity).
    """
    t = request_time or dt.datetime.now(dt.UTC)
    rows = [{"user_id": int(u), "request_time": t} for u in user_ids]
    refs = fs.get_feature_service(service) if service else [f"user_behaviour:{f}" for f in BEHAVIOUR]
    return fs.get_online_features(features=refs, entity_rows=rows).to_dict()


STEPS = ("ingest", "validate", "apply", "materialize", "training_set")


def run_pipeline(cfg: Any, steps: tuple[str, ...] = STEPS, service: str | None = None) -> dict[str, Any]:
    """ingest → validate → apply → materialize → training set for a ``RunConfig``; returns each step's
    wall time (s) and row counts. Validation failure raises before anything reaches the feature store."""
    import time

    from feature_repo.definitions import service_for

    from .ingest import ingest
    from .train import load_tables
    from .validate import validate

    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    store_cfg = StoreConfig(cfg.features.dir, cfg.features.online, cfg.features.redis)
    out: dict[str, Any] = {"seconds": {}, "rows": {}}
    fs = None

    def timed(name: str, fn):
        t0 = time.perf_counter()
        result = fn()
        out["seconds"][name] = time.perf_counter() - t0
        logger.info("%s: %.1fs", name, out["seconds"][name])
        return result

    if "ingest" in steps:
        res = timed("ingest", lambda: ingest(load_tables(cfg), cfg.features.dir, cfg.train.max_len))
        out["rows"].update(res.rows)
        # Where the tables came from, so a training run asking for other data is refused, not fed these.
        source = {"data": dataclasses.asdict(cfg.data), "fingerprint": res.fingerprint, "rows": res.rows}
        (Path(cfg.features.dir) / "source.json").write_text(json.dumps(source, indent=2, default=str))
    if "validate" in steps:
        vcfg = dataclasses.replace(cfg.validation, max_len=cfg.train.max_len)
        rep = timed("validate", lambda: validate(cfg.features.dir, vcfg))
        out["data_docs"] = rep.data_docs
    if "apply" in steps:
        fs = timed("apply", lambda: apply(store_cfg))
    if "materialize" in steps:
        fs = fs or store(store_cfg)
        timed("materialize", lambda: materialize(fs, store_cfg))
    if "training_set" in steps:
        fs = fs or store(store_cfg)

        def build() -> pd.DataFrame:
            examples = training_examples(pd.read_parquet(Path(cfg.features.dir) / "interactions.parquet"))
            df = training_set(fs, examples, service or service_for(cfg.model))
            df.to_parquet(Path(cfg.features.dir) / "training_set.parquet", index=False)
            return df

        out["rows"]["training_set"] = len(timed("training_set", build))
    return out
