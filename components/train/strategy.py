"""Which tf.distribute strategy and which numeric tricks a training process uses, read from its machine.

One code path runs everywhere: a TPU gets TPUStrategy, a TF_CONFIG naming several tasks gets
MultiWorkerMirroredStrategy (a Kubeflow TFJob sets it on every worker), several GPUs get
MirroredStrategy, anything else OneDeviceStrategy. Mixed precision and XLA pay off on GPUs and
TPUs only, so they are switched on there and off on CPU whatever the config says.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

ONE_DEVICE, MIRRORED, MULTI_WORKER, TPU = "OneDeviceStrategy", "MirroredStrategy", "MultiWorkerMirroredStrategy", \
    "TPUStrategy"


def cluster_size(tf_config: str | None) -> int:
    """The number of training tasks (chief and workers) that a TF_CONFIG value names; 0 when unset."""
    if not tf_config:
        return 0
    cluster = json.loads(tf_config).get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def strategy_kind(tf_config: str | None, gpus: int, tpu: bool) -> str:
    """The strategy for a machine, as a pure function so that every branch is testable on a CPU.

    Args:
        tf_config: the TF_CONFIG environment variable, or None.
        gpus: visible GPUs.
        tpu: whether a TPU is attached.

    Returns:
        One of ONE_DEVICE, MIRRORED, MULTI_WORKER, TPU.
    """
    if tpu:
        return TPU
    if cluster_size(tf_config) > 1:
        return MULTI_WORKER
    if gpus > 1:
        return MIRRORED
    return ONE_DEVICE


def _tpu_attached() -> bool:
    # A Cloud TPU VM lists its chips; GKE TPU pods and TPU nodes name the TPU in the environment.
    return bool(tf.config.list_physical_devices("TPU")) or bool(
        os.environ.get("TPU_NAME") or os.environ.get("KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS"))


def choose_strategy() -> tf.distribute.Strategy:
    """The strategy for this process's machine. Call it before any other TensorFlow work.

    MultiWorkerMirroredStrategy must be created before the runtime initialises its devices, which
    is why train() calls this first.
    """
    tf_config = os.environ.get("TF_CONFIG")
    gpus = tf.config.list_physical_devices("GPU")
    kind = strategy_kind(tf_config, len(gpus), _tpu_attached())
    if kind == TPU:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", "local"))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if kind == MULTI_WORKER:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == MIRRORED:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name of a strategy (tf.distribute's multi-worker class is CollectiveAllReduceStrategy)."""
    return MULTI_WORKER if is_multi_worker(strategy) else type(strategy).__name__


def device_kind(strategy: tf.distribute.Strategy) -> str:
    """"tpu", "gpu" or "cpu": what the strategy's replicas compute on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    devices = strategy.extended.worker_devices
    return "gpu" if any("GPU" in d.upper() for d in devices) else "cpu"


@dataclass(frozen=True)
class Acceleration:
    """Numeric settings for one device kind.

    Args:
        policy: the Keras dtype policy the model is built under.
        jit_compile: whether Keras XLA-compiles the train step.
    """

    policy: str
    jit_compile: bool


def acceleration(device: str, mixed_precision: bool, xla: bool) -> Acceleration:
    """Mixed precision and XLA where they help, off on CPU whatever was asked.

    On CPU float16 arithmetic is emulated and slower, and XLA compilation costs more than it saves
    on small steps; a TPU computes in bfloat16 natively.

    Args:
        device: "cpu", "gpu" or "tpu".
        mixed_precision: the config's wish for GPU/TPU.
        xla: the config's wish for GPU/TPU.
    """
    if device == "cpu":
        return Acceleration("float32", False)
    low = "mixed_bfloat16" if device == "tpu" else "mixed_float16"
    return Acceleration(low if mixed_precision else "float32", xla)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Builds layers under a Keras dtype policy, restoring the previous global policy afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


class MultiWorkerModel(keras.Model):
    """A functional model whose fit() works under MultiWorkerMirroredStrategy with Keras 3.

    Keras 3.15's TF trainer reduces the first input batch as one nested value and each step's
    scalar logs along axis 0 across workers, both of which MultiWorkerMirroredStrategy refuses
    (tensorflow/tensorflow#72388). Returning logs of shape [1] and taking the local replica's
    batch for shape inference sidesteps both; the training maths are unchanged. Only fit() sees
    this class: train saves and exports the plain functional model that shares its layers.
    """

    def train_step(self, data):
        return {name: tf.reshape(value, [1]) for name, value in super().train_step(data).items()}

    def test_step(self, data):
        return {name: tf.reshape(value, [1]) for name, value in super().test_step(data).items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        local = self.distribute_strategy.experimental_local_results
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(lambda v: local(v)[0], next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)


def trainer_for(model: keras.Model, strategy: tf.distribute.Strategy) -> keras.Model:
    """The model to compile and fit: `model` itself, or a MultiWorkerModel sharing its layers."""
    if is_multi_worker(strategy):
        return MultiWorkerModel(model.inputs, model.outputs, name=model.name)
    return model
