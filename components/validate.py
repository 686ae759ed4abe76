"""Validate step: Great Expectations suites over the canonical tables; bad data stops the pipeline.

One suite per table (interactions, users, items, user_behaviour): schema and dtypes, no null keys, id
ranges, timestamps within bounds and not in the future, rating range, no duplicate
(user, item, timestamp) rows, history length ≤ L and equal to the list's length, and referential
integrity (every interaction's user and item exist). Checks that span tables or lists run on derived
columns (``user_exists``, ``item_exists``, ``hist_list_len``) so that each is still one named
expectation in the report.

A run writes, next to the data, ``gx/`` (a Great Expectations file project with the suites and the
validation results), its Data Docs (``gx/uncommitted/data_docs/local_site/index.html``) and
``validation.json``. A failure raises :class:`DataValidationError` naming each failed expectation
with a few offending rows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .settings import ValidationConfig

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

logger = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """The data broke expectations; the message names each one with example rows."""


def _gx():
    import great_expectations as gx

    return gx


def _frames(tables: dict[str, pd.DataFrame], cfg: ValidationConfig) -> dict[str, pd.DataFrame]:
    """The frames the suites see: derived columns added, list columns replaced by their lengths."""
    inter = tables["interactions"].copy()
    users, items = tables["users"], tables["items"]
    inter["user_exists"] = inter.user_id.isin(users.user_id.dropna())
    inter["item_exists"] = inter.item_id.isin(items.item_id)
    beh = tables["user_behaviour"].copy()
    beh["hist_list_len"] = beh.hist_item_ids.map(lambda x: -1 if x is None else len(x)).astype("int64")
    beh["user_exists"] = beh.user_id.isin(users.user_id)
    beh = beh.drop(columns=[c for c in ("hist_item_ids", "hist_timestamps") if c in beh])
    items = items.drop(columns=[c for c in ("genres",) if c in items])
    return {"interactions": inter, "users": users.copy(), "items": items, "user_behaviour": beh}


def expectations(cfg: ValidationConfig, has_rating: bool = True) -> dict[str, list[Any]]:
    """The suites. ``rating`` is optional (implicit-feedback logs have none): checked when present."""
    gx = _gx()
    E = gx.expectations
    now = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=cfg.future_slack_s)
    lo = pd.Timestamp(cfg.min_timestamp, tz="UTC")

    def ts_bounds(col: str = "event_timestamp") -> list[Any]:
        return [
            E.ExpectColumnValuesToNotBeNull(column=col),
            E.ExpectColumnValuesToBeBetween(column=col, min_value=lo.to_pydatetime(), max_value=now.to_pydatetime()),
        ]

    def ids(col: str) -> list[Any]:
        return [
            E.ExpectColumnValuesToNotBeNull(column=col),
            E.ExpectColumnValuesToBeInTypeList(column=col, type_list=["int64", "Int64", "int32"]),
            E.ExpectColumnValuesToBeBetween(column=col, min_value=1),
        ]

    return {
        "interactions": [
            E.ExpectTableColumnsToMatchSet(column_set=["user_id", "item_id", "event_timestamp"], exact_match=False),
            *ids("user_id"),
            *ids("item_id"),
            *ts_bounds(),
            *(
                [E.ExpectColumnValuesToBeBetween(column="rating", min_value=cfg.rating_min, max_value=cfg.rating_max)]
                if has_rating
                else []
            ),
            E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "event_timestamp"]),
            E.ExpectColumnValuesToBeInSet(column="user_exists", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="item_exists", value_set=[True]),
        ],
        "users": [
            E.ExpectTableColumnsToMatchSet(column_set=["user_id", "event_timestamp"], exact_match=False),
            *ids("user_id"),
            # A profile may change over time: one row per (user, time), not one per user.
            E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "event_timestamp"]),
            *ts_bounds(),
        ],
        "items": [
            E.ExpectTableColumnsToMatchSet(column_set=["item_id", "event_timestamp"], exact_match=False),
            *ids("item_id"),
            E.ExpectCompoundColumnsToBeUnique(column_list=["item_id", "event_timestamp"]),
            *ts_bounds(),
        ],
        "user_behaviour": [
            E.ExpectTableColumnsToMatchSet(column_set=["user_id", "event_timestamp", "hist_len"], exact_match=False),
            *ids("user_id"),
            *ts_bounds(),
            E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "event_timestamp"]),
            E.ExpectColumnValuesToBeBetween(column="hist_len", min_value=0, max_value=cfg.max_len),
            E.ExpectColumnValuesToBeBetween(column="hist_list_len", min_value=0, max_value=cfg.max_len),
            E.ExpectColumnPairValuesToBeEqual(column_A="hist_len", column_B="hist_list_len"),
            E.ExpectColumnValuesToBeInSet(column="user_exists", value_set=[True]),
        ],
    }


@dataclass(frozen=True)
class Failure:
    table: str
    expectation: str
    kwargs: dict[str, Any]
    unexpected: int | None
    rows: list[dict[str, Any]]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items() if k not in ("batch_id",))
        count = f": {self.unexpected} unexpected row(s)" if self.unexpected else ""
        rows = f"; e.g. {self.rows}" if self.rows else ""
        hint = SETTINGS_HINTS.get((self.expectation, self.kwargs.get("column")))
        return f"{self.table}: {self.expectation}({args}) failed{count}{rows}" + (f" — {hint}" if hint else "")


# The settings behind a failed expectation's bounds: what to change when the data is right.
SETTINGS_HINTS = {
    ("expect_column_values_to_be_between", "event_timestamp"): (
        "bounds from validation.min_timestamp and validation.future_slack_s; a file's numeric timestamps are "
        "read per data.timestamp_unit (s, ms, us, ns, ordinal)"
    ),
    ("expect_column_values_to_be_between", "rating"): "bounds from validation.rating_min and validation.rating_max",
    ("expect_column_values_to_be_between", "hist_len"): "bound from validation.max_len",
    ("expect_column_values_to_be_between", "hist_list_len"): "bound from validation.max_len",
}


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    tables: dict[str, dict[str, Any]]
    failures: list[Failure]
    data_docs: str | None

    def message(self) -> str:
        lines = [f"data validation failed ({len(self.failures)} expectation(s)):"]
        lines += [f"  - {f.describe()}" for f in self.failures]
        return "\n".join(lines)


def _json_safe(v: Any) -> Any:
    if isinstance(v, pd.Timestamp | dt.datetime):
        return v.isoformat()
    if isinstance(v, float) and v != v:
        return None
    return v.item() if hasattr(v, "item") else v


def validate_tables(
    tables: dict[str, pd.DataFrame], out_dir: str | Path | None = None, cfg: ValidationConfig = ValidationConfig()
) -> ValidationReport:
    """Runs every suite; with ``out_dir`` writes the GX project, results, Data Docs and validation.json there."""
    gx = _gx()
    frames = _frames(tables, cfg)
    if out_dir is not None:
        root = Path(out_dir) / "gx"
        shutil.rmtree(root, ignore_errors=True)  # every run starts from a fresh project: idempotent
        ctx = gx.get_context(mode="file", project_root_dir=str(Path(out_dir)))
    else:
        ctx = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own step timing is the progress
    source = ctx.data_sources.add_pandas("canonical")
    definitions = []
    for name, exps in expectations(cfg, "rating" in frames["interactions"]).items():
        suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=exps))
        bd = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        definitions.append(ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=bd, suite=suite)))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if out_dir is not None else []
    summary: dict[str, dict[str, Any]] = {}
    failures: list[Failure] = []
    for vd in definitions:
        frame = frames[vd.name]
        cp = gx.Checkpoint(name=f"validate_{vd.name}", validation_definitions=[vd], actions=actions)
        cp = ctx.checkpoints.add(cp)
        result = cp.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=None,
        )
        (res,) = result.run_results.values()
        summary[vd.name] = {"rows": len(frame), "success": res.success, "expectations": len(res.results)}
        for r in res.results:
            if r.success:
                continue
            failures.append(_failure(vd.name, r, tables.get(vd.name, frame), cfg.examples))
    docs = None
    if out_dir is not None:
        site = Path(out_dir) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        docs = str(site) if site.exists() else None
        report = {
            "success": not failures,
            "tables": summary,
            "failures": [f.describe() for f in failures],
            "data_docs": docs,
            "validated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (Path(out_dir) / "validation.json").write_text(json.dumps(report, indent=2, default=str))
    return ValidationReport(not failures, summary, failures, docs)


def _failure(table: str, r: Any, frame: pd.DataFrame, n: int) -> Failure:
    cfg = r.expectation_config
    result = r.result or {}
    idx = (result.get("partial_unexpected_index_list") or result.get("unexpected_index_list") or [])[:n]
    rows: list[dict[str, Any]] = []
    for i in idx:
        i = i if not isinstance(i, dict) else next(iter(i.values()))
        if i in frame.index:
            row = frame.loc[i]
            rows.append({k: _json_safe(v) for k, v in row.items() if not isinstance(v, list | tuple | np.ndarray)})
    if not rows and result.get("partial_unexpected_list"):
        rows = [{"value": _json_safe(v)} for v in result["partial_unexpected_list"][:n]]
    kwargs = {k: _json_safe(v) for k, v in cfg.kwargs.items() if k != "batch_id"}
    return Failure(table, cfg.type, kwargs, result.get("unexpected_count"), rows)


def validate(directory: str | Path, cfg: ValidationConfig = ValidationConfig(), write: bool = True) -> ValidationReport:
    """Validates the tables written by ``components.ingest`` in ``directory``; raises on failure."""
    d = Path(directory)
    tables = {t: pd.read_parquet(d / f"{t}.parquet") for t in ("interactions", "users", "items", "user_behaviour")}
    report = validate_tables(tables, d if write else None, cfg)
    if not report.success:
        raise DataValidationError(report.message())
    logger.info("validation passed: %s", report.tables)
    return report
