"""The train step's command in its pod (plain, torchrun per GPU, torchrun across nodes), the multi-node
PyTorchJob it becomes, and submitting/waiting for that job — retried tasks included — against a fake of
the Kubernetes API (no cluster here)."""

import kubernetes_validate
import pytest
from kubernetes.client.exceptions import ApiException

from components.k8s import from_yaml_section, job_name, pytorch_job, run_job, train_command

SITE = {"enabled": True, "image": "reg/recall-pipeline:0.1.0-cuda", "gpus": 1, "service_account": "recall-training"}
STEP = ["pipeline", "step", "train", "--config", "/runs/r1/run_config.json", "--run-dir", "/runs/r1",
        "--set", "train.device=cuda"]  # fmt: skip


def test_the_train_command_uses_torchrun_only_for_several_gpus_or_nodes():
    assert train_command(from_yaml_section(SITE, env={}), "/runs/r1") == ["recall", *STEP]
    four = train_command(from_yaml_section({**SITE, "gpus": 4}, env={}), "/runs/r1")
    assert four == ["torchrun", "--nproc_per_node=4", "--standalone", "-m", "components.cli", *STEP]
    nodes = train_command(from_yaml_section({**SITE, "gpus": 2, "nodes": 3}, env={}), "/runs/r1")
    assert nodes[:2] == ["torchrun", "--nproc_per_node=2"] and nodes[-len(STEP) :] == STEP
    # the training operator's variables, expanded by the kubelet in each pod of the job
    assert {"--nnodes=$(WORLD_SIZE)", "--node_rank=$(RANK)", "--master_addr=$(MASTER_ADDR)"} <= set(nodes)
    with pytest.raises(ValueError, match="nodes"):
        from_yaml_section({**SITE, "nodes": 0}, env={})


def test_a_multi_node_run_is_a_pytorchjob_of_master_and_workers_whose_pods_validate():
    k8s = from_yaml_section({**SITE, "gpus": 4, "nodes": 3}, env={})
    job = pytorch_job(k8s, "/opt/recall/runs/pipeline/runs/SASRec-manual__2026-11-28T10:00:00+00:00/")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    name = job["metadata"]["name"]
    assert name == job_name("/x/SASRec-manual__2026-11-28T10:00:00+00:00") and len(name) <= 63
    assert name.startswith("recall-train-sasrec-manual-2026-11-28t10-00-00-00-00"[:63])
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") and job["metadata"]["namespace"] == "recall"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for spec in replicas.values():
        assert spec["restartPolicy"] == "OnFailure"  # a restarted pod resumes from train_state.pt
        pod = spec["template"]["spec"]
        (c,) = pod["containers"]
        assert c["name"] == "pytorch" and c["image"] == SITE["image"] and c["command"] == ["torchrun"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4" and "--nproc_per_node=4" in c["args"]
        assert c["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert pod["serviceAccountName"] == "recall-training" and pod["nodeSelector"] == k8s.node_selector
        # what Kubernetes will check of each pod the operator creates, strictly, at two API versions
        for version in ("1.29.0", "1.37.0"):
            kubernetes_validate.validate(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": spec["template"]},
                version,
                strict=True,
            )


class FakeJobs:
    """The CustomObjectsApi calls run_job makes, over a dict of jobs whose state the test scripts."""

    def __init__(self, existing=None, states=()):
        self.jobs = dict(existing or {})
        self.states = list(states)  # the condition each get() reports next; the last one repeats
        self.calls = []

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        self.calls.append("create")
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[name] = {**body, "status": {}}

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        self.calls.append("get")
        job = self.jobs[name]
        if self.states:
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            if state is not None:
                done = {"type": state, "status": "True", "message": f"job {state}"}
                job["status"] = {"conditions": [{"type": "Running", "status": "True"}, done]}
        return job

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        self.calls.append("delete")
        del self.jobs[name]


def _job():
    return pytorch_job(from_yaml_section({**SITE, "nodes": 2}, env={}), "/runs/r1")


def test_run_job_submits_once_and_waits_for_success():
    api = FakeJobs(states=[None, None, "Succeeded"])
    run_job(api, _job(), timeout_s=60, poll_s=0, log=lambda m: None)
    assert api.calls == ["create", "get", "get", "get"]


def test_a_retried_task_waits_for_the_job_it_already_submitted_and_resubmits_a_failed_one():
    job = _job()
    running = FakeJobs(existing={job["metadata"]["name"]: {**job, "status": {}}}, states=[None, None, "Succeeded"])
    run_job(running, job, timeout_s=60, poll_s=0, log=lambda m: None)
    assert running.calls.count("create") == 1 and "delete" not in running.calls  # not submitted twice
    failed = FakeJobs(existing={job["metadata"]["name"]: {**job, "status": {}}}, states=["Failed", None, "Succeeded"])
    run_job(failed, job, timeout_s=60, poll_s=0, log=lambda m: None)
    assert failed.calls[:4] == ["create", "get", "delete", "create"]


def test_a_failed_or_overdue_job_fails_the_task_with_the_operators_message():
    with pytest.raises(RuntimeError, match="job Failed"):
        run_job(FakeJobs(states=[None, "Failed"]), _job(), timeout_s=60, poll_s=0, log=lambda m: None)
    with pytest.raises(TimeoutError, match="did not finish"):
        run_job(FakeJobs(states=[None]), _job(), timeout_s=0, poll_s=0, log=lambda m: None)


def test_the_cli_prints_the_job_a_run_would_submit():
    import yaml
    from typer.testing import CliRunner

    from components.cli import app

    res = CliRunner().invoke(app, ["pipeline", "pytorchjob", "--run-dir", "/runs/r1", "-s", "kubernetes.nodes=3",
                                   "-s", "kubernetes.gpus=2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    job = yaml.safe_load(res.output)
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    (c,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert c["args"][-len(STEP) :] == STEP and "--nproc_per_node=2" in c["args"]
    single = pytorch_job(from_yaml_section(SITE, env={}), "/runs/r1")
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]  # no Worker entry of 0 replicas
