"""The real MovieLens-100K files through the loader, encoder, split and popularity baseline."""

import pandas as pd
import pytest

from components.datasets import encode, load_ml100k, ml100k_dir
from models.data import leave_last_out, train_item_counts
from models.evaluation import evaluate_popularity

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def ml():
    tables = load_ml100k()
    enc = encode(tables)
    return tables, enc, leave_last_out(enc.data)


def test_directory_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECALL_ML100K_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="RECALL_ML100K_DIR"):
        ml100k_dir()


def test_canonical_tables(ml):
    tables, enc, _ = ml
    i, u, it = tables.interactions, tables.users, tables.items
    assert (len(i), len(u), len(it)) == (100_000, 943, 1682)
    assert i.user_id.dtype == "int64" and i.item_id.dtype == "int64"
    assert isinstance(i.event_timestamp.dtype, pd.DatetimeTZDtype)
    assert i.event_timestamp.min().year == 1997 and i.event_timestamp.max().year == 1998
    assert i.rating.between(1, 5).all()
    assert not i.duplicated(["user_id", "item_id"]).any()
    assert set(i.user_id) <= set(u.user_id) and set(i.item_id) <= set(it.item_id)
    assert it.genres.map(len).min() >= 1
    assert (enc.data.n_users, enc.data.n_items) == (944, 1683)


def test_popularity_baseline_on_the_protocol(ml):
    """Pins our protocol: time-ordered (file order on equal timestamps) leave-last-out, train counts,
    full corpus, seen items masked, ties against the target."""
    _, enc, split = ml
    assert split.eval_users("test").numel() == 943
    m = evaluate_popularity(train_item_counts(enc.data, split), enc.data, split, "test", ks=(10, 20))
    assert m["recall@10"] == pytest.approx(0.0838, abs=5e-4)
    assert m["ndcg@10"] == pytest.approx(0.0432, abs=5e-4)
    assert m["recall@20"] == pytest.approx(0.1262, abs=5e-4)
