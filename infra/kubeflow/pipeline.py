"""The training loop as a Kubeflow (KFP v2) pipeline, built from the same step functions as the Airflow DAGs
(``components.pipeline``): one lightweight component per step, each a few lines that load the settings and
call that function in the pipeline image (infra/docker/pipeline.Dockerfile).

    ingest → validate → apply → materialize → training_set → train (GPU) → evaluate → gate
        gate passed:  export → index → register (a candidate version; routing untouched)
        gate failed:  the run fails naming every failed check; nothing is exported or registered

Steps share the run directory and the feature store on the volume every step mounts (``kubernetes.
volume_claim`` at ``kubernetes.mount_path``); the settings come from the run config plus the site config
(the ``kubernetes.site_config_map`` ConfigMap, mounted as ``$RECALL_SITE_CONFIG``) and, after training_set,
from the run's own ``run_config.json``. Run it in the namespace that holds the claim, the ConfigMap and
Redis (``recall``: a PVC is only mountable from its own namespace). Each step also
hands Kubeflow what its UI shows: evaluate's metrics, gate's HTML report, register's model (the version).

``recall pipeline kubeflow`` compiles it; ``--local`` runs it here with ``kfp.local``'s subprocess runner.
"""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.
from typing import Any

from kfp import dsl

NAME = "recall-training"
SITE_DIR = "/etc/recall/site"  # where a step mounts the site ConfigMap (the Airflow values use the same path)


