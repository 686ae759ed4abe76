"""Slices of the evaluated rows and sliced metrics, on hand-worked cases (components.compare)."""

import numpy as np
import pytest
import torch

from components import compare


def _rows(pos, targets):
    n = len(pos)
    return compare.Rows(
        users=torch.arange(1, n + 1), pos=torch.tensor(pos), targets=torch.tensor(targets),
        raw_users=np.arange(101, 101 + n), raw_targets=np.array(targets) + 1000, target_time=np.zeros(n),
    )  # fmt: skip


def test_history_and_popularity_slices_without_production():
    # 10 items (index 1..10): train counts; item 4 is the most trained (the head: top 10 % = 1 item);
    # the torso is the next 40 % = 4 items by count, ties in index order: 1 (5), 2 (3), 7 (2), 8 (2);
    # 9 and 10 (2 each) fall to the tail with the rest; 3 (never trained) is tail.
    counts = torch.tensor([0, 5, 3, 0, 9, 1, 1, 2, 2, 2, 2])
    r = _rows(pos=[1, 4, 5, 19, 20, 49, 50, 300], targets=[4, 1, 2, 7, 8, 9, 3, 5])
    m = compare.slices(None, r, counts, None)
    assert "user=new" not in m and "item=new" not in m  # need a production version
    assert m["history=1-4"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert m["history=5-19"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert m["history=20-49"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert m["history=50+"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert m["item=head"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert m["item=torso"].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    assert m["item=tail"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]


def test_sliced_metrics_are_the_metrics_of_the_slice_rows():
    ranks = {"candidate": np.array([0, 1, compare.MISS, 9]), "production": np.array([compare.MISS, 0, 0, 0])}
    masks = {"a": np.array([True, True, False, False]), "b": np.array([False, False, True, True]),
             "empty": np.zeros(4, bool)}  # fmt: skip
    out = compare.sliced(ranks, masks, (1, 10))
    assert out["a"]["rows"] == 2 and out["empty"] == {"rows": 0, "candidate": {}, "production": {}}
    assert out["a"]["candidate"]["hit@1"] == 0.5 and out["a"]["candidate"]["hit@10"] == 1.0
    assert out["a"]["candidate"]["mrr@10"] == (1 + 1 / 2) / 2
    assert out["b"]["candidate"]["recall@10"] == 0.5 and out["b"]["production"]["recall@1"] == 1.0
    assert out["b"]["candidate"]["ndcg@10"] == (1 / np.log2(11)) / 2
    # Paired differences per slice: a: hit@10 (1, 1) − (0, 1) = (1, 0): mean 0.5, sd √0.5, se 0.5.
    d = out["a"]["difference"]["hit@10"]
    assert d == {"diff": 0.5, "se": pytest.approx(0.5), "rows": 2}
    assert out["b"]["difference"]["mrr@1"]["diff"] == -1.0 and out["b"]["difference"]["mrr@1"]["se"] == 0.0
    assert "difference" not in out["empty"]
