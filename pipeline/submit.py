"""Submits the pipeline to a Kubeflow Pipelines endpoint and follows the run to its end.

A failed run is reported by the step that failed and why. A step whose pod no node can take
(e.g. the GPU pool has no node of the requested type) is the one failure KFP never reports: the
run just stays "running". Where this machine has Kubernetes access, the waiter reads the pod and
the cluster autoscaler's events about it: a pod waiting for a node being added, or for room in a
pool at its maximum, is left to wait; one no pool can ever take fails the run at once. Without an
autoscaler's word it fails the run once the step has been unschedulable for `unschedulable_after_s`,
with the scheduler's message, read from the run details or the pod.

    radflow submit --host http://localhost:8080 --param data=gs://bucket/chest_xray --param train.epochs=10 --wait
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from radflow.pipeline.config import PipelineConfig, from_dict, to_dict
from radflow.pipeline.k8s import NEVER_FITS, UNSCHEDULABLE, PodView, Scheduling, scheduling
from radflow.pipeline.upload import PipelineVersion

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "radflow"
POLL_S = 15.0  # seconds between run reads
UNSCHEDULABLE_AFTER_S = 900.0  # a GPU node pool scaling up from zero needs several minutes
FINAL_OK = {"SUCCEEDED", "SKIPPED"}
FINAL_BAD = {"FAILED", "CANCELED", "CANCELING"}
ACTIVE = {"PENDING", "RUNNING"}
# Task details KFP adds around the user's steps; a failure is reported on the step, not on these.
_INFRA_TASKS = {"root", "root-driver", "executor"}


class RunFailed(RuntimeError):
    """A run ended in failure, or a step can never start; the message names the step and why."""


def run_url(host: str, run_id: str) -> str:
    """The run's page in the KFP UI."""
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def parse_params(items: list[str], config: PipelineConfig) -> dict[str, Any]:
    """`--param` items -> the run's parameters.

    `data=...` and `serving_root=...` set those parameters; `<stage>.<field>=value` sets one field
    of a stage's options on top of the config's values for that stage (a KFP dict parameter is
    replaced whole, so sending a single field would silently drop the others). Values are YAML:
    `train.epochs=10`, `ingest.labels=[NORMAL, PNEUMONIA]`.

    Args:
        items: `key=value` strings.
        config: the config whose stage values the dotted keys start from.

    Returns:
        Parameters for the run, e.g. {"data": "gs://b/x", "train_config": {...every field...}}.

    Raises:
        ValueError: a malformed item, an unknown parameter, stage or field, or a value of the wrong kind.
    """
    # Cluster settings are compiled into the pipeline, not run parameters.
    stages = {f.name for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))}
    stages.discard("cluster")
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected key=value, e.g. data=gs://bucket/xray or train.epochs=10")
        value = yaml.safe_load(raw) if raw else ""
        stage, dot, field_name = key.partition(".")
        if not dot:
            if key not in ("data", "serving_root"):
                raise ValueError(f"--param {key!r}: unknown parameter; use data, serving_root or <stage>.<field> "
                                 f"with a stage in {sorted(stages)}")
            params[key] = str(raw)
            continue
        if stage not in stages:
            raise ValueError(f"--param {key!r}: unknown stage {stage!r}; valid: {sorted(stages)}")
        section = getattr(config, stage)
        values = params.setdefault(f"{stage}_config", to_dict(section))
        values[field_name] = value
        from_dict(type(section), values)  # refuses unknown fields now rather than in the cluster
    return params


def submit(client: Any, package_path: str | None, params: dict[str, Any], experiment: str = DEFAULT_EXPERIMENT,
           run_name: str | None = None, pipeline_root: str | None = None, service_account: str | None = None,
           namespace: str = "", version: PipelineVersion | None = None) -> str:
    """Submits a run of `experiment` (created if missing): of a compiled pipeline, or of an uploaded version.

    Args:
        client: a kfp.Client.
        package_path: the compiled pipeline YAML, sent inline; None with `version`.
        params: run parameters (from `parse_params`).
        experiment: experiment name.
        run_name: the run's display name (default: radflow <UTC time>).
        pipeline_root: where the run's artifacts go (e.g. gs://bucket/runs); None = KFP's default.
        service_account: the Kubernetes service account the steps run as (Workload Identity).
        namespace: the Kubeflow profile of the experiment (and so of the run); "" on a single-user KFP.
        version: an uploaded pipeline version (`radflow upload`) to run instead of an inline spec.

    Returns:
        The run id.
    """
    experiment_id = client.create_experiment(name=experiment, namespace=namespace or None).experiment_id
    run_name = run_name or time.strftime("radflow %Y-%m-%d %H:%M:%S UTC", time.gmtime())
    source = ({"pipeline_id": version.pipeline_id, "version_id": version.version_id} if version
              else {"pipeline_package_path": package_path})
    run = client.run_pipeline(experiment_id=experiment_id, job_name=run_name, params=params,
                              pipeline_root=pipeline_root, service_account=service_account, **source)
    return run.run_id


@dataclass(frozen=True)
class StepState:
    name: str
    state: str
    message: str
    pods: tuple[str, ...]


