"""Great Expectations gates the data: every class of bad input is caught and named; good data passes."""

import json

import pandas as pd
import pytest

from components.datasets import SyntheticConfig, generate_synthetic
from components.ingest import ingest
from components.validate import DataValidationError, ValidationConfig, validate, validate_tables

pytestmark = pytest.mark.integration
L = 10
CFG = ValidationConfig(max_len=L)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    ingest(generate_synthetic(SyntheticConfig(n_users=50, n_items=40, n_interactions=800, n_clusters=4, seed=1)), d, L)
    return d


def _tables(d):
    return {t: pd.read_parquet(d / f"{t}.parquet") for t in ("interactions", "users", "items", "user_behaviour")}


def test_good_data_passes_and_writes_results_and_data_docs(good):
    report = validate(good, CFG)
    assert report.success and set(report.tables) == {"interactions", "users", "items", "user_behaviour"}
    assert report.data_docs and report.data_docs.endswith("index.html")
    html = open(report.data_docs).read()
    assert "interactions" in html
    summary = json.loads((good / "validation.json").read_text())
    assert summary["success"] and summary["tables"]["interactions"]["expectations"] >= 10


def _break(tables, kind):
    inter = tables["interactions"]
    if kind == "null ids":
        inter["user_id"] = inter.user_id.astype("Float64")
        inter.loc[[3, 7], "user_id"] = None
    elif kind == "unknown user":
        inter.loc[5, "user_id"] = 999_999
    elif kind == "unknown item":
        inter.loc[5, "item_id"] = 888_888
    elif kind == "duplicated rows":
        tables["interactions"] = pd.concat([inter, inter.iloc[[10, 11]]], ignore_index=True)
    elif kind == "future timestamps":
        inter.loc[4, "event_timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=30)
    elif kind == "out-of-range ratings":
        inter.loc[[1, 2], "rating"] = [7.0, -1.0]
    elif kind == "over-long histories":
        beh = tables["user_behaviour"]
        beh.at[0, "hist_item_ids"] = list(range(1, L + 6))
        beh.loc[0, "hist_len"] = L + 5
    elif kind == "history length disagrees with the list":
        tables["user_behaviour"].loc[1, "hist_len"] = 0
    return tables


CASES = {
    "null ids": "interactions: expect_column_values_to_not_be_null(column='user_id') failed: 2 unexpected",
    "unknown user": "interactions: expect_column_values_to_be_in_set(column='user_exists'",
    "unknown item": "interactions: expect_column_values_to_be_in_set(column='item_exists'",
    "duplicated rows": (
        "interactions: expect_compound_columns_to_be_unique(column_list=['user_id', 'item_id', 'event_timestamp']"
    ),
    "future timestamps": "interactions: expect_column_values_to_be_between(column='event_timestamp'",
    "out-of-range ratings": (
        "interactions: expect_column_values_to_be_between(column='rating', min_value=0.0, max_value=5.0) "
        "failed: 2 unexpected"
    ),
    "over-long histories": (
        "user_behaviour: expect_column_values_to_be_between(column='hist_len', min_value=0.0, max_value=10.0) "
        "failed: 1 unexpected"
    ),
    "history length disagrees with the list": (
        "user_behaviour: expect_column_pair_values_to_be_equal(column_A='hist_len', column_B='hist_list_len')"
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_each_class_of_bad_input_is_named(good, kind):
    tables = _break(_tables(good), kind)
    report = validate_tables(tables, None, CFG)
    assert not report.success
    message = report.message()
    assert CASES[kind] in message, message
    assert "e.g. [" in message  # a few offending rows are quoted
    if kind == "unknown user":
        assert "999999" in message
    if kind == "out-of-range ratings":
        assert "7.0" in message


def test_a_failed_validation_stops_the_step_and_names_the_expectation(good, tmp_path):
    tables = _break(_tables(good), "out-of-range ratings")
    for name, df in tables.items():
        df.to_parquet(tmp_path / f"{name}.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"expect_column_values_to_be_between\(column='rating'"):
        validate(tmp_path, CFG)
    assert not json.loads((tmp_path / "validation.json").read_text())["success"]
