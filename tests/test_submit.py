"""`radflow submit` and the run waiter, against a loopback server answering KFP's v2beta1 REST paths."""

import pytest
import yaml
from apiserver import ApiServer, FakeClock, KfpApi, serve
from kubernetes import client
from kubernetes.config import kube_config

from radflow.cli import main
from radflow.pipeline.config import PipelineConfig, to_dict
from radflow.pipeline.k8s import NEVER_FITS, SCALING_UP, UNSCHEDULABLE, WAITING_FOR_CAPACITY, PodView, scheduling
from radflow.pipeline.submit import RunFailed, parse_params, pod_reader, wait_for_run

STAGE_TASKS = ["ingest", "validate", "validation-gate", "class-balance", "train", "evaluate", "push"]


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
    ("train.epoch=3", r"train\.epoch: unknown option; did you mean train\.epochs\?"),
    ("train.epochs=ten", r"train\.epochs: expected an integer, got .ten."),
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
        ("GET", "/apis/v2beta1/healthz"),  # kfp.Client's own, then radflow's: is this KFP multi-user?
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    experiment_filter = kfp.server.requests[2].query["filter"][0]
    assert '"stringValue": "xray"' in experiment_filter
    assert kfp.server.requests[3].body == {"display_name": "xray", "namespace": ""}
    assert not any("authorization" in r.headers for r in kfp.server.requests)  # single-user: no credentials
    body = kfp.server.requests[4].body
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
    assert lines == ["ingest: RUNNING", "ingest: SUCCEEDED", "train: RUNNING",
                     "train: unschedulable: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."]


POD = "radflow-x-train-exec"
PENDING = {"phase": "Pending", "conditions": [{
    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "message": "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."}]}


def _event(reason, message, minute, component="cluster-autoscaler"):
    return {"metadata": {"name": f"{POD}.{minute}"}, "involvedObject": {"kind": "Pod", "name": POD},
            "reason": reason, "message": message, "type": "Normal", "source": {"component": component},
            "lastTimestamp": f"2026-01-01T10:{minute:02d}:00Z", "count": 1}


class _Pods:
    """A loopback Kubernetes API holding one pod whose status and events walk through scripted states."""

    def __init__(self, states):
        self.states = list(states)  # (pod status, [events]) per read
        self.server = ApiServer()
        self.server.route("GET", f"/api/v1/namespaces/team-xray/pods/{POD}", self.pod)
        self.server.route("GET", "/api/v1/namespaces/team-xray/events", self.events)

    def _now(self):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def pod(self, request, _):
        self.current = self._now()
        return 200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": POD}, "status": self.current[0]}

    def events(self, request, _):
        return 200, {"kind": "EventList", "apiVersion": "v1", "items": self.current[1]}

    def __enter__(self):
        self.httpd, _ = serve(self.server)
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    """Points the waiter's pod reader (pod_reader: the local kubeconfig) at a loopback Kubernetes API."""

    def use(url):
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": url}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
            "users": [{"name": "t", "user": {"token": "k8s-token"}}]}))
        # The kubernetes client reads $KUBECONFIG once, when it is imported: set the location it took from it.
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
        return pod_reader("team-xray")

    return use


def test_unschedulable_pods_are_found_through_kubernetes_when_the_run_details_say_nothing(kubeconfig):
    running = _run("RUNNING", [_task("train", "RUNNING", pod=POD)])
    clock = FakeClock()
    with _Pods([(PENDING, [])]) as pods, KfpApi([running]) as kfp:
        with pytest.raises(RunFailed, match="didn't match Pod's node affinity/selector"):
            wait_for_run(_client(kfp.server.url), "run-1", timeout_s=10_000, poll_s=60, unschedulable_after_s=300,
                         read_pod=kubeconfig(pods.server.url), clock=clock, sleep=clock.sleep)
    assert 300 <= clock.t < 400  # no autoscaler spoke: the plain timeout
    assert {path for _, path in pods.server.calls()} == {f"/api/v1/namespaces/team-xray/pods/{POD}",
                                                         "/api/v1/namespaces/team-xray/events"}
    events = next(r for r in pods.server.requests if r.path.endswith("/events"))
    assert events.query["fieldSelector"] == [f"involvedObject.name={POD}"]
    assert events.headers["authorization"] == "Bearer k8s-token"


def test_a_step_waiting_for_a_node_the_autoscaler_adds_is_not_failed(kubeconfig):
    """TriggeredScaleUp: the GPU pool scales from zero (on GKE: minutes); the waiter waits past the timeout."""
    scale_up = _event("TriggeredScaleUp", "pod triggered scale-up: [{gke-radflow-gpu 0->1 (max: 4)}]", 1)
    states = [(PENDING, [_event("FailedScheduling", "0/2 nodes are available", 0, "default-scheduler"), scale_up])] \
        * 30 + [({"phase": "Running"}, [scale_up])]
    kfp_states = [_run("RUNNING", [_task("train", "RUNNING", pod=POD)])] * 32 + [
        _run("SUCCEEDED", [_task("train", "SUCCEEDED", pod=POD)])]
    clock, lines = FakeClock(), []
    with _Pods(states) as pods, KfpApi(kfp_states) as kfp:
        wait_for_run(_client(kfp.server.url), "run-1", timeout_s=10_000, poll_s=60, unschedulable_after_s=300,
                     read_pod=kubeconfig(pods.server.url), on_change=lines.append, clock=clock, sleep=clock.sleep)
    assert clock.t > 1500  # 25+ minutes pending, far past unschedulable_after_s
    assert lines[:2] == ["train: RUNNING", "train: scaling up: pod triggered scale-up: [{gke-radflow-gpu 0->1 "
                         "(max: 4)}] (scheduler: 0/2 nodes are available: 2 node(s) didn't match Pod's node "
                         "affinity/selector.)"]
    assert lines[-1] == "train: SUCCEEDED"


