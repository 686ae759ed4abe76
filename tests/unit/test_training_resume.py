"""MatchTrainer across a run: a run interrupted after an epoch resumes from its ``train_state.pt`` and
ends exactly where the uninterrupted run ends; a state of another recipe is not resumed; a full softmax
over too large a catalogue becomes a sampled one."""

import json
import logging

import pytest
import torch

from components.config import load_config
from components.train import prepare, run
from models.data import build_batch, training_examples
from models.registry import build_model
from models.trainer import MatchTrainer, TrainConfig

SMALL = [
    "data.synthetic.n_users=150",
    "data.synthetic.n_items=90",
    "data.synthetic.n_interactions=4000",
    "train.epochs=4",
    "train.patience=10",
    "train.progress=false",
    "train.max_len=20",
]


@pytest.fixture
def one_thread():
    """Bit-exact comparisons: with several threads CPU reductions are not reproducible run to run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(d):
    return torch.load(d / "model.pt", weights_only=True)


def _killed_in_epoch(cfg, epoch: int, monkeypatch) -> None:
    """Runs ``cfg`` until a KeyboardInterrupt in epoch ``epoch`` (after the state of the one before)."""
    real = MatchTrainer.train_epoch

    def dies(self, users, positions, e=1):
        if e == epoch:
            raise KeyboardInterrupt("killed")
        return real(self, users, positions, e)

    monkeypatch.setattr(MatchTrainer, "train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(MatchTrainer, "train_epoch", real)


EBR = ["train.mode=pairwise", "train.negative=hard", "train.hard_share=0.5", "train.num_negatives=8"]


# Dropout's stream; the frequency estimator; the hard sampler's row-level draws.
@pytest.mark.parametrize("model,recipe", [("sasrec", []), ("youtube_sbc", []), ("facebook_dssm", EBR)])
def test_a_killed_run_resumes_after_its_last_epoch_and_ends_as_if_never_stopped(
    model, recipe, tmp_path, monkeypatch, caplog, one_thread
):
    whole = run(load_config(None, [*SMALL, *recipe, f"model={model}", f"out_dir={tmp_path / 'whole'}"]))
    cfg = load_config(None, [*SMALL, *recipe, f"model={model}", f"out_dir={tmp_path / 'cut'}"])
    _killed_in_epoch(cfg, 3, monkeypatch)
    state = torch.load(tmp_path / "cut/train_state.pt", weights_only=True)
    assert state["epoch"] == 2 and not (tmp_path / "cut/model.pt").exists()

    with caplog.at_level(logging.INFO, logger="models.trainer"):
        resumed = run(cfg)
    assert "resumed from" in caplog.text and "after epoch 2" in caplog.text
    assert not (tmp_path / "cut/train_state.pt").exists()  # nothing left once the checkpoint is written
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test_metrics == whole.test_metrics and resumed.best_epoch == whole.best_epoch


def test_a_state_of_another_recipe_is_not_resumed(tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    _killed_in_epoch(load_config(None, [*SMALL, "model=sasrec", f"out_dir={out}"]), 2, monkeypatch)
    with caplog.at_level(logging.INFO, logger="models.trainer"):
        run(load_config(None, [*SMALL, "model=sasrec", "train.lr=0.01", f"out_dir={out}"]))
    assert "another model, recipe or data" in caplog.text and "resumed" not in caplog.text
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 4


def test_a_youtube_dnn_checkpoint_from_before_mean_pooling_dropped_its_unused_rate_still_loads(tmp_path):
    from models.registry import load_checkpoint

    run(load_config(None, [*SMALL, "model=youtube_dnn", "train.epochs=1", f"out_dir={tmp_path}"]))
    state = _weights(tmp_path)
    torch.save({**state, "decay": torch.tensor(-4.6)}, tmp_path / "model.pt")
    model, _ = load_checkpoint(tmp_path)
    assert not hasattr(model, "decay")


def test_a_full_softmax_over_too_large_a_catalogue_becomes_a_sampled_one_and_says_so(caplog):
    cfg = load_config(None, [*SMALL, "model=sasrec", "train.mode=full"])
    _, enc, split = prepare(cfg)
    n = enc.data.n_items
    with caplog.at_level(logging.WARNING, logger="models.trainer"):
        t = MatchTrainer(build_model("sasrec", enc.schema), TrainConfig(mode="full", full_softmax_max_items=n - 1,
                                                                        max_len=20), enc.data, split)  # fmt: skip
    assert (t.config.mode, t.config.negative, t.config.logq) == ("listwise", "popularity", True)
    assert "full_softmax_max_items" in caplog.text
    users, pos = training_examples(enc.data, split, True, 20, t.model.train_context)
    batch = build_batch(enc.data, users[:64], pos[:64], 20, True, t.model.train_context)
    assert torch.isfinite(t.loss(batch))  # the sampled loss runs on a real batch
    kept = MatchTrainer(build_model("sasrec", enc.schema), TrainConfig(mode="full", full_softmax_max_items=n,
                                                                       max_len=20), enc.data, split)  # fmt: skip
    assert kept.config.mode == "full"
    never = MatchTrainer(build_model("sasrec", enc.schema), TrainConfig(mode="full", full_softmax_max_items=None,
                                                                        max_len=20), enc.data, split)  # fmt: skip
    assert never.config.mode == "full"


def test_recall_train_resume_continues_a_killed_run_to_the_same_end(tmp_path, one_thread, monkeypatch):
    from typer.testing import CliRunner

    from components.cli import app

    runner = CliRunner()
    args = [x for s in [*SMALL, "model=sasrec"] for x in ("-s", s)]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert runner.invoke(app, ["train", *args, "-s", f"out_dir={whole}"]).exit_code == 0
    real = MatchTrainer.train_epoch

    def dies(self, users, positions, e=1):
        if e == 3:
            raise RuntimeError("killed")
        return real(self, users, positions, e)

    monkeypatch.setattr(MatchTrainer, "train_epoch", dies)
    res = runner.invoke(app, ["train", *args, "-s", f"out_dir={killed}"])
    assert res.exit_code != 0 and (killed / "train_state.pt").exists() and not (killed / "model.pt").exists()
    monkeypatch.setattr(MatchTrainer, "train_epoch", real)

    res = runner.invoke(app, ["train", "--resume", str(killed)])  # no -c: the run's own settings
    assert res.exit_code == 0, res.output
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3, 4]
    assert [h["loss"] for h in b["history"]] == [h["loss"] for h in a["history"]]
    assert b["test_metrics"] == a["test_metrics"]
    # the user's mistakes: one line, exit code 2
    res = runner.invoke(app, ["train", "--resume", str(killed)])
    assert res.exit_code == 2 and "nothing to resume" in res.output and "finished run" in res.output
    res = runner.invoke(app, ["train", "--resume", str(killed), "-s", "train.epochs=9"])
    assert res.exit_code == 2 and "drop -c/-s" in res.output and "Traceback" not in res.output


def test_progress_is_logged_where_no_bar_can_draw(caplog):
    """Not on a terminal (a scheduler's log, a redirect) the bar is off; a heartbeat says how far an
    epoch is, how fast it goes, when it ends and what the whole run may take."""
    from models.trainer import Heartbeat

    cfg = load_config(None, [*SMALL, "model=sasrec", "train.progress=true", "train.batch_size=64"])
    _, enc, split = prepare(cfg)
    trainer = MatchTrainer(build_model("sasrec", enc.schema, **cfg.model_params), cfg.train, enc.data, split)
    trainer.heartbeat = Heartbeat(cfg.train.epochs, first=0.0, every=0.0)  # a line per step
    users, pos = training_examples(enc.data, split, True, cfg.train.max_len, trainer.model.train_context)
    with caplog.at_level(logging.INFO, logger="recall.progress"):
        _, steps = trainer.train_epoch(users, pos, epoch=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "recall.progress"]
    assert len(lines) == steps
    assert lines[0].startswith("epoch 2/4: step 1/") and "examples/s, epoch ends in" in lines[0]
    assert "more for the run" in lines[0] and "more for the run" not in lines[-1]
    assert lines[-1].startswith(f"epoch 2/4: step {steps}/{steps},")


def test_a_run_is_tracked_once_per_step_and_not_at_all_when_off(tmp_path):
    """components.tracking: a repeated step (a retry) logs nothing twice; tracking off writes nothing."""
    from components.tracking import STATE, record
    from tests.small import tracked

    cfg = load_config(None, [*SMALL, "model=sasrec", f"out_dir={tmp_path / 'run'}"])
    out = run(cfg)
    run_, history, _ = tracked(tmp_path / "run")
    assert history["loss"] == [1, 2, 3, 4] and run_.data.params["train.epochs"] == "4"
    assert run_.data.metrics["test/ndcg_at_10"] == pytest.approx(out.test_metrics["ndcg@10"])
    again = record(cfg, tmp_path / "run", "train", per_step=[(1, {"loss": 9.0})])
    assert again == run_.info.run_id and tracked(tmp_path / "run")[1]["loss"] == [1, 2, 3, 4]  # not logged again
    off = load_config(None, [*SMALL, "model=sasrec", f"out_dir={tmp_path / 'off'}", "tracking.enabled=false"])
    run(off)
    assert not (tmp_path / "off" / STATE).exists()
