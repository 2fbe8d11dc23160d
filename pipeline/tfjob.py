"""Multi-node training: the train step launches a TFJob, waits for it, and collects the model.

With `cluster.train_workers > 1` the pipeline's train task runs the `train` component below
instead of training in its own pod. It creates a TFJob (Kubeflow Training Operator) of N workers,
each running `radflow train EXAMPLES OUT --class-balance DIR` in the project image: the same
trainer as the single-pod step, which picks MultiWorkerMirroredStrategy from the TF_CONFIG the
operator sets. Workers read the examples from their URI and write under `tfjob_work_root`, so
both must be shared storage (gs:// or the PVC); each worker writes its own `worker-<i>/` and the
launcher copies the chief's (worker 0) into its Model artifact once the job has succeeded.

A failed job fails the step with the job's reason; a worker that no node can take (e.g. no GPU
node left) fails it after `UNSCHEDULABLE_AFTER_S` with the scheduler's message instead of
hanging until the deadline.
"""

# No `from __future__ import annotations`: KFP reads the `train` component's real parameter types.
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from radflow.pipeline.cluster import CREDENTIALS_FILE, parse_label, parse_toleration
from radflow.pipeline.config import ClusterConfig
from radflow.pipeline.k8s import unschedulable_reason

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"  # the operator labels every replica pod with it
CHIEF_DIR = "worker-0"  # under MultiWorkerMirroredStrategy without a Chief replica, worker 0 is the chief
POLL_S = 15.0  # seconds between status reads
UNSCHEDULABLE_AFTER_S = 900.0  # how long a worker may stay unschedulable (autoscalers need minutes to add a node)
# Each worker writes to OUT/worker-<index>: TF_CONFIG names the index, so no two workers share a directory.
WORKER_SCRIPT = (
    'printf "%s" "$RADFLOW_CONFIG" > /tmp/radflow-config.yaml'
    ' && index=$(python3 -c "import json, os; print(json.loads(os.environ[\'TF_CONFIG\'])[\'task\'][\'index\'])")'
    ' && exec radflow train "$1" "$2/worker-$index" --class-balance "$3" --config /tmp/radflow-config.yaml'
)


class TFJobFailed(RuntimeError):
    """The TFJob finished Failed, or its workers could not run; the message carries the reason."""


def job_name(model_uri: str) -> str:
    """A TFJob name that is the same for every attempt of one pipeline task (so a retry finds it)."""
    return "radflow-train-" + hashlib.sha256(model_uri.encode()).hexdigest()[:12]


def check_shared(uri: str, cluster: ClusterConfig, what: str) -> None:
    """Refuses a location the TFJob's worker pods cannot reach.

    Raises:
        ValueError: `uri` is neither gs:// nor under the mounted PVC.
    """
    on_pvc = bool(cluster.pvc) and os.path.normpath(uri).startswith(cluster.pvc_mount_path.rstrip("/") + "/")
    if not (uri.startswith("gs://") or on_pvc):
        raise ValueError(f"multi-node training needs {what} on shared storage (gs:// or under the PVC at "
                         f"{cluster.pvc_mount_path}), got {uri!r}; use a gs:// pipeline root and tfjob_work_root")


def tfjob_manifest(name: str, cluster: ClusterConfig, image: str, examples_uri: str, class_balance_uri: str,
                   out_dir: str, train_config: dict[str, Any]) -> dict[str, Any]:
    """The TFJob: `cluster.train_workers` identical workers on the GPU pool, running `radflow train`.

    Args:
        name: the job's name.
        cluster: workers, GPUs, placement, resources, deadline, storage and identity.
        image: the project image (the workers run the same code as every other step).
        examples_uri: an ingest output on shared storage.
        class_balance_uri: a class_balance output on shared storage.
        out_dir: shared directory; worker i writes `out_dir/worker-i`.
        train_config: TrainConfig fields, handed to the workers as a `--config` file.

    Returns:
        The manifest as a dict, ready for the CustomObjects API.

    Raises:
        ValueError: malformed node labels or tolerations.
    """
    accelerators = {cluster.accelerator: str(cluster.gpus)} if cluster.gpus > 0 else {}
    container: dict[str, Any] = {
        "name": "tensorflow",  # the Training Operator finds the training container by this name
        "image": image,
        "command": ["sh", "-c", WORKER_SCRIPT, "radflow-train", examples_uri, out_dir, class_balance_uri],
        "env": [{"name": "RADFLOW_CONFIG", "value": json.dumps({"train": train_config})}],
        "resources": {
            "requests": {"cpu": cluster.train_cpu, "memory": cluster.train_memory, **accelerators},
            "limits": {"memory": cluster.train_memory, **accelerators},
        },
        "volumeMounts": [],
    }
    pod: dict[str, Any] = {"serviceAccountName": cluster.tfjob_service_account, "containers": [container],
                           "volumes": []}
    if cluster.gpus > 0:
        pod["nodeSelector"] = dict(parse_label(label) for label in cluster.gpu_node_selector)
        pod["tolerations"] = [parse_toleration(t) for t in cluster.gpu_tolerations]
    if cluster.pvc:
        pod["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": cluster.pvc}})
        container["volumeMounts"].append({"name": "data", "mountPath": cluster.pvc_mount_path})
    if cluster.credentials_secret:
        pod["volumes"].append({"name": "credentials", "secret": {"secretName": cluster.credentials_secret}})
        container["volumeMounts"].append({"name": "credentials", "mountPath": cluster.credentials_mount_path,
                                          "readOnly": True})
        container["env"].append({"name": "GOOGLE_APPLICATION_CREDENTIALS",
                                 "value": f"{cluster.credentials_mount_path}/{CREDENTIALS_FILE}"})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TFJob",
        "metadata": {"name": name, "namespace": cluster.tfjob_namespace,
                     "labels": {"app.kubernetes.io/part-of": "radflow"}},
        "spec": {
            "runPolicy": {
                "cleanPodPolicy": "None",  # keep finished pods so their logs explain a failure
                "backoffLimit": cluster.retries,
                "activeDeadlineSeconds": cluster.train_timeout_s,
            },
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": cluster.train_workers,
                    # Restart on retryable exit codes (e.g. 137 after preemption), fail on code errors.
                    "restartPolicy": "ExitCode",
                    "template": {"spec": pod},
                },
            },
        },
    }


