"""The pipeline's configuration: one frozen dataclass per stage, composed into PipelineConfig.

Each stage owns its config class beside its logic; this module composes them, reads YAML
files, and turns a stage config into the plain dict that travels as a KFP pipeline parameter
(and back). Nothing here reads the environment: defaults are the values written below.

A config file overrides any subset, e.g.

    data: /data/chest_xray
    ingest: {image_size: 128}
    train: {epochs: 10}
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from radflow import __version__
from radflow.components.class_balance.config import ClassBalanceConfig
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.ingest.config import IngestConfig
from radflow.components.push.config import PushConfig
from radflow.components.train.config import TrainConfig
from radflow.components.validate.config import ValidateConfig
from radflow.config_types import NonNegative, Positive
from radflow.pipeline.config_check import ConfigError, check, read_yaml

T = TypeVar("T")


@dataclass(frozen=True)
class ClusterConfig:
    """How the steps run on Kubernetes. kfp.local ignores all of it, so local runs are unchanged."""

    # Registry the image is pushed to, prefixed to `image` in the compiled pipeline, e.g.
    # europe-west4-docker.pkg.dev/PROJECT/radflow (GKE: Artifact Registry); "" = `image` as it is (kind: `kind load`).
    registry: str = ""
    gpus: NonNegative = 1  # nvidia.com/gpu for train (0, 1, 2, 4, 8 or 16; per worker with train_workers > 1); 0 = CPU
    accelerator: str = "nvidia.com/gpu"  # the extended resource name the GPU device plugin advertises
    # key=value node labels a GPU pod must match (GKE labels its GPU nodes with the accelerator type)
    gpu_node_selector: tuple[str, ...] = ("cloud.google.com/gke-accelerator=nvidia-tesla-t4",)
    # taints of the GPU pool the train pod tolerates, as key[=value]:effect (GKE's own GPU taint below)
    gpu_tolerations: tuple[str, ...] = ("nvidia.com/gpu=present:NoSchedule",)
    # The GPU pool gpu_node_selector names (infra/gke: gpu_max_nodes x zones, gpus_per_node), and what GPU TF
    # Serving holds there (infra/serving/overlays/gpu: its HPA's maxReplicas x 1 GPU; 0 = serving on CPU). The
    # capacity check (pipeline/capacity.py, `radflow capacity`) compares the parallel demand with them;
    # gpu_pool_nodes 0 = not checked.
    gpu_pool_nodes: NonNegative = 6  # nodes of the GPU pool at its largest
    gpus_per_node: NonNegative = 1  # GPUs on each of those nodes
    serving_gpus: NonNegative = 0  # GPUs GPU serving may hold in that pool at its largest
    cpu: str = "1"  # CPU request of every step but train
    memory: str = "4G"  # memory request (and limit) of every step but train
    train_cpu: str = "4"  # CPU request of train (of each TFJob worker with train_workers > 1)
    train_memory: str = "16G"  # memory request (and limit) of train (of each TFJob worker)
    timeout_s: Positive = 7200  # pod deadline (activeDeadlineSeconds) of every step but train
    train_timeout_s: Positive = 43200  # deadline of train; a TFJob gets the same as its activeDeadlineSeconds
    retries: NonNegative = 2  # retries of the steps in retry_stages (spot/preemptible nodes can vanish mid-step)
    # Only steps whose failure can be transient: the long ingest and training (the fold tasks count as train), on
    # spot GPU nodes. validate, validation_gate, evaluate and push are refused (cluster.NEVER_RETRIED says why).
    retry_stages: tuple[str, ...] = ("ingest", "train")
    pvc: str = ""  # a PersistentVolumeClaim mounted into every step at pvc_mount_path; "" = data on gs:// only
    pvc_mount_path: str = "/mnt/radflow"  # where the PVC appears; point data/serving_root below it
    # a Secret holding a service-account key.json, mounted read-only; "" = Workload Identity (no key at all)
    credentials_secret: str = ""
    credentials_mount_path: str = "/var/secrets/google"  # GOOGLE_APPLICATION_CREDENTIALS=<this>/key.json
    # a Secret whose data key "key" is the patient-id HMAC key, given to ingest only, as the environment
    # variable ingest reads at run time (IngestConfig.patient_key_secret_env); "" = a random key per run
    patient_key_secret: str = ""
    # a Secret with the PACS credentials of a dicomweb+http(s):// data source (username and password, e.g. of type
    # kubernetes.io/basic-auth, or token), mounted into ingest alone; point ingest.dicomweb_credentials_file at the path
    pacs_credentials_secret: str = ""
    pacs_credentials_mount_path: str = "/var/secrets/pacs"  # where that Secret appears in the ingest step
    train_workers: Positive = 1  # > 1: train launches a TFJob of this many MultiWorkerMirroredStrategy workers
    tfjob_namespace: str = "kubeflow"  # namespace of the TFJob (the pipeline's service account may create there)
    tfjob_service_account: str = "pipeline-runner"  # the workers' identity: KFP's, bound by Workload Identity
    tfjob_work_root: str = ""  # gs:// prefix (or a path on the PVC) the TFJob workers write the model to


@dataclass(frozen=True)
class PipelineConfig:
    data: str = "data/sample"  # folder (or gs:// prefix) of labelled images: Kaggle or class-per-folder layout
    serving_root: str = "models"  # TF Serving's model base: pushed versions go to <serving_root>/<model_name>/<n>/
    pipeline_root: str = "runs"  # where a local run keeps every task's outputs
    # container image of every step on a cluster (`make image` builds it), prefixed with cluster.registry
    image: str = f"radflow:{__version__}"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    class_balance: ClassBalanceConfig = field(default_factory=ClassBalanceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    push: PushConfig = field(default_factory=PushConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able values (tuples become lists)."""
    return dataclasses.asdict(config, dict_factory=lambda kv: {k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in kv})