def test_a_fold_queued_behind_a_full_gpu_pool_waits_for_room(kubeconfig):
    """NotTriggerScaleUp for 'max node group size reached': the pool fits the pod, it is just full now."""
    full = _event("NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached, 1 node(s) "
                  "didn't match Pod's node affinity/selector", 5)
    states = [(PENDING, [full])] * 40 + [({"phase": "Running"}, [full])]
    kfp_states = [_run("RUNNING", [_task("train-fold-3", "RUNNING", pod=POD)])] * 42 + [
        _run("SUCCEEDED", [_task("train-fold-3", "SUCCEEDED", pod=POD)])]
    clock, lines = FakeClock(), []
    with _Pods(states) as pods, KfpApi(kfp_states) as kfp:
        wait_for_run(_client(kfp.server.url), "run-1", timeout_s=10_000, poll_s=60, unschedulable_after_s=900,
                     read_pod=kubeconfig(pods.server.url), on_change=lines.append, clock=clock, sleep=clock.sleep)
    assert clock.t > 2000
    assert lines[1].startswith("train-fold-3: waiting for capacity: pod didn't trigger scale-up: 1 max node group")


def test_a_pod_no_node_group_can_ever_take_fails_the_run_at_once(kubeconfig):
    """NotTriggerScaleUp with only the groups' own misfits, and the latest verdict wins over an older scale-up."""
    old_scale_up = _event("TriggeredScaleUp", "pod triggered scale-up: [{gke-radflow-gpu 0->1 (max: 4)}]", 1)
    never = _event("NotTriggerScaleUp", "pod didn't trigger scale-up: 1 Insufficient nvidia.com/gpu, 1 node(s) "
                   "didn't match Pod's node affinity/selector", 9)
    kfp_states = [_run("RUNNING", [_task("train", "RUNNING", pod=POD)])]
    clock = FakeClock()
    with _Pods([(PENDING, [never, old_scale_up])]) as pods, KfpApi(kfp_states) as kfp:
        with pytest.raises(RunFailed, match=r"step 'train' can never be scheduled .*1 Insufficient nvidia.com/gpu"):
            wait_for_run(_client(kfp.server.url), "run-1", timeout_s=10_000, poll_s=60, unschedulable_after_s=900,
                         read_pod=kubeconfig(pods.server.url), clock=clock, sleep=clock.sleep)
    assert clock.t == 0  # the first read decides


@pytest.mark.parametrize("events, expected", [
    ([], UNSCHEDULABLE),
    ([_event("TriggeredScaleUp", "pod triggered scale-up: [{gpu 1->2 (max: 4)}]", 1)], SCALING_UP),
    ([_event("NotTriggerScaleUp", "pod didn't trigger scale-up: 1 in backoff after failed scale-up", 1)],
     WAITING_FOR_CAPACITY),
    ([_event("NotTriggerScaleUp", "pod didn't trigger scale-up: max total nodes in cluster reached", 1)],
     WAITING_FOR_CAPACITY),
    ([_event("NotTriggerScaleUp", "pod didn't trigger scale-up: 2 node(s) had untolerated taint "
                                  "{nvidia.com/gpu: present}", 1)], NEVER_FITS),
    # Another controller reusing the reason is no autoscaler verdict.
    ([_event("NotTriggerScaleUp", "pod didn't trigger scale-up: 2 Insufficient cpu", 1, "my-operator")],
     UNSCHEDULABLE),
])
def test_the_autoscalers_latest_verdict_classifies_a_pending_pod(events, expected):
    api = client.ApiClient()

    def model(data, kind):
        return api._ApiClient__deserialize(data, kind)

    view = PodView(model({"metadata": {"name": POD}, "status": PENDING}, "V1Pod"),
                   tuple(model(e, "CoreV1Event") for e in events))
    assert scheduling(view).state == expected
    assert scheduling(PodView(model({"metadata": {"name": POD}, "status": {"phase": "Running"}}, "V1Pod"),
                              view.events)) is None


def test_a_long_but_schedulable_run_only_times_out_at_the_timeout():
    clock = FakeClock()
    with KfpApi([_run("RUNNING", [_task("train", "RUNNING")])]) as kfp:
        with pytest.raises(TimeoutError, match="did not finish within 3600s .*train RUNNING"):
            wait_for_run(_client(kfp.server.url), "run-1", timeout_s=3600, poll_s=600, unschedulable_after_s=60,
                         clock=clock, sleep=clock.sleep)
