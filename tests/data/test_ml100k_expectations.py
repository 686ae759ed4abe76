"""The expectation suites and the point-in-time training set on the real MovieLens-100K."""

import json

import pandas as pd
import pytest

from components.datasets import load_ml100k
from components.features import BEHAVIOUR, StoreConfig, apply, training_examples, training_set
from components.ingest import ingest
from components.validate import ValidationConfig, validate
from feature_repo.context import CONTEXT
from tests.parity import assert_histories_match

pytestmark = pytest.mark.data
L = 50


@pytest.fixture(scope="module")
def ml_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ml100k")
    out = ingest(load_ml100k(), d, L)
    assert out.rows["interactions"] == 100_000 and out.rows["users"] == 943 and out.rows["items"] == 1682
    return d


def test_ml100k_passes_every_suite(ml_dir):
    report = validate(ml_dir, ValidationConfig(max_len=L, rating_min=1, rating_max=5))
    assert report.success
    summary = json.loads((ml_dir / "validation.json").read_text())
    assert summary["tables"]["interactions"]["rows"] == 100_000
    assert summary["tables"]["user_behaviour"]["rows"] == pd.read_parquet(ml_dir / "user_behaviour.parquet").shape[0]


def test_ml100k_training_set_one_row_per_example_without_leakage(ml_dir):
    fs = apply(StoreConfig(str(ml_dir)))
    examples = training_examples(pd.read_parquet(ml_dir / "interactions.parquet"))
    assert len(examples) == 100_000 - 2 * 943
    refs = [f"user_behaviour:{f}" for f in BEHAVIOUR] + [f"context:{n}" for n in CONTEXT]
    df = training_set(fs, examples, features=refs)  # histories and the on-demand context
    assert len(df) == len(examples) and df.example_id.is_unique and set(CONTEXT) <= set(df.columns)
    epoch = pd.Timestamp(0, tz="UTC")
    target = (df.target_timestamp - epoch).dt.total_seconds()
    newest = df.hist_timestamps.map(lambda h: max(h) if len(h) else -1)
    assert (newest < target).all()
    # Every example after a user's first second has a history; 1997-98 data is inside the TTL.
    later = df.groupby("user_id").target_timestamp.transform("min") < df.target_timestamp
    assert (df.hist_len[later] > 0).all()
    # Train/serve parity of histories and context for every training target, same-second ties
    # included (thousands in ML-100K).
    ties = assert_histories_match(load_ml100k(), examples, df, L)
    assert ties > 1000
