"""Item refresh over two days of a replay: items released on day 2 enter a day-1 DSSM's index through
its own item tower, as a new version swapped into the routing; ID-only models are refused."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from components import routing as rt
from components import snapshots as sn
from components.cli import app
from components.config import load_config
from components.datasets import SyntheticConfig, generate_synthetic
from components.features import run_pipeline
from components.promote import read_audit
from components.refresh import RefreshError, refresh
from components.register import register_run
from components.registry import Registry
from components.tower_inputs import TowerInputs
from components.train import run
from models.registry import load_checkpoint

pytestmark = pytest.mark.integration
NEW = list(range(111, 121))  # items released on day 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("refresh")
    tables = generate_synthetic(SyntheticConfig(n_users=150, n_items=120, n_interactions=4000, n_clusters=4, seed=3))
    inter = tables.interactions
    day2 = inter.event_timestamp.quantile(0.8).ceil("D")
    # Items 111-120 appear on day 2: released then, with no earlier interactions.
    inter = inter[~(inter.item_id.isin(NEW) & (inter.event_timestamp < day2))].reset_index(drop=True)
    items = tables.items.copy()
    items.loc[items.item_id.isin(NEW), "event_timestamp"] = day2
    tables.interactions, tables.items = inter, items
    tables.write(d / "source")
    common = ["data.source=parquet", f"data.path={d / 'source'}", f"features.dir={d / 'features'}", "train.max_len=10"]
    cfg = load_config(None, common)
    run_pipeline(cfg, interval=sn.interval(None, day2))
    snap1 = sn.latest(d / "features")
    train = load_config(None, [*common, f"data.path={snap1['dir']}", "model=dssm", "train.epochs=1",
                               "train.progress=false", f"out_dir={d / 'dssm'}"])  # fmt: skip
    run(train)
    reg = Registry(d / "registry")
    v1 = register_run(d / "dssm", reg, to_bentoml=False)
    run_pipeline(cfg, interval=sn.interval(day2, inter.event_timestamp.max() + pd.Timedelta(days=1)))
    routing = d / "routing.yaml"
    routing.write_text(yaml.safe_dump({"default": v1.tag, "experiments": []}))
    return {"dir": d, "reg": reg, "v1": v1, "routing": routing, "snap1": snap1}


def _cli(world, *args):
    d = world["dir"]
    common = ["--features-dir", str(d / "features"), "--registry", str(world["reg"].root),
              "--routing", str(world["routing"]), "--audit-log", str(d / "audit.jsonl")]  # fmt: skip
    return CliRunner().invoke(app, ["refresh", *args, *common])


def test_day_two_items_join_the_index_as_a_new_served_version(world):
    v1 = world["v1"]
    assert not set(NEW) & set(v1.item_ids.tolist())  # trained on day 1: it never saw them
    res = _cli(world, v1.tag)
    assert res.exit_code == 0, res.output
    assert "new: recall-dssm:v2 — 10 new, 0 withdrawn" in res.output
    v2 = world["reg"].get("recall-dssm:v2")
    assert v2.item_ids.tolist() == [*v1.item_ids.tolist(), *NEW]
    assert v2.index().ntotal == len(v2.item_ids) == len(np.load(v2.path / "popularity.npy"))
    assert v2.meta["refreshed_from"] == v1.tag
    assert v2.meta["refresh"]["snapshot"] == sn.latest(world["dir"] / "features")["id"] != world["snap1"]["id"]
    assert rt.load(world["routing"]).default == v2.tag
    assert [e["action"] for e in read_audit(world["dir"] / "audit.jsonl")] == ["swap"]
    # Old items keep their vectors; a new one is placed by its attributes through the model itself.
    old, new = v1.index(), v2.index()
    n = len(v1.item_ids)
    assert abs(new.reconstruct_n(0, n) - old.reconstruct_n(0, n)).max() < 1e-5
    model, _ = load_checkpoint(world["dir"] / "dssm")
    catalogue = pd.read_parquet(sn.latest(world["dir"] / "features")["dir"] + "/items.parquet")
    rows = catalogue.set_index("item_id").loc[NEW].reset_index()
    x = {k: torch.from_numpy(v) for k, v in TowerInputs(v2).encode_items(rows).items()}
    assert (x["item_id"] == 0).all() and (x["genres"] > 0).any(dim=1).all()  # unknown id, known genres
    with torch.no_grad():
        want = model.item_tower(x).numpy()
    assert abs(new.reconstruct_n(n, len(NEW)) - want).max() < 1e-4


def test_a_retried_refresh_returns_the_same_version_and_changes_nothing(world):
    before = world["routing"].read_text()
    res = _cli(world, world["v1"].tag)
    assert res.exit_code == 0 and "registered before: recall-dssm:v2" in res.output, res.output
    assert world["reg"].versions("dssm") == ["v1", "v2"] and world["routing"].read_text() == before
    res = _cli(world, "recall-dssm:v2")
    assert res.exit_code == 0 and "unchanged: recall-dssm:v2 — 0 new" in res.output, res.output


def test_withdrawn_items_leave_the_index(world):
    v2 = world["reg"].get("recall-dssm:v2")
    catalogue = pd.read_parquet(sn.latest(world["dir"] / "features")["dir"] + "/items.parquet")
    v3, record = refresh(v2, catalogue, world["reg"], remove=[5, 112])
    assert record["removed"] == [5, 112] and record["added"] == 0
    assert 5 not in v3.item_ids and 112 not in v3.item_ids and v3.index().ntotal == len(v2.item_ids) - 2
    with pytest.raises(RefreshError, match="cannot withdraw items \\[99999\\]"):
        refresh(v2, catalogue, world["reg"], remove=[99999])
    again, record = refresh(v3, catalogue, world["reg"])  # the next refresh does not bring them back
    assert record["status"] == "unchanged" and again.tag == v3.tag and v3.meta["withdrawn"] == [5, 112]
    res = _cli(world, "--remove", "5")  # withdrawing needs a version
    assert res.exit_code == 2 and "name it" in res.output


def test_id_only_models_are_refused_plainly(world, tmp_path):
    v1 = world["v1"]
    spec = dict(v1.spec, item_inputs=[i for i in v1.spec["item_inputs"] if i["name"] == "item_id"])
    id_only = type(v1)(v1.path, v1.meta, spec)
    with pytest.raises(RefreshError, match="reads only item ids.*next training"):
        refresh(id_only, pd.DataFrame({"item_id": [1]}), world["reg"])
    args = ["refresh", v1.tag, "--features-dir", str(tmp_path), "--registry", str(world["reg"].root)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "has no published snapshot" in res.output and "Traceback" not in res.output