def from_dict(cls: type[T], values: dict[str, Any] | None) -> T:
    """Builds config class `cls` from a (possibly partial, possibly nested) dict, checking every value.

    Values may have come through a KFP struct parameter or JSON (see `_restore`); a stage
    class's problems are named with its section, e.g. "train.epochs: ...".

    Raises:
        ConfigError: an unknown key, a value of the wrong type or out of bounds; every one, a line each.
    """
    values = dict(values or {})
    return check(cls, _restore(cls, values), prefix=_sections().get(cls, ()))


@functools.cache
def _sections() -> dict[type, tuple[str]]:
    """Each stage's config class -> its section in PipelineConfig, e.g. TrainConfig -> ("train",)."""
    return {hint: (name,) for name, hint in typing.get_type_hints(PipelineConfig).items()
            if dataclasses.is_dataclass(hint)}


def _restore(hint: Any, value: Any) -> Any:
    """Restores what a KFP struct parameter changed, for the strict check that follows.

    KFP carries dict parameters as protobuf Structs, where every number is a double: so 224
    arrives as 224.0. An integer field gets its whole-numbered float back as an int; anything
    else is left for the check to accept or name.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: restore as the non-None member
        return _restore(next(a for a in args if a is not type(None)), value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        hints = typing.get_type_hints(hint)
        return {k: _restore(hints[k], v) if k in hints else v for k, v in value.items()}
    if origin is tuple and isinstance(value, list | tuple):
        return [_restore(args[0], v) for v in value]
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_config(path: str | None = None, **overrides: Any) -> PipelineConfig:
    """Reads a YAML config file (or none, for the defaults) and applies top-level overrides.

    The whole config is checked here, before any stage runs: a run that starts has a config
    every stage accepts.

    Args:
        path: a YAML file whose keys mirror PipelineConfig; missing keys keep their defaults.
        overrides: top-level fields to set, e.g. data="..." (None values are ignored).

    Returns:
        The config.

    Raises:
        FileNotFoundError: no file at `path`.
        ConfigError: invalid YAML (file:line:column), or every value that does not fit its field,
            each on its own line with the file position and the field's path.
    """
    values: Any = {}
    marks: dict = {}
    if path:
        values, marks = read_yaml(path)
        values = {} if values is None else values
        if not isinstance(values, dict):
            sections = ", ".join(f.name for f in dataclasses.fields(PipelineConfig))
            raise ConfigError([f"{path}: expected a mapping of options ({sections}), got {type(values).__name__}"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return check(PipelineConfig, values, marks=marks)

