"""The `recall` CLI end to end on a small synthetic run (in-process, real files)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components import snapshots
from components.cli import app
from tests.small import LOOP, flags

pytestmark = pytest.mark.integration
runner = CliRunner()
SETTINGS = [
    "data.synthetic.n_users=120",
    "data.synthetic.n_items=80",
    "data.synthetic.n_interactions=3000",
    "train.epochs=2",
    "train.progress=false",
    "train.max_len=20",
]
SMALL = [arg for s in SETTINGS for arg in ("-s", s)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = runner.invoke(app, ["train", "-s", "model=dssm", "-s", f"out_dir={out}", *SMALL])
    assert res.exit_code == 0, res.output
    assert "popularity" in res.output and "examples/s" in res.output
    return out


def test_train_writes_checkpoint_config_and_metrics(run_dir):
    assert (run_dir / "model.pt").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "dssm" and config["run"]["train"]["epochs"] == 2
    assert len(config["dataset_fingerprint"]) == 16
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test_metrics"]) >= {"recall@10", "ndcg@10", "mrr@100", "precision@50", "hit@20"}
    assert len(metrics["history"]) == 2


def test_evaluate_reproduces_the_training_run(run_dir):
    res = runner.invoke(app, ["evaluate", str(run_dir)])
    assert res.exit_code == 0, res.output
    ndcg = json.loads((run_dir / "metrics.json").read_text())["test_metrics"]["ndcg@10"]
    assert f"{ndcg:.4f}" in res.output


def test_recommend_known_and_unknown_user(run_dir):
    res = runner.invoke(app, ["recommend", str(run_dir), "--user", "1", "--k", "5"])
    assert res.exit_code == 0, res.output
    assert len([line for line in res.output.splitlines() if line.strip()[:1].isdigit()]) == 5
    res = runner.invoke(app, ["recommend", str(run_dir), "--user", "999999"])
    assert res.exit_code == 2 and "unknown user 999999" in res.output


def test_bad_settings_name_the_allowed_values():
    res = runner.invoke(app, ["train", "-s", "model=sasrek"])
    assert res.exit_code == 2 and "choose one of: dssm" in res.output
    res = runner.invoke(app, ["train", "-s", "train.mode=7"])
    assert res.exit_code == 2 and "train.mode: unknown training mode" in res.output
    res = runner.invoke(app, ["train", "-s", "trian.epochs=1"])
    assert res.exit_code == 2 and "unknown setting 'trian'" in res.output


def test_config_show_prints_the_resolved_settings_and_schema_describes_them():
    res = runner.invoke(app, ["config", "show", "-c", "configs/mind.yaml", "-s", "train.epochs=3"])
    assert res.exit_code == 0 and "model: mind" in res.output and "  epochs: 3\n" in res.output
    res = runner.invoke(app, ["config", "schema"])
    props = json.loads(res.output)["$defs"]["TrainConfig"]["properties"]
    assert res.exit_code == 0 and props["lr"]["exclusiveMinimum"] == 0 and "learning rate" in props["lr"]["description"]
    res = runner.invoke(app, ["config", "show", "-s", "index.nprobe=-3"])
    assert res.exit_code == 2  # one line, no traceback
    assert res.output.strip() == "error: index.nprobe: Input should be greater than or equal to 1 (got -3)"


def test_expected_failures_print_one_line_and_verbose_shows_the_traceback(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("uid,movie,ts\n1,10,1\n1,11,2\n2,10,3\n")
    cases = {  # what the user got wrong → (exit code, what the line says)
        "missing file": (["-s", "data.source=file", "-s", f"data.path={tmp_path / 'nope.csv'}"], 1, "nope.csv"),
        "unmapped column": (["-s", "data.source=file", "-s", f"data.path={events}"], 1, "user_id"),
        "bad setting": (["-s", "train.batch_size=0"], 2, "train.batch_size: Input should be greater than or equal"),
    }  # fmt: skip
    for what, (args, code, says) in cases.items():
        res = runner.invoke(app, ["train", *args])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == code, (what, res.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], (what, res.output)
    res = runner.invoke(app, ["--verbose", "train", *cases["missing file"][0]])
    assert res.exit_code != 0 and isinstance(res.exception, FileNotFoundError)  # raised: its traceback shows


def test_demo_runs_the_main_job_through_airflow(tmp_path):
    res = runner.invoke(app, ["demo", "-s", f"out_dir={tmp_path}", *flags(LOOP)])
    assert res.exit_code == 0, res.output
    assert "airflow dags test recall_features" in res.output and "airflow dags test recall_training" in res.output
    assert (tmp_path / "airflow" / "airflow.db").exists()  # the real Airflow's metadata DB, set up on the fly
    snapshot = snapshots.latest(tmp_path / "features")
    assert "top-10 for user" in res.output and (Path(snapshot["dir"]) / "interactions.parquet").exists()
    assert (Path(snapshot["dir"]) / "validation.json").exists() and (tmp_path / "features" / "online_store.db").exists()
    assert "gate passed" in res.output and "beats popularity on ndcg@10" in res.output
    assert "recall-sasrec:v1 (candidate)" in res.output
    assert (tmp_path / "registry" / "sasrec" / "v1" / "model.json").exists()
    assert len(list((tmp_path / "runs").glob("*/report.html"))) == 1
    assert "POST /recall" in res.output and '"model": "recall-sasrec:v1"' in res.output  # the real service answered
    # (A second day with no new data — nothing published, trained or registered — is the DAG test
    # test_consecutive_days_publish_snapshots_and_a_pinned_training_run_is_unaffected.)