def build(k8s: Any) -> Any:
    """The pipeline for ``k8s`` (a components.k8s.KubernetesConfig): its image for every step, its GPU,
    node selector and tolerations for train, its volume on every step."""
    component = dsl.component(base_image=k8s.image, install_kfp_package=False)  # the image has kfp

    @component
    def ingest(config: str, overrides: list) -> str:
        from components import pipeline
        from components.config import load_config
        from components.snapshots import interval

        out = pipeline.features(load_config(config, overrides), ("ingest",), interval())
        print(f"ingest: snapshot {out['snapshot']} ({out['status']}) {out.get('why') or ''}")
        return out["snapshot"]

    @component
    def validate(config: str, overrides: list, snapshot: str) -> str:
        from components import pipeline
        from components.config import load_config

        print(pipeline.features(load_config(config, overrides), ("validate",), snapshot=snapshot))
        return snapshot

    @component
    def apply(config: str, overrides: list, snapshot: str) -> str:
        from components import pipeline
        from components.config import load_config

        print(pipeline.features(load_config(config, overrides), ("apply",), snapshot=snapshot))
        return snapshot

    @component
    def materialize(config: str, overrides: list, snapshot: str) -> str:
        from components import pipeline
        from components.config import load_config

        print(pipeline.features(load_config(config, overrides), ("materialize",), snapshot=snapshot))
        return snapshot

    @component
    def training_set(config: str, overrides: list, snapshot: str, run_name: str, force: bool) -> str:
        from components import pipeline
        from components.config import load_config

        cfg = load_config(config, overrides)
        run_dir = pipeline.new_run_dir(cfg, run_name or None).resolve()
        try:
            print(f"training_set: {pipeline.training_set(cfg, run_dir, snapshot, force=force)}")
        except pipeline.NothingNew as e:
            print(e)
            return ""  # nothing downstream runs
        return str(run_dir)

    @component
    def train(run_dir: str) -> str:
        from components import pipeline

        print(pipeline.train_in_pod(pipeline.run_config(run_dir), run_dir))
        return run_dir

    @component
    def export(run_dir: str) -> str:
        from components import pipeline

        print(pipeline.export(pipeline.run_config(run_dir), run_dir))
        return run_dir

    @component
    def index(run_dir: str) -> str:
        from components import pipeline

        print(pipeline.index(pipeline.run_config(run_dir), run_dir))
        return run_dir

    @component
    def evaluate(run_dir: str, metrics: dsl.Output[dsl.Metrics]) -> str:
        from components import pipeline

        out = pipeline.evaluate(pipeline.run_config(run_dir), run_dir)
        for name, value in out["test"].items():
            metrics.log_metric(f"test_{name.replace('@', '_at_')}", float(value))
        print(f"evaluate: {out}")
        return run_dir

    @component
    def gate(run_dir: str, report: dsl.Output[dsl.HTML]) -> str:
        import shutil
        from pathlib import Path

        from components import pipeline
        from components.gate import GateFailed

        try:
            pipeline.gate(pipeline.run_config(run_dir), run_dir)
            verdict = "passed"
        except GateFailed as e:
            print(f"gate: failed: {e}")
            verdict = "failed"
        shutil.copyfile(Path(run_dir) / "report.html", report.path)  # curves, slices and the verdict
        return verdict

    @component
    def gate_failed(run_dir: str):
        from components import pipeline

        pipeline.passed_gate(run_dir)  # raises GateFailed with every failed check: the run fails here

    @component
    def register(run_dir: str, model: dsl.Output[dsl.Model]) -> str:
        import json

        from components import pipeline

        out = pipeline.register(pipeline.run_config(run_dir), run_dir)
        model.metadata.update(out)
        with open(model.path, "w") as f:
            json.dump(out, f)
        print(f"register: {out['tag']} ({out['stage']}) at {out['path']}")
        return out["tag"]

    def on_volume(task):
        """Every step: the shared volume and the site config (paths on it, Redis), as Airflow's workers."""
        from kfp import kubernetes

        if k8s.volume_claim:
            kubernetes.mount_pvc(task, pvc_name=k8s.volume_claim, mount_path=k8s.mount_path)
        if k8s.site_config_map:
            kubernetes.use_config_map_as_volume(task, config_map_name=k8s.site_config_map, mount_path=SITE_DIR)
            task.set_env_variable("RECALL_SITE_CONFIG", f"{SITE_DIR}/site.yaml")
        return task.set_caching_options(False)  # every step reads and writes shared state

    def on_gpu(task):
        from kfp import kubernetes

        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(k8s.gpus)
        task.set_cpu_limit(str(k8s.cpu)).set_memory_limit(str(k8s.memory))
        for key, value in k8s.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in k8s.tolerations:
            kubernetes.add_toleration(task, key=t.get("key"), operator=t.get("operator", "Equal"),
                                      value=t.get("value"), effect=t.get("effect"))  # fmt: skip
        return task

    @dsl.pipeline(name=NAME, description="features → training → gate → export/index/register, as in Airflow")
    def recall_training(config: str = "configs/demo.yaml", overrides: list = [], run_name: str = "",  # noqa: B006
                        force: bool = False):  # fmt: skip
        snapshot = on_volume(ingest(config=config, overrides=overrides)).output
        for fn in (validate, apply, materialize):  # no-ops when ingest found nothing new
            snapshot = on_volume(fn(config=config, overrides=overrides, snapshot=snapshot)).output
        run_dir = on_volume(training_set(config=config, overrides=overrides, snapshot=snapshot, run_name=run_name,
                                         force=force)).output  # fmt: skip
        with dsl.If(run_dir != "", name="something-new"):
            trained = on_volume(train(run_dir=run_dir))
            if k8s.nodes == 1:  # else the step only submits the PyTorchJob, whose pods have the GPUs
                on_gpu(trained)
            evaluated = on_volume(evaluate(run_dir=trained.output)).outputs["Output"]
            verdict = on_volume(gate(run_dir=evaluated)).outputs["Output"]
            with dsl.If(verdict == "passed", name="gate-passed"):
                indexed = on_volume(index(run_dir=on_volume(export(run_dir=evaluated)).output)).output
                on_volume(register(run_dir=indexed))
            with dsl.Else(name="gate-failed"):
                on_volume(gate_failed(run_dir=evaluated))

    return recall_training
