"""The small synthetic world the pipeline, DAG and demo tests train in: big enough that SASRec beats
popularity clearly after 8 epochs (so the gate's pass is not luck), small enough to train in seconds."""

LOOP = [
    "data.synthetic.n_users=200",
    "data.synthetic.n_items=100",
    "data.synthetic.n_interactions=6000",
    "train.epochs=8",
    "train.progress=false",
    "train.max_len=20",
    "bentoml_store=false",  # keep test versions out of the user's BentoML model store
]


def placed(out) -> list[str]:
    """Every path of a run under ``out``: outputs, feature store, registry, routing file."""
    return [f"out_dir={out}", f"features.dir={out}/features", f"registry={out}/registry", f"routing={out}/routing.yaml"]


def flags(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("-s", s)]


def tracked(run_dir):
    """The MLflow run of a run directory (components.tracking): (run, its metric histories, artefact paths)."""
    from mlflow.tracking import MlflowClient

    from components.tracking import tracked_run

    client = MlflowClient()
    run = client.get_run(tracked_run(run_dir))
    history = {k: [m.step for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    return run, history, sorted(a.path for a in client.list_artifacts(run.info.run_id))
