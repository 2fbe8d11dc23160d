"""`radflow submit` and the run waiter, against a loopback server answering KFP's v2beta1 REST paths."""

import pytest
from apiserver import ApiServer, FakeClock, KfpApi, serve
from kubernetes import client

from radflow.cli import main
from radflow.pipeline.config import PipelineConfig, to_dict
from radflow.pipeline.submit import RunFailed, parse_params, wait_for_run

STAGE_TASKS = ["ingest", "validate", "class-balance", "train", "evaluate", "push"]


def _task(name, state, message=None, pod=None):
    task = {"display_name": name, "state": state, "child_tasks": [{"pod_name": pod}] if pod else []}
    if message:
        task["error"] = {"code": 2, "message": message}
    return task


def _run(state, tasks=(), error=None):
    run = {"state": state, "run_details": {"task_details": [_task("root", state), *tasks]}}
    if error:
        run["error"] = {"code": 2, "message": error}
    return run


@pytest.fixture(autouse=True)
def _no_local_kubeconfig(monkeypatch, tmp_path):
    # The waiter reads pods through a kubeconfig when there is one: never a real cluster's in tests.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_params_set_top_level_values_and_single_stage_fields_over_the_config():
    params = parse_params(["data=gs://b/xray", "train.epochs=3", "train.filters=[8, 16]", "ingest.image_size=64"],
                          PipelineConfig())
    assert params["data"] == "gs://b/xray"
    assert params["train_config"] == {**to_dict(PipelineConfig().train), "epochs": 3, "filters": [8, 16]}
    assert params["ingest_config"]["image_size"] == 64 and set(params) == {"data", "train_config", "ingest_config"}


@pytest.mark.parametrize("item, message", [
    ("epochs", "expected key=value"),
    ("model=x", "unknown parameter"),
    ("cluster.gpus=2", "unknown stage 'cluster'"),
    ("train.epoch=3", r"unknown TrainConfig option\(s\) \['epoch'\]"),
])
def test_bad_params_are_refused_before_anything_is_sent(item, message):
    with pytest.raises(ValueError, match=message):
        parse_params([item], PipelineConfig())


def test_submit_compiles_creates_the_experiment_and_the_run_and_prints_its_link(capsys):
    with KfpApi([_run("RUNNING")]) as kfp:
        code = main(["submit", "--host", kfp.server.url, "--experiment", "xray", "--param", "data=gs://b/xray",
                     "--param", "train.epochs=2", "--run-name", "nightly", "--pipeline-root", "gs://b/runs"])
    assert code == 0
    out = capsys.readouterr().out
    assert "run id: run-1" in out and f"{kfp.server.url}/#/runs/details/run-1" in out
    assert kfp.server.calls() == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    experiment_filter = kfp.server.requests[1].query["filter"][0]
    assert '"stringValue": "xray"' in experiment_filter
    assert kfp.server.requests[2].body == {"display_name": "xray", "namespace": ""}
    body = kfp.server.requests[3].body
    assert body["experiment_id"] == "exp-1" and body["display_name"] == "nightly"
    assert body["runtime_config"]["pipeline_root"] == "gs://b/runs"
    params = body["runtime_config"]["parameters"]
    assert params["data"] == "gs://b/xray" and params["train_config"]["epochs"] == 2
    assert params["train_config"]["batch_size"] == PipelineConfig().train.batch_size  # the rest of the stage kept
    spec = body["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "radflow"
    assert set(spec["pipeline_spec"]["root"]["dag"]["tasks"]) == set(STAGE_TASKS)
    train_k8s = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert "nodeSelector" in train_k8s and "tolerations" in train_k8s


def test_an_existing_experiment_is_reused():
    with KfpApi([_run("RUNNING")], experiments=[{"experiment_id": "exp-7", "display_name": "radflow"}]) as kfp:
        assert main(["submit", "--host", kfp.server.url]) == 0
    assert ("POST", "/apis/v2beta1/experiments") not in kfp.server.calls()
    assert kfp.server.requests[-1].body["experiment_id"] == "exp-7"


def test_wait_exits_zero_on_success(capsys):
    done = _run("SUCCEEDED", [_task(t, "SUCCEEDED") for t in STAGE_TASKS])
    with KfpApi([done]) as kfp:
        assert main(["submit", "--host", kfp.server.url, "--wait"]) == 0
    assert "run run-1 succeeded" in capsys.readouterr().out
    assert kfp.server.calls()[-1] == ("GET", "/apis/v2beta1/runs/run-1")


def test_wait_exits_non_zero_naming_the_failed_step_and_why(capsys):
    failed = _run("FAILED", [_task("ingest", "SUCCEEDED"), _task("validate", "SUCCEEDED"),
                             _task("class-balance", "SUCCEEDED"),
                             _task("train", "FAILED", "ResourceExhausted: OOM when allocating tensor"),
                             _task("train-driver", "SUCCEEDED")])
    with KfpApi([failed]) as kfp:
        assert main(["submit", "--host", kfp.server.url, "--wait"]) == 1
    err = capsys.readouterr().err
    assert "run run-1 FAILED" in err
    assert "step 'train' failed: ResourceExhausted: OOM when allocating tensor" in err
    assert "validate" not in err and "driver" not in err


def test_a_failed_run_without_task_details_reports_the_run_error(capsys):
    with KfpApi([_run("FAILED", error="pipeline spec invalid: image pull back-off")]) as kfp:
        assert main(["submit", "--host", kfp.server.url, "--wait"]) == 1
    assert "image pull back-off" in capsys.readouterr().err


def _client(url):
    import warnings

    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=url)


