"""Typed settings: every bad setting fails at load with a message that names its key, the bad value and
what is allowed; good values are converted once, wherever the config comes from."""

import dataclasses
import json

import pytest
from pydantic import ValidationError

from components.config import ConfigError, config_from_dict, load_config, resolved, schema
from components.settings import GateConfig, IndexConfig, RunConfig
from models.settings import TrainConfig


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # wrong type
        ("train.epochs=abc", "train.epochs: Input should be a valid integer, unable to parse string as an integer"),
        ("train.lr=fast", "train.lr: Input should be a valid number"),
        ("gate.floors=[1,2]", "gate.floors: Input should be a valid dictionary (got [1, 2])"),
        ("train=5", "train: Input should be a dictionary"),
        # out of range
        ("index.nprobe=-3", "index.nprobe: Input should be greater than or equal to 1 (got -3)"),
        ("gate.max_regression=1.5", "gate.max_regression: Input should be less than 1 (got 1.5)"),
        ("train.hard_share=2", "train.hard_share: Input should be less than or equal to 1 (got 2)"),
        ("ks=[10,0]", "ks.1: Input should be greater than or equal to 1 (got 0)"),
        ("train.hard_window=[50,20]", "train.hard_window: hard_window must be [lo, hi) ranks with 0 <= lo < hi"),
        # unknown key (with the nearest known one and the section's settings)
        ("train.epoch=3", "unknown setting 'train.epoch'; did you mean 'epochs'? the settings here are: mode,"),
        ("trian.epochs=3", "unknown setting 'trian'; did you mean 'train'?"),
        ("data.synthetic.users=5", "unknown setting 'data.synthetic.users'; did you mean 'n_users'?"),
        # unknown choice
        ("train.negative=popular", "train.negative: Input should be 'uniform', 'popularity', 'inbatch' or 'hard'"),
        ("index.kind=ivf", "index.kind: Input should be 'flat', 'hnsw', 'ivf_flat' or 'ivf_pq' (got 'ivf')"),
        ("model=sasrek", "model: unknown model 'sasrek'; choose one of: dssm"),
        ("train.mode=pairwize", "train.mode: unknown training mode 'pairwize'; choose one of: 0, 1, 2, pointwise"),
        ("train.monitor=hit@10", "train.monitor: monitor must be recall@K or ndcg@K"),
        # malformed
        ("train.hard_window=[5", "the value of override 'train.hard_window=[5' is not valid YAML at line 1, column 3"),
        ("train.epochs", "override 'train.epochs' must look like key=value"),
    ],
)  # fmt: skip
def test_a_bad_override_fails_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)  # the DAGs fail such a task at once, without retries


def test_a_malformed_or_misshapen_config_file_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dssm\ntrain: {epochs: 3\n")
    with pytest.raises(ConfigError, match=r"config file .*bad.yaml is not valid YAML at line 3"):
        load_config(bad)
    bad.write_text("- dssm\n- sasrec\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(bad)
    bad.write_text("model: dssm\ntrain: {epochs: 0, lr: fast}\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "train.epochs: Input should be greater than or equal to 1 (got 0)" in str(e.value)
    assert "train.lr: Input should be a valid number" in str(e.value)  # every bad setting, not just the first
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_values_are_converted_once_and_round_trip_through_a_checkpoint():
    cfg = load_config(None, ["train.lr=1e-4", "train.mode=2", "train.hard_window=[20, 200]", "ks=[5, 10]"])
    # YAML 1.1 reads 1e-4 as text; the typed setting makes it the number it means
    assert (cfg.train.lr, cfg.train.mode, cfg.train.hard_window, cfg.ks) == (1e-4, "listwise", (20, 200), (5, 10))
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))  # as a checkpoint stores it
    assert again == cfg and again.training_signature() == cfg.training_signature()


def test_settings_built_in_code_are_checked_too():
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValidationError, match="Unexpected keyword argument"):
        IndexConfig(kinds="flat")
    gate = GateConfig(slice_limits={"genre=Drama": 0.05})
    with pytest.raises(ValidationError, match="less than 1"):
        dataclasses.replace(gate, slice_limits={"*": 3})
    assert dataclasses.replace(RunConfig(), model="dssm").model == "dssm"


def test_the_schema_and_the_resolved_config_describe_every_setting():
    s = schema()
    train = s["$defs"]["TrainConfig"]["properties"]
    assert train["epochs"]["minimum"] == 1 and train["epochs"]["default"] == 20 and train["epochs"]["description"]
    assert train["negative"]["enum"] == ["uniform", "popularity", "inbatch", "hard"]
    undocumented = [
        f"{name}.{key}"
        for name, d in s["$defs"].items()
        for key, prop in d["properties"].items()
        if "description" not in prop and "$ref" not in prop
    ]
    assert undocumented == []
    text = resolved(load_config("configs/sasrec.yaml", ["train.epochs=3"]))
    assert "model: sasrec" in text and "epochs: 3" in text and "nprobe: 32" in text
