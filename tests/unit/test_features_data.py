"""Feature specs, the embedding bank, the split and the batch builders."""

import pytest
import torch

from components.config import load_config
from components.datasets import SyntheticConfig, generate_synthetic
from models.data import build_batch, n_targets, seen_before, train_item_counts, training_examples
from models.features import EmbeddingBank, SequenceFeature, SparseFeature, pooled_lookup
from models.layers import MLP


def test_shared_embedding_table_and_padding():
    feats = [SparseFeature("item_id", 10, 4), SequenceFeature("hist", 10, 4, pooling="mean", shared_with="item_id")]
    bank = EmbeddingBank(feats)
    assert list(bank.tables) == ["item_id"]
    assert torch.equal(bank.tables["item_id"].weight[0], torch.zeros(4))
    ids = torch.tensor([[0, 0, 3, 5]])
    w = bank.tables["item_id"].weight
    assert torch.allclose(bank.embed("hist", ids), (w[3] + w[5]) / 2)


@pytest.mark.parametrize("pooling", ["mean", "sum", "max"])
def test_pooling_ignores_padding(pooling):
    w = torch.randn(6, 3)
    ids = torch.tensor([[0, 2, 4], [0, 0, 0]])
    out = pooled_lookup(w, ids, pooling)
    ref = {"mean": (w[2] + w[4]) / 2, "sum": w[2] + w[4], "max": torch.maximum(w[2], w[4])}[pooling]
    assert torch.allclose(out[0], ref) and torch.equal(out[1], torch.zeros(3))


def test_weighted_pooling_is_a_weighted_mean():
    w = torch.randn(6, 3)
    out = pooled_lookup(w, torch.tensor([[0, 2, 4]]), "mean", torch.tensor([[9.0, 1.0, 3.0]]))
    assert torch.allclose(out[0], (w[2] + 3 * w[4]) / 4, atol=1e-6)


def test_bad_specs_name_the_problem():
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        SequenceFeature("h", 5, 4, pooling="avg")
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        MLP(4, [8, 4], activation="relux")


def test_leave_last_out_split(tiny):
    _, enc, split = tiny
    d = enc.data
    n = d.lengths
    eligible = n >= 3
    assert torch.equal(split.test_pos[eligible], n[eligible] - 1)
    assert torch.equal(split.val_pos[eligible], n[eligible] - 2)
    assert (split.test_pos[~eligible] == -1).all()
    # Events are time-ordered within each user.
    for u in range(1, d.n_users):
        t = d.times[d.indptr[u] : d.indptr[u + 1]]
        assert (t[1:] >= t[:-1]).all()


def test_train_counts_exclude_val_and_test(tiny):
    _, enc, split = tiny
    assert int(train_item_counts(enc.data, split).sum()) == int(split.train_end.sum())


def test_point_batch_history_is_strictly_before_the_target(tiny):
    _, enc, split = tiny
    d = enc.data
    u = torch.tensor([1, 2])
    pos = torch.tensor([5, 1])
    b = build_batch(d, u, pos, max_len=4)
    assert b["hist_item_ids"][0].tolist() == d.items[d.indptr[1] + 1 : d.indptr[1] + 5].tolist()
    assert b["hist_item_ids"][1].tolist() == [0, 0, 0, int(d.items[d.indptr[2]])]
    assert b["target"].tolist() == [int(d.items[d.indptr[1] + 5]), int(d.items[d.indptr[2] + 1])]
    assert (b["hist_age"][0] >= 0).all()


@pytest.mark.parametrize("context", [0, 3])
def test_causal_windows_predict_every_training_event_once(tiny, context):
    _, enc, split = tiny
    d = enc.data
    users, pos = training_examples(d, split, causal=True, max_len=8, context=context)
    b = build_batch(d, users, pos, max_len=8, causal=True, context=context)
    predicted = (b["target_seq"] > 0).sum().item()
    expect = int((split.train_end - 1).clamp(min=0).sum())
    assert predicted == expect == n_targets(split, True, users, pos, 8, context)
    # target_seq is the history shifted by one: slot i predicts the item in slot i+1.
    assert torch.equal(
        b["target_seq"][:, context:-1][b["target_seq"][:, context:-1] > 0],
        b["hist_item_ids"][:, context + 1 :][b["target_seq"][:, context:-1] > 0],
    )


def test_seen_before_csr(tiny):
    _, enc, _ = tiny
    d = enc.data
    indptr, idx = seen_before(d, torch.tensor([3]), torch.tensor([4]))
    assert indptr.tolist() == [0, 4] and idx.tolist() == d.items[d.indptr[3] : d.indptr[3] + 4].tolist()


