"""Feast definitions: entities ``user`` and ``item``; feature views ``user_profile``, ``user_behaviour``,
``user_seen`` and ``item_features`` over the ingested parquet tables; the on-demand view ``context``
computed from the request time; one versioned feature service per model family.

``user_behaviour`` and ``user_seen`` are fed by push sources as well (``user_behaviour_push``,
``user_seen_push``: the parquet tables are their batch sources), so a click pushed between two daily
runs reaches the online store at once (:func:`components.features.push_events`).

:func:`build` makes every object for a data directory; the module-level objects (for the ``feast`` CLI)
use ``$RECALL_FEATURE_DIR`` (default ``data`` beside this file).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Int64, String, UnixTimestamp

# Feature rows never expire within ten years of an example: ML-100K's events lie in 1997-98, and a
# short TTL would silently drop every feature of old data from point-in-time joins.
TTL = timedelta(days=3650)
PROFILE = {"age_bucket": String, "gender": String, "occupation": String, "zip_prefix": String}
ITEM = {"title": String, "year": Int64, "genres": Array(String)}
SERVICE_VERSION = "v1"
# Which feature service each model family reads (the user tower's inputs; see feature_spec.json).
FAMILIES = {
    "sequence": ["gru4rec", "narm", "sasrec", "stamp", "mind", "sine", "comirec_dr", "comirec_sa"],
    "profile_sequence": ["dssm", "facebook_dssm", "youtube_dnn", "youtube_sbc"],
}

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="a user (raw id)")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="an item (raw id)")

request = RequestSource(name="request", schema=[Field(name="request_time", dtype=UnixTimestamp)])


@on_demand_feature_view(
    sources=[request],
    schema=[
        Field(name="hour_of_day", dtype=Int64),
        Field(name="day_of_week", dtype=Int64),
        Field(name="is_weekend", dtype=Int64),
        Field(name="month", dtype=Int64),
    ],
    mode="pandas",
    description="context features of the moment of the request",
)
def context(inputs: pd.DataFrame) -> pd.DataFrame:
    from feature_repo.context import context_values  # (imported here: Feast serialises this function)

    return context_values(inputs["request_time"])


def _columns(path: Path) -> set[str]:
    return set(pq.read_schema(path).names) if path.exists() else set()


def build(data_dir: str | Path) -> dict[str, list]:
    """Every Feast object for the ingested tables in ``data_dir`` (absolute paths, so the registry
    works from any working directory)."""
    d = Path(data_dir).resolve()

    def source(table: str) -> FileSource:
        return FileSource(name=f"{table}_source", path=str(d / f"{table}.parquet"), timestamp_field="event_timestamp")

    users_cols = _columns(d / "users.parquet")
    items_cols = _columns(d / "items.parquet")
    profile = [Field(name=n, dtype=t) for n, t in PROFILE.items() if n in users_cols or not users_cols]
    user_profile = FeatureView(
        name="user_profile",
        entities=[user],
        ttl=TTL,
        schema=profile,
        source=source("users"),
        description="profile attributes (categorical, raw values; vocab/ maps them to model indices)",
    ) if profile else None  # an interactions-only log has no profile: no view (Feast cannot have an empty one)
    user_behaviour = FeatureView(
        name="user_behaviour",
        entities=[user],
        ttl=TTL,
        schema=[
            Field(name="hist_item_ids", dtype=Array(Int64)),
            Field(name="hist_timestamps", dtype=Array(Int64)),
            Field(name="hist_len", dtype=Int64),
        ],
        source=PushSource(name="user_behaviour_push", batch_source=source("user_behaviour")),
        description="the last L items at or before each snapshot, oldest → newest, with their times",
    )
    user_seen = FeatureView(
        name="user_seen",
        entities=[user],
        ttl=TTL,
        schema=[Field(name="seen_item_ids", dtype=Array(Int64))],
        source=PushSource(name="user_seen_push", batch_source=source("user_seen")),
        description="every item the user interacted with (serving excludes them; no model input)",
    )
    item_features = FeatureView(
        name="item_features",
        entities=[item],
        ttl=TTL,
        schema=[Field(name=n, dtype=t) for n, t in ITEM.items() if n in items_cols or not items_cols],
        source=source("items"),
        description="item attributes",
    )
    services = [
        FeatureService(
            name=f"recall_sequence_{SERVICE_VERSION}",
            features=[user_behaviour[["hist_item_ids", "hist_timestamps", "hist_len"]], context],
            description=f"sequence models: {', '.join(FAMILIES['sequence'])}",
        ),
        FeatureService(
            name=f"recall_profile_sequence_{SERVICE_VERSION}",
            features=[*([user_profile] if user_profile else []),
                      user_behaviour[["hist_item_ids", "hist_timestamps", "hist_len"]], context],  # fmt: skip
            description=f"profile + history models: {', '.join(FAMILIES['profile_sequence'])}",
        ),
    ]
    return {
        "entities": [user, item],
        "views": [v for v in (user_profile, user_behaviour, user_seen, item_features) if v is not None],
        "on_demand": [context],
        "services": services,
    }


def service_for(model: str) -> str:
    """The feature service a registered model reads."""
    for family, models in FAMILIES.items():
        if model in models:
            return f"recall_{family}_{SERVICE_VERSION}"
    raise ValueError(f"no feature service for model {model!r}; families: {FAMILIES}")


# Module-level objects for `feast apply` run in this directory.
_objects = build(os.environ.get("RECALL_FEATURE_DIR", Path(__file__).parent / "data"))
user_profile, user_behaviour, user_seen, item_features = _objects["views"]
recall_sequence_v1, recall_profile_sequence_v1 = _objects["services"]