def test_a_step_left_unschedulable_fails_the_wait_with_the_schedulers_message():
    stuck = _run("RUNNING", [_task("ingest", "SUCCEEDED"), _task(
        "train", "RUNNING", "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")])
    clock, lines = FakeClock(), []
    with KfpApi([_run("RUNNING", [_task("ingest", "RUNNING")]), stuck]) as kfp:
        with pytest.raises(RunFailed, match=r"step 'train' cannot be scheduled .*Insufficient nvidia.com/gpu"):
            wait_for_run(_client(kfp.server.url), "run-1", timeout_s=10_000, poll_s=30, unschedulable_after_s=600,
                         on_change=lines.append, clock=clock, sleep=clock.sleep)
    assert 600 <= clock.t <= 660
    assert lines == ["ingest: RUNNING", "ingest: SUCCEEDED", "train: RUNNING"]


def test_unschedulable_pods_are_found_through_kubernetes_when_the_run_details_say_nothing():
    running = _run("RUNNING", [_task("train", "RUNNING", pod="radflow-x-train-exec")])
    pods = ApiServer()
    pods.route("GET", "/api/v1/namespaces/kubeflow/pods/radflow-x-train-exec", lambda r, m: (200, {
        "kind": "Pod", "apiVersion": "v1", "metadata": {"name": "radflow-x-train-exec"},
        "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."}]}}))
    httpd, _ = serve(pods)
    core = client.CoreV1Api(client.ApiClient(client.Configuration(host=pods.url)))
    clock = FakeClock()
    try:
        with KfpApi([running]) as kfp, pytest.raises(RunFailed, match="didn't match Pod's node affinity/selector"):
            wait_for_run(_client(kfp.server.url), "run-1", timeout_s=10_000, poll_s=60, unschedulable_after_s=300,
                         read_pod=lambda name: core.read_namespaced_pod(name, "kubeflow"),
                         clock=clock, sleep=clock.sleep)
    finally:
        httpd.shutdown()
    assert pods.calls() and all(path.endswith("/radflow-x-train-exec") for _, path in pods.calls())


def test_a_long_but_schedulable_run_only_times_out_at_the_timeout():
    clock = FakeClock()
    with KfpApi([_run("RUNNING", [_task("train", "RUNNING")])]) as kfp:
        with pytest.raises(TimeoutError, match="did not finish within 3600s .*train RUNNING"):
            wait_for_run(_client(kfp.server.url), "run-1", timeout_s=3600, poll_s=600, unschedulable_after_s=60,
                         clock=clock, sleep=clock.sleep)