def test_synthetic_is_deterministic_and_has_no_repeats():
    cfg = SyntheticConfig(n_users=50, n_items=60, n_interactions=1000, seed=9)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    assert a.interactions.equals(b.interactions)
    assert not a.interactions.duplicated(["user_id", "item_id"]).any()
    assert a.fingerprint() == b.fingerprint()
    assert (
        a.fingerprint()
        != generate_synthetic(SyntheticConfig(n_users=50, n_items=60, n_interactions=1000, seed=10)).fingerprint()
    )


def test_config_layers_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: dssm\ntrain: {epochs: 3, mode: 1}\n")
    cfg = load_config(p, ["train.epochs=7", "data.synthetic.n_users=10"])
    assert (cfg.model, cfg.train.epochs, cfg.train.mode, cfg.data.synthetic.n_users) == ("dssm", 7, "pairwise", 10)


def test_event_times_are_unix_seconds_whatever_the_datetime_unit():
    """Parquet round-trips keep datetime64[us]; the encoded times (history ages, windows) must still be
    unix seconds, as serving computes them, not the raw microsecond integers divided by 1e9."""
    import pandas as pd

    from components.datasets import Tables, encode

    ts = pd.to_datetime([1_000_000_000, 1_000_086_400, 1_000_172_800], unit="s", utc=True)
    inter = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "event_timestamp": ts})
    users = pd.DataFrame({"user_id": [1]})
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["a", "b", "c"], "genres": [[], [], []], "year": [0, 0, 0]})
    for unit in ("ns", "us", "ms", "s"):
        t = inter.assign(event_timestamp=ts.astype(f"datetime64[{unit}, UTC]"))
        times = encode(Tables(t, users, items)).data.times.tolist()
        assert times == [1_000_000_000.0, 1_000_086_400.0, 1_000_172_800.0], unit


def test_context_of_a_moment_hand_worked_and_in_batches():
    import pandas as pd

    from components.datasets import Tables, encode
    from feature_repo.context import CONTEXT, context_values
    from models.schema import CONTEXT_FEATURES

    assert tuple(CONTEXT) == CONTEXT_FEATURES  # the models know the same names Feast computes
    t = pd.Series(pd.to_datetime(["2024-05-04 13:59:59", "2024-12-30 00:00:00"], utc=True))  # Sat, Mon
    got = context_values(t).to_dict("list")
    assert got == {"hour_of_day": [13, 0], "day_of_week": [5, 0], "is_weekend": [1, 0], "month": [5, 12]}
    inter = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [10, 11, 12], "event_timestamp": list(t) + [t[1]]})
    enc = encode(
        Tables(
            inter,
            pd.DataFrame({"user_id": [1]}),
            pd.DataFrame(
                {"item_id": [10, 11, 12], "title": ["a", "b", "c"], "genres": [[], [], []], "year": [0, 0, 0]}
            ),
        )
    )
    assert enc.schema.context == {"hour_of_day": 25, "day_of_week": 8, "is_weekend": 3, "month": 14}
    b = build_batch(enc.data, torch.tensor([1]), torch.tensor([1]), 5, causal=True)  # predict the 2nd event
    assert (b["hour_of_day"].item(), b["day_of_week"].item(), b["month"].item()) == (1, 1, 13)  # its moment, + 1
    assert b["is_weekend_seq"].tolist() == [[0, 0, 0, 0, 1]]  # the slot before it predicts the 2nd event


def test_timestamp_units_are_detected_and_the_choice_is_said(caplog):
    import logging

    import pandas as pd

    from components.ingest import parse_timestamps, timestamp_unit

    secs = pd.Series([880_000_000, 880_000_060])  # 1997
    assert [timestamp_unit(secs * f) for f in (1, 1000, 10**6, 10**9)] == ["s", "ms", "us", "ns"]
    assert timestamp_unit(pd.Series([3, 1, 2])) == "ordinal" and timestamp_unit(pd.Series(["2024-05-01"])) == "iso"
    with caplog.at_level(logging.INFO, logger="recall.progress"):
        got = parse_timestamps(pd.Series([5, 2, 5, 9]), "auto", "events.csv: column 'step'")
    assert "events.csv: column 'step': timestamps read as ordinal (auto; set data.timestamp_unit" in caplog.text
    start = pd.Timestamp("2000-01-01", tz="UTC")
    assert list(got - start) == [pd.Timedelta(seconds=s) for s in (1, 0, 1, 2)]  # order kept, ties stay ties
    assert parse_timestamps(secs * 1000, "ms", "x").equals(parse_timestamps(secs, "s", "x"))
    with pytest.raises(ValueError, match=r"x: cannot read the timestamps as s \(data.timestamp_unit\)"):
        parse_timestamps(pd.Series(["yesterday"]), "s", "x")