def finished(job: dict[str, Any]) -> tuple[str, str] | None:
    """("Succeeded" | "Failed", "reason: message") once the job has finished, else None."""
    for condition in (job.get("status") or {}).get("conditions") or ():
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition["type"], f"{condition.get('reason', '')}: {condition.get('message', '')}"
    return None


def wait_for_tfjob(custom_api: Any, core_api: Any, namespace: str, name: str, timeout_s: float,
                   poll_s: float = POLL_S, unschedulable_after_s: float = UNSCHEDULABLE_AFTER_S,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Polls the TFJob until it finishes.

    Args:
        custom_api: a kubernetes.client.CustomObjectsApi.
        core_api: a kubernetes.client.CoreV1Api, to read why a worker pod is not running.
        namespace, name: the job.
        timeout_s: give up after this long.
        poll_s: seconds between reads.
        unschedulable_after_s: fail once a worker pod has been unschedulable this long.
        clock, sleep: time source and pause (tests pass their own).

    Returns:
        The succeeded job.

    Raises:
        TFJobFailed: the job failed (with its reason), or a worker stayed unschedulable.
        TimeoutError: the job did not finish within `timeout_s`.
    """
    start, unschedulable_since = clock(), {}
    while True:
        job = custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        outcome = finished(job)
        if outcome and outcome[0] == "Succeeded":
            return job
        if outcome:
            raise TFJobFailed(f"TFJob {namespace}/{name} failed ({outcome[1]}); "
                              f"replicas: {json.dumps(job.get('status', {}).get('replicaStatuses', {}))}")
        now = clock()
        pods = core_api.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
        for pod in pods:
            reason = unschedulable_reason(pod)
            if reason is None:
                unschedulable_since.pop(pod.metadata.name, None)
                continue
            since = unschedulable_since.setdefault(pod.metadata.name, now)
            if now - since >= unschedulable_after_s:
                raise TFJobFailed(f"TFJob {namespace}/{name}: worker pod {pod.metadata.name} cannot be scheduled "
                                  f"(for {now - since:.0f}s): {reason}")
        if now - start >= timeout_s:
            raise TimeoutError(f"TFJob {namespace}/{name} did not finish within {timeout_s:.0f}s")
        sleep(poll_s)


def run_tfjob(custom_api: Any, core_api: Any, manifest: dict[str, Any], **wait_options: Any) -> dict[str, Any]:
    """Creates the TFJob (or adopts the one an earlier attempt of this task made) and waits for it.

    A job left Failed by an earlier attempt is deleted and created anew, so the step's retries
    really retry. A job this call gave up on (unschedulable, timed out) is deleted, so it does not
    hold GPUs or sit in the autoscaler's queue after the step has failed.

    Args:
        custom_api, core_api: kubernetes client APIs.
        manifest: from `tfjob_manifest`.
        wait_options: passed to `wait_for_tfjob` (timeout_s is required).

    Returns:
        The succeeded job.

    Raises:
        TFJobFailed, TimeoutError: as `wait_for_tfjob`.
    """
    from kubernetes.client.exceptions import ApiException

    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        log.info("created TFJob %s/%s with %d workers", namespace, name,
                 manifest["spec"]["tfReplicaSpecs"]["Worker"]["replicas"])
    except ApiException as err:
        if err.status != 409:
            raise
        existing = custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        if (finished(existing) or ("",))[0] == "Failed":
            log.info("TFJob %s/%s failed in an earlier attempt; creating it anew", namespace, name)
            custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                       propagation_policy="Foreground")
            _wait_gone(custom_api, namespace, name, wait_options.get("sleep", time.sleep))
            custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        else:
            log.info("adopting TFJob %s/%s from an earlier attempt of this step", namespace, name)
    try:
        return wait_for_tfjob(custom_api, core_api, namespace, name, **wait_options)
    except TimeoutError:
        custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise
    except TFJobFailed as err:
        if "cannot be scheduled" in str(err):
            custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise


def _wait_gone(custom_api: Any, namespace: str, name: str, sleep: Callable[[float], None]) -> None:
    from kubernetes.client.exceptions import ApiException

    for _ in range(120):
        try:
            custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                return
            raise
        sleep(1.0)
    raise TimeoutError(f"TFJob {namespace}/{name} was not deleted within 120 attempts")


def train_on_tfjob(examples_uri: str, class_balance_uri: str, train_config: dict[str, Any], cluster: ClusterConfig,
                   image: str, model_uri: str, model_dir: str, api_client: Any, **wait_options: Any) -> str:
    """Trains on a TFJob and copies the chief's output into `model_dir`.

    Args:
        examples_uri, class_balance_uri: the step's inputs, on shared storage.
        train_config: TrainConfig fields.
        cluster: the cluster settings (workers, GPUs, work root, ...).
        image: the project image.
        model_uri: the step's output URI; names the job, so every attempt of the step finds it.
        model_dir: where the Model artifact's files go (KFP uploads them).
        api_client: a kubernetes.client.ApiClient.
        wait_options: passed to `wait_for_tfjob`.

    Returns:
        The TFJob's name.

    Raises:
        ValueError: inputs or work root not on shared storage, or no work root configured.
        TFJobFailed, TimeoutError: as `wait_for_tfjob`.
        FileNotFoundError: the job succeeded but the chief left no finished model.
    """
    if not cluster.tfjob_work_root:
        raise ValueError("multi-node training needs cluster.tfjob_work_root (a gs:// prefix or a path on the PVC)")
    for uri, what in ((examples_uri, "the examples"), (class_balance_uri, "the class balance"),
                      (cluster.tfjob_work_root, "tfjob_work_root")):
        check_shared(uri, cluster, what)
    import tensorflow as tf
    from kubernetes import client

    from radflow import fileio
    from radflow.components.train.train import RESULT_FILE

    name = job_name(model_uri)
    work_dir = f"{cluster.tfjob_work_root.rstrip('/')}/{name}"
    manifest = tfjob_manifest(name, cluster, image, examples_uri, class_balance_uri, work_dir, train_config)
    wait_options.setdefault("timeout_s", cluster.train_timeout_s)
    run_tfjob(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client), manifest, **wait_options)
    chief = f"{work_dir}/{CHIEF_DIR}"
    if not tf.io.gfile.exists(f"{chief}/{RESULT_FILE}"):
        raise FileNotFoundError(f"TFJob {name} succeeded but {chief} holds no {RESULT_FILE}: the model is incomplete")
    fileio.copytree(chief, model_dir, last=RESULT_FILE)
    return name


def train(examples: Input[Dataset], class_balance: Input[Artifact], config: dict, cluster: dict, image: str,
          model: Output[Model], curves: Output[HTML]):
    """Trains the baseline CNN on a multi-worker TFJob (MultiWorkerMirroredStrategy) and collects it.

    Args:
        examples: an ingest output (on gs:// or the PVC).
        class_balance: a class_balance output.
        config: TrainConfig fields.
        cluster: ClusterConfig fields (workers, GPUs, placement, work root).
        image: the project image the workers run.
        model: the chief's saved_model/, model.keras, history and training.json.
        curves: training curves, rendered by the KFP UI.
    """
    from kubernetes import client
    from kubernetes import config as kube_config

    from radflow.components.train.train import CURVES_FILE
    from radflow.pipeline.config import ClusterConfig, from_dict
    from radflow.pipeline.tfjob import train_on_tfjob
    from radflow.report import write_images_html

    kube_config.load_incluster_config()
    spec = from_dict(ClusterConfig, cluster)
    name = train_on_tfjob(examples.uri, class_balance.uri, config, spec, image, model.uri, model.path,
                          client.ApiClient())
    model.metadata.update({"framework": "tensorflow", "strategy": "MultiWorkerMirroredStrategy",
                           "workers": spec.train_workers, "tfjob": name})
    write_images_html(curves.path, "Training curves", [f"{model.path}/{CURVES_FILE}"])