def steps(run: Any) -> list[StepState]:
    """The run's user steps (not KFP's own driver and DAG tasks) with their state and latest message."""
    out = []
    for task in (run.run_details.task_details if run.run_details else None) or ():
        name = task.display_name or ""
        if not name or name in _INFRA_TASKS or name.endswith("-driver"):
            continue
        messages = [task.error.message if task.error else None]
        messages += [h.error.message for h in reversed(task.state_history or ()) if h.error]
        pods = tuple(p for p in [task.pod_name, *(c.pod_name for c in task.child_tasks or ())] if p)
        out.append(StepState(name, task.state or "", next((m for m in messages if m), ""), pods))
    return out


def describe_failure(run: Any) -> str:
    """Which steps failed and why, for a run that ended badly."""
    failed = [s for s in steps(run) if s.state == "FAILED"]
    run_error = run.error.message if run.error and run.error.message else ""
    if not failed:
        return f"run {run.run_id} {run.state}" + (f": {run_error}" if run_error else "")
    lines = [f"step '{s.name}' failed: {s.message or run_error or 'no message; see its pod logs in the KFP UI'}"
             for s in failed]
    return f"run {run.run_id} {run.state}:\n  " + "\n  ".join(lines)


def wait_for_run(client: Any, run_id: str, timeout_s: float, poll_s: float = POLL_S,
                 unschedulable_after_s: float = UNSCHEDULABLE_AFTER_S,
                 read_pod: Callable[[str], PodView] | None = None, on_change: Callable[[str], None] = log.info,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Follows a run until it ends.

    A pending step is judged by what the cluster autoscaler says about its pod (k8s.scheduling):
    while it adds a node, or while the node group is at its maximum, the step is waiting and only
    `timeout_s` bounds it (fold tasks queue for GPUs this way); when no node group can ever take
    the pod the run fails at once; with no word from an autoscaler the step fails once it has been
    unschedulable for `unschedulable_after_s`.

    Args:
        client: a kfp.Client.
        run_id: the run.
        timeout_s: give up after this long.
        poll_s: seconds between reads.
        unschedulable_after_s: fail once a step has been unschedulable this long (no autoscaler verdict).
        read_pod: pod name -> PodView (the pod, None when gone, and its events); None when this machine
            has no Kubernetes access, and only the run details are read.
        on_change: called with a line whenever a step changes state or scheduling state.
        clock, sleep: time source and pause (tests pass their own).

    Returns:
        The succeeded run.

    Raises:
        RunFailed: the run failed or was cancelled, a step can never be scheduled, or stayed unschedulable.
        TimeoutError: the run did not end within `timeout_s`.
    """
    start, seen, unschedulable_since = clock(), {}, {}
    while True:
        run = client.get_run(run_id)
        state = run.state or ""
        for step in steps(run):
            if seen.get(step.name) != step.state:
                seen[step.name] = step.state
                on_change(f"{step.name}: {step.state}")
        if state in FINAL_OK:
            return run
        if state in FINAL_BAD:
            raise RunFailed(describe_failure(run))
        now = clock()
        for step in steps(run):
            found = _scheduling(step, read_pod) if step.state in ACTIVE else None
            if seen.get((step.name, "scheduling")) != (found and found.state):
                seen[(step.name, "scheduling")] = found and found.state
                if found is not None:
                    on_change(f"{step.name}: {found.state}: {found.message}")
            if found is not None and found.state == NEVER_FITS:
                raise RunFailed(f"run {run_id}: step '{step.name}' can never be scheduled (KFP still shows it "
                                f"{step.state}): {found.message}. No node pool fits its requests, node selector "
                                "and tolerations: check cluster.gpus, gpu_node_selector and gpu_tolerations "
                                "against the pools, or cancel the run.")
            if found is None or found.state != UNSCHEDULABLE:
                unschedulable_since.pop(step.name, None)
                continue
            since = unschedulable_since.setdefault(step.name, now)
            if now - since >= unschedulable_after_s:
                raise RunFailed(f"run {run_id}: step '{step.name}' cannot be scheduled (for {now - since:.0f}s; KFP "
                                f"still shows it {step.state}): {found.message}. Check the node pools (GPU quota, "
                                f"accelerator labels, taints) or cancel the run.")
        if now - start >= timeout_s:
            active = ", ".join(f"{s.name} {s.state}" for s in steps(run) if s.state in ACTIVE) or state
            raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f}s (now: {active})")
        sleep(poll_s)


def _scheduling(step: StepState, read_pod: Callable[[str], PodView] | None) -> Scheduling | None:
    for pod_name in step.pods if read_pod else ():
        found = scheduling(read_pod(pod_name))
        if found is not None:
            return found
    if "Unschedulable" in step.message:  # all KFP's run details say: no autoscaler verdict to go by
        return Scheduling(UNSCHEDULABLE, step.message)
    return None


def pod_reader(namespace: str) -> Callable[[str], PodView] | None:
    """Reads pods in `namespace`, with their events, through this machine's kubeconfig, or None without one.

    Returns:
        A function pod name -> PodView (pod None for a pod that is gone), or None.
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config()
    except (ConfigException, FileNotFoundError, TypeError) as err:
        log.info("no Kubernetes access (%s): unschedulable steps are detected from the run details only", err)
        return None
    core = client.CoreV1Api()

    def read(name: str) -> PodView:
        try:
            pod = core.read_namespaced_pod(name, namespace)
            events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        except ApiException as err:
            if err.status in (403, 404):
                return PodView(None)
            raise
        return PodView(pod, tuple(events))

    return read
