"""Kubernetes settings of the pipeline's tasks: resources, GPU placement, storage, retries, deadlines.

Everything here lands in the compiled pipeline's resource requests and its `platforms.kubernetes`
section, both of which kfp.local ignores, so one pipeline function serves local runs and clusters.

    radflow compile --config cluster.yaml   # with a `cluster:` section, see ClusterConfig
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from radflow.components.ingest.config import IngestConfig
from radflow.pipeline.config import ClusterConfig

CREDENTIALS_FILE = "key.json"  # the key inside credentials_secret
LAUNCHER_GRACE_S = 600  # a TFJob launcher's deadline beyond its job's


def container_image(image: str, registry: str) -> str:
    """The image reference the steps run: `registry`/`image`, or `image` alone without a registry.

    Raises:
        ValueError: both name a registry (which one is meant?), or the registry carries a tag or digest.
    """
    if not registry:
        return image
    first = image.split("/")[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        raise ValueError(f"image {image!r} already names a registry ({first}) and cluster.registry is "
                         f"{registry!r}: set one of them")
    if "@" in registry or ":" in registry.split("/")[-1]:
        raise ValueError(f"cluster.registry {registry!r}: a registry and path only, e.g. "
                         "europe-west4-docker.pkg.dev/PROJECT/radflow (the tag is the image's)")
    return f"{registry.rstrip('/')}/{image}"


def parse_label(text: str) -> tuple[str, str]:
    """`key=value` -> (key, value).

    Raises:
        ValueError: no `=` or an empty key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"node label {text!r}: expected key=value, e.g. cloud.google.com/gke-accelerator=nvidia-l4")
    return key, value


def parse_toleration(text: str) -> dict[str, str]:
    """`key[=value]:effect` (kubectl's taint syntax) -> a Kubernetes toleration.

    A toleration without a value matches the key with any value (operator Exists).

    Raises:
        ValueError: the effect is missing or not one Kubernetes knows.
    """
    taint, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not taint:
        raise ValueError(f"toleration {text!r}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    key, has_value, value = taint.partition("=")
    if has_value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


# Steps whose failures are deterministic, or whose retry would do harm: retrying only delays the same error.
NEVER_RETRIED = {
    "validate": "its findings are the data's, the same on every try",
    "validation_gate": "it re-reads the same verdict",
    "evaluate": "the gate's verdict on the same model is the same on every try",
    "push": "a push killed after publishing and then retried would publish a second version",
}
RETRIABLE = ("ingest", "class_balance", "train", "merge_folds")  # train covers the fold tasks


def check_retries(config: ClusterConfig) -> None:
    """Refuses retry_stages that name a step never to retry, or an unknown one.

    Raises:
        ValueError: naming the field, the step and why.
    """
    for stage in config.retry_stages:
        if stage in NEVER_RETRIED:
            raise ValueError(f"cluster.retry_stages: {stage} is never retried: {NEVER_RETRIED[stage]}")
        if stage not in RETRIABLE:
            raise ValueError(f"cluster.retry_stages: unknown step {stage!r}; valid: {list(RETRIABLE)}")


PATIENT_KEY_SECRET_KEY = "key"  # the data key in ClusterConfig.patient_key_secret's Secret
PATIENT_KEY_ENV = IngestConfig.patient_key_secret_env  # the variable ingest reads the patient-key secret from
FOLD_TASK_PREFIX = "train_fold_"  # cross-validation fold tasks: train_fold_0, train_fold_1, ...


def apply_cluster_settings(tasks: dict[str, PipelineTask], config: ClusterConfig, tfjob: bool = False) -> None:
    """Sets requests, placement, storage, retries and deadlines on the pipeline's tasks.

    Args:
        tasks: stage name -> task.
        config: the cluster settings.
        tfjob: train only launches a TFJob, whose workers hold the GPUs; its own pod stays small.

    Raises:
        ValueError: a malformed node label or toleration, an unsupported GPU count, or retry_stages naming a step
            that is never retried.
    """
    check_retries(config)
    for name, task in tasks.items():
        stage = "train" if name.startswith(FOLD_TASK_PREFIX) else name  # a fold fit is sized and retried as train
        stage = "merge_folds" if stage.startswith("merge_folds") else stage
        trains_here = stage == "train" and not tfjob
        cpu, memory = (config.train_cpu, config.train_memory) if trains_here else (config.cpu, config.memory)
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
        if trains_here and config.gpus > 0:
            task.set_accelerator_type(config.accelerator).set_accelerator_limit(config.gpus)
            for label in config.gpu_node_selector:
                kubernetes.add_node_selector(task, *parse_label(label))
            for toleration in config.gpu_tolerations:
                kubernetes.add_toleration(task, **parse_toleration(toleration))
        if stage in config.retry_stages and config.retries > 0:
            task.set_retry(num_retries=config.retries, backoff_duration="60s", backoff_factor=2.0)
        timeout = config.timeout_s
        if stage == "train":
            # A launcher outlives its TFJob's own deadline, so the job's failure reason is what surfaces.
            timeout = config.train_timeout_s + (LAUNCHER_GRACE_S if tfjob else 0)
        kubernetes.set_timeout(task, timeout)
        if config.pvc:
            kubernetes.mount_pvc(task, pvc_name=config.pvc, mount_path=config.pvc_mount_path)
        if name == "ingest" and config.patient_key_secret:
            kubernetes.use_secret_as_env(task, secret_name=config.patient_key_secret,
                                         secret_key_to_env={PATIENT_KEY_SECRET_KEY: PATIENT_KEY_ENV})
        if name == "ingest" and config.pacs_credentials_secret:
            kubernetes.use_secret_as_volume(task, secret_name=config.pacs_credentials_secret,
                                            mount_path=config.pacs_credentials_mount_path)
        if config.credentials_secret:
            kubernetes.use_secret_as_volume(task, secret_name=config.credentials_secret,
                                            mount_path=config.credentials_mount_path)
            task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS",
                                  f"{config.credentials_mount_path}/{CREDENTIALS_FILE}")
