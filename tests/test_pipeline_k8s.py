"""The pipeline on Kubernetes: GPU placement, resources, retries, deadlines, storage and the TFJob launcher.

The compiled YAML is asserted directly; the TFJob launcher talks real HTTP to a loopback server
answering the Kubernetes API paths it uses.
"""

import json
import sys

import pytest
import yaml
from apiserver import ApiServer, FakeClock, serve
from kubernetes import client

from radflow.pipeline import tfjob
from radflow.pipeline.cluster import parse_label, parse_toleration
from radflow.pipeline.compile import compile_pipeline
from radflow.pipeline.config import ClusterConfig, PipelineConfig, to_dict

EXECUTORS = {"exec-ingest", "exec-validate", "exec-validation-gate", "exec-class-balance", "exec-train",
             "exec-evaluate", "exec-push"}


def _compile(tmp_path, cluster=ClusterConfig()):
    path = compile_pipeline(PipelineConfig(cluster=cluster), str(tmp_path / "radflow.yaml"))
    with open(path) as f:
        spec, platform = yaml.safe_load_all(f)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _resources(spec, executor):
    return spec["deploymentSpec"]["executors"][executor]["container"]["resources"]


def test_train_alone_requests_a_gpu_and_lands_on_the_gpu_pool(tmp_path):
    spec, k8s = _compile(tmp_path)
    train = _resources(spec, "exec-train")
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["accelerator"]["resourceCount"] == "1"
    assert k8s["exec-train"]["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}}
    assert k8s["exec-train"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
    for executor in EXECUTORS - {"exec-train"}:
        resources = _resources(spec, executor)
        assert "accelerator" not in resources, executor
        assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == ("1", "4G")
        assert "nodeSelector" not in k8s[executor] and "tolerations" not in k8s[executor]
    assert (train["resourceCpuRequest"], train["resourceMemoryRequest"]) == ("4", "16G")


def test_gpu_count_labels_and_taints_come_from_config(tmp_path):
    cluster = ClusterConfig(gpus=2, gpus_per_node=2,
                            gpu_node_selector=("cloud.google.com/gke-accelerator=nvidia-l4", "pool=gpu"),
                            gpu_tolerations=("dedicated:NoSchedule",))
    spec, k8s = _compile(tmp_path, cluster)
    assert _resources(spec, "exec-train")["accelerator"]["resourceCount"] == "2"
    assert k8s["exec-train"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4",
                                                           "pool": "gpu"}
    assert k8s["exec-train"]["tolerations"] == [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]


def test_cpu_training_requests_no_gpu_anywhere(tmp_path):
    spec, k8s = _compile(tmp_path, ClusterConfig(gpus=0))
    for executor in EXECUTORS:
        assert "accelerator" not in _resources(spec, executor)
        assert "nodeSelector" not in k8s[executor]


def test_every_step_has_a_deadline_and_only_ingest_train_and_folds_retry(tmp_path):
    from radflow.components.train.config import TrainConfig

    spec, k8s = _compile(tmp_path, ClusterConfig(timeout_s=600, train_timeout_s=5000, retries=3))
    assert {e: k8s[e]["activeDeadlineSeconds"] for e in EXECUTORS} == {
        **{e: "600" for e in EXECUTORS}, "exec-train": "5000"}
    tasks = spec["root"]["dag"]["tasks"]
    assert {name for name, t in tasks.items() if "retryPolicy" in t} == {"ingest", "train"}
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 3
    path = compile_pipeline(PipelineConfig(train=TrainConfig(cv_folds=2)), str(tmp_path / "folds.yaml"))
    with open(path) as f:
        folds = next(yaml.safe_load_all(f))["root"]["dag"]["tasks"]
    assert {name for name, t in folds.items() if "retryPolicy" in t} == {
        "ingest", "train-fold", "train-fold-2", "train-after-folds"}


@pytest.mark.parametrize("stages, message", [
    (("ingest", "validate"), "cluster.retry_stages: validate is never retried: its findings are the data's"),
    (("evaluate",), "evaluate is never retried"),
    (("push",), "would publish a second version"),
    (("validation_gate",), "validation_gate is never retried"),
    (("trian",), r"unknown step 'trian'; valid: \['ingest', 'class_balance', 'train', 'merge_folds'\]"),
])
def test_deterministic_steps_are_refused_as_retry_stages(tmp_path, stages, message):
    with pytest.raises(ValueError, match=message):
        _compile(tmp_path, ClusterConfig(retry_stages=stages))


def test_pvc_and_mounted_credentials_reach_every_step(tmp_path):
    spec, k8s = _compile(tmp_path, ClusterConfig(pvc="radflow-data", credentials_secret="gcs-key"))
    for executor in EXECUTORS:
        assert k8s[executor]["pvcMount"][0]["mountPath"] == "/mnt/radflow"
        assert k8s[executor]["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "radflow-data"
        assert k8s[executor]["secretAsVolume"][0]["secretName"] == "gcs-key"
        env = spec["deploymentSpec"]["executors"][executor]["container"]["env"]
        assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"} in env


def test_default_storage_mounts_nothing(tmp_path):
    spec, k8s = _compile(tmp_path)
    for executor in EXECUTORS:
        assert "pvcMount" not in k8s[executor] and "secretAsVolume" not in k8s[executor]
        assert "env" not in spec["deploymentSpec"]["executors"][executor]["container"]


def test_multi_node_train_launches_a_tfjob_and_holds_no_gpu_itself(tmp_path):
    spec, k8s = _compile(tmp_path, ClusterConfig(train_workers=4))
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "train_on_tfjob" in " ".join(train["args"] + train["command"])
    assert "accelerator" not in train["resources"] and "nodeSelector" not in k8s["exec-train"]
    inputs = spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert inputs["cluster"]["runtimeValue"]["constant"]["train_workers"] == 4
    assert inputs["image"]["runtimeValue"]["constant"] == PipelineConfig().image
    assert int(k8s["exec-train"]["activeDeadlineSeconds"]) > ClusterConfig().train_timeout_s


@pytest.mark.parametrize("text", ["nolabel", "=v"])
def test_bad_node_label_is_refused(text):
    with pytest.raises(ValueError, match="key=value"):
        parse_label(text)


@pytest.mark.parametrize("text", ["nvidia.com/gpu=present", "k=v:Sometimes", ":NoSchedule"])
def test_bad_toleration_is_refused(text):
    with pytest.raises(ValueError, match="NoSchedule"):
        parse_toleration(text)


# --- the TFJob launcher ------------------------------------------------------------------------

CLUSTER = ClusterConfig(train_workers=3, gpus=2, tfjob_namespace="ml", tfjob_work_root="gs://b/work")
JOBS = "/apis/kubeflow.org/v1/namespaces/ml/tfjobs"
PODS = "/api/v1/namespaces/ml/pods"


def _manifest(name="radflow-train-abc"):
    return tfjob.tfjob_manifest(name, CLUSTER, "reg/radflow:0.1.0", "gs://b/ex", "gs://b/cb", "gs://b/work/x",
                                {"epochs": 3})


def test_tfjob_manifest_runs_the_trainer_on_n_gpu_workers():
    m = _manifest()
    assert (m["apiVersion"], m["kind"], m["metadata"]["namespace"]) == ("kubeflow.org/v1", "TFJob", "ml")
    worker = m["spec"]["tfReplicaSpecs"]["Worker"]
    assert set(m["spec"]["tfReplicaSpecs"]) == {"Worker"} and worker["replicas"] == 3
    pod = worker["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "tensorflow" and container["image"] == "reg/radflow:0.1.0"
    assert container["command"][-3:] == ["gs://b/ex", "gs://b/work/x", "gs://b/cb"]
    assert 'radflow train "$1" "$2/worker-$index" --class-balance "$3"' in container["command"][2]
    assert json.loads(container["env"][0]["value"]) == {"train": {"epochs": 3}}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                   "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "pipeline-runner"
    assert m["spec"]["runPolicy"]["activeDeadlineSeconds"] == CLUSTER.train_timeout_s


def test_worker_script_gives_each_worker_its_own_directory(tmp_path):
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "radflow").write_text('#!/bin/sh\necho "$@"\n')
    (bin_dir / "radflow").chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RADFLOW_CONFIG": '{"train": {"epochs": 3}}',
           "TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})}
    command = _manifest()["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["train", "gs://b/ex", "gs://b/work/x/worker-1", "--class-balance", "gs://b/cb",
                           "--config", "/tmp/radflow-config.yaml"]


def _pending_pod(name, message):
    return {"metadata": {"name": name}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}}


class _Cluster:
    """A loopback Kubernetes API holding one TFJob whose status walks through `statuses`."""

    def __init__(self, statuses, pods=(), exists=False):
        self.statuses, self.pods, self.job = list(statuses), list(pods), None
        self.server = ApiServer()
        s = self.server
        s.route("POST", JOBS, self.create)
        s.route("GET", JOBS + r"/([\w-]+)", self.get)
        s.route("DELETE", JOBS + r"/([\w-]+)", self.delete)
        s.route("GET", PODS, lambda r, m: (200, {"kind": "PodList", "apiVersion": "v1", "items": self.pods}))
        if exists:
            self.job = {**_manifest(), "status": self.statuses.pop(0)}

    def create(self, request, _):
        if self.job is not None:
            return 409, {"kind": "Status", "status": "Failure", "reason": "AlreadyExists", "code": 409}
        self.job = request.body
        return 201, self.job

    def get(self, request, _):
        if self.job is None:
            return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
        if self.statuses:
            self.job = {**self.job, "status": self.statuses.pop(0)}
        return 200, self.job

    def delete(self, request, _):
        self.job = None
        return 200, {"kind": "Status", "status": "Success"}

    def __enter__(self):
        self.httpd, _ = serve(self.server)
        config = client.Configuration(host=self.server.url)
        api = client.ApiClient(config)
        return client.CustomObjectsApi(api), client.CoreV1Api(api)

    def __exit__(self, *exc):
        self.httpd.shutdown()


def _cond(kind, reason="", message=""):
    return {"conditions": [{"type": "Created", "status": "True"},
                           {"type": kind, "status": "True", "reason": reason, "message": message}]}


RUNNING = {"conditions": [{"type": "Running", "status": "True"}]}


def test_tfjob_is_created_and_followed_until_it_succeeds():
    cluster, clock = _Cluster([RUNNING, RUNNING, _cond("Succeeded", "TFJobSucceeded")]), FakeClock()
    with cluster as (custom, core):
        job = tfjob.run_tfjob(custom, core, _manifest(), timeout_s=100, poll_s=1, clock=clock, sleep=clock.sleep)
    assert job["metadata"]["name"] == "radflow-train-abc"
    calls = cluster.server.calls()
    assert calls[0] == ("POST", JOBS)
    assert cluster.server.requests[0].body["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 3
    assert calls.count(("GET", JOBS + "/radflow-train-abc")) == 3
    pod_query = next(r for r in cluster.server.requests if r.path == PODS).query
    assert pod_query["labelSelector"] == ["training.kubeflow.org/job-name=radflow-train-abc"]


def test_failed_tfjob_fails_the_step_with_the_jobs_reason():
    failed = _cond("Failed", "TFJobFailed", "TFJob ml/radflow-train-abc has failed because 1 Worker replica(s) failed.")
    cluster, clock = _Cluster([RUNNING, failed]), FakeClock()
    with cluster as (custom, core), pytest.raises(tfjob.TFJobFailed, match="TFJobFailed: .*1 Worker replica"):
        tfjob.run_tfjob(custom, core, _manifest(), timeout_s=100, poll_s=1, clock=clock, sleep=clock.sleep)


def test_unschedulable_workers_fail_the_step_with_the_schedulers_message_and_free_the_job():
    pods = [_pending_pod("radflow-train-abc-worker-0", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")]
    cluster, clock = _Cluster([{"conditions": [{"type": "Created", "status": "True"}]}] * 50, pods), FakeClock()
    with cluster as (custom, core), pytest.raises(tfjob.TFJobFailed, match="Insufficient nvidia.com/gpu"):
        tfjob.run_tfjob(custom, core, _manifest(), timeout_s=1000, poll_s=10, unschedulable_after_s=30,
                        clock=clock, sleep=clock.sleep)
    assert cluster.server.calls("DELETE") == [("DELETE", JOBS + "/radflow-train-abc")]
    assert 30 <= clock.t < 60


def test_a_retry_adopts_a_running_job_and_recreates_a_failed_one():
    cluster, clock = _Cluster([RUNNING, _cond("Succeeded")], exists=True), FakeClock()
    with cluster as (custom, core):
        tfjob.run_tfjob(custom, core, _manifest(), timeout_s=100, poll_s=1, clock=clock, sleep=clock.sleep)
    assert cluster.server.calls("DELETE") == [] and cluster.server.calls("POST") == [("POST", JOBS)]

    cluster = _Cluster([_cond("Failed", "TFJobFailed"), _cond("Failed", "TFJobFailed"), RUNNING, _cond("Succeeded")],
                       exists=True)
    with cluster as (custom, core):
        tfjob.run_tfjob(custom, core, _manifest(), timeout_s=100, poll_s=1, clock=clock, sleep=clock.sleep)
    assert [m for m, _ in cluster.server.calls() if m != "GET"] == ["POST", "DELETE", "POST"]


def test_train_on_tfjob_copies_the_chiefs_finished_model(tmp_path):
    shared = ClusterConfig(train_workers=2, gpus=0, pvc="data", pvc_mount_path=str(tmp_path), tfjob_namespace="ml",
                           tfjob_work_root=str(tmp_path / "work"))
    name = tfjob.job_name("gs://b/run/train/model")
    chief = tmp_path / "work" / name / "worker-0"
    (chief / "saved_model").mkdir(parents=True)
    (chief / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (chief / "training.json").write_text("{}")
    cluster, clock = _Cluster([_cond("Succeeded")]), FakeClock()
    with cluster as (custom, _):
        returned = tfjob.train_on_tfjob(str(tmp_path / "ex"), str(tmp_path / "cb"), {"epochs": 1}, shared,
                                        "img", "gs://b/run/train/model", str(tmp_path / "model"),
                                        custom.api_client, poll_s=1, clock=clock, sleep=clock.sleep)
    assert returned == name
    assert (tmp_path / "model" / "saved_model" / "saved_model.pb").read_bytes() == b"pb"
    assert (tmp_path / "model" / "training.json").exists()
    assert cluster.server.requests[0].body["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2


def test_train_on_tfjob_refuses_storage_the_workers_cannot_reach(tmp_path):
    with pytest.raises(ValueError, match="shared storage"):
        tfjob.train_on_tfjob("minio://mlpipeline/ex", "gs://b/cb", {}, CLUSTER, "img", "gs://b/m", str(tmp_path),
                             client.ApiClient())
    with pytest.raises(ValueError, match="tfjob_work_root"):
        tfjob.train_on_tfjob("gs://b/ex", "gs://b/cb", {}, ClusterConfig(train_workers=2), "img", "gs://b/m",
                             str(tmp_path), client.ApiClient())


def test_cluster_config_round_trips_through_a_kfp_struct():
    from radflow.pipeline.config import from_dict

    values = json.loads(json.dumps(to_dict(CLUSTER)))  # as a KFP dict parameter arrives
    values["gpus"] = float(values["gpus"])
    assert from_dict(ClusterConfig, values) == CLUSTER


def test_cross_validation_folds_are_parallel_gpu_tasks_met_by_merges(tmp_path):
    from radflow.components.train.config import TrainConfig

    path = compile_pipeline(PipelineConfig(train=TrainConfig(cv_folds=3)), str(tmp_path / "radflow.yaml"))
    with open(path) as f:
        spec, platform = yaml.safe_load_all(f)
    tasks = spec["root"]["dag"]["tasks"]
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    folds = ["train-fold", "train-fold-2", "train-fold-3"]
    for fold in folds:  # every fold waits only for the data: they run side by side
        assert deps[fold] == {"ingest", "class-balance"}
        assert tasks[fold]["cachingOptions"] == {}
    assert [tasks[f]["inputs"]["parameters"]["fold"]["runtimeValue"]["constant"] for f in folds] == [0, 1, 2]
    assert deps["merge-folds"] == {"train-fold", "train-fold-2"}
    assert deps["merge-folds-2"] == {"merge-folds", "train-fold-3"}
    assert deps["train-after-folds"] == {"ingest", "class-balance", "merge-folds-2"}
    assert deps["evaluate"] == {"ingest", "validate", "train-after-folds"}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for executor in ("exec-train-fold", "exec-train-fold-2", "exec-train-fold-3", "exec-train-after-folds"):
        assert _resources(spec, executor)["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert "nodeSelector" in k8s[executor]
    assert "accelerator" not in _resources(spec, "exec-merge-folds")


def test_the_patient_key_secret_reaches_ingest_alone(tmp_path):
    spec, k8s = _compile(tmp_path, ClusterConfig(patient_key_secret="radflow-patient-key"))
    assert k8s["exec-ingest"]["secretAsEnv"] == [{
        "secretName": "radflow-patient-key",
        "secretNameParameter": {"runtimeValue": {"constant": "radflow-patient-key"}},
        "keyToEnv": [{"secretKey": "key", "envVar": "RADFLOW_PATIENT_KEY_SECRET"}]}]
    for executor in EXECUTORS - {"exec-ingest"}:
        assert "secretAsEnv" not in k8s.get(executor, {}), executor
    _, default = _compile(tmp_path)
    assert "secretAsEnv" not in default["exec-ingest"]


def test_the_pacs_credentials_secret_is_mounted_into_ingest_alone(tmp_path):
    _, k8s = _compile(tmp_path, ClusterConfig(pacs_credentials_secret="pacs-basic-auth"))
    assert k8s["exec-ingest"]["secretAsVolume"] == [{
        "secretName": "pacs-basic-auth", "mountPath": "/var/secrets/pacs", "optional": False,
        "secretNameParameter": {"runtimeValue": {"constant": "pacs-basic-auth"}}}]
    for executor in EXECUTORS - {"exec-ingest"}:
        assert "secretAsVolume" not in k8s.get(executor, {}), executor
