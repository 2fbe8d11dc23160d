"""A sampled log of predict requests, in TF Serving's own request-log format, for drift analysis.

Records are `PredictionLog` protos (tensorflow_serving.apis.prediction_log_pb2) in TFRecord files,
which is what TF Serving's request logging writes, so the readers here work on logs from either
server. The request's input tensors (the images) are stored only when `include_images` is on;
otherwise a record keeps the model spec and the outputs (scores, threshold), enough to watch the
prediction distribution without keeping patient images.

A file is written as `requests-<start>-<pid>-<n>.tfrecord.inprogress` and renamed to `.tfrecord`
when it is full or the server stops, so readers only ever see complete files.

    from radflow.serving.request_log import read_request_images
    images = read_request_images("logs/requests")   # encoded JPEG/PNG bytes, as clients sent them
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_log_pb2

from radflow.serving.config import RequestLogConfig

log = logging.getLogger(__name__)

SUFFIX = ".tfrecord"
IN_PROGRESS = ".inprogress"


class RequestLogger:
    """Appends sampled predict requests to TFRecord files.

    Args:
        config: where, how often, and whether input tensors are kept.
        seed: seeds the sampling (tests); None samples at random.
    """

    def __init__(self, config: RequestLogConfig, seed: int | None = None):
        if not 0.0 <= config.sampling_rate <= 1.0:
            raise ValueError(f"request log sampling_rate must be in [0, 1], got {config.sampling_rate}")
        self._config = config
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._prefix = os.path.join(config.directory, f"requests-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        self._file_index = 0
        self._writer: tf.io.TFRecordWriter | None = None
        self._path: str | None = None
        self._records = 0
        tf.io.gfile.makedirs(config.directory)

    def log_predict(self, model_name: str, version: int, signature_name: str,
                    inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bool:
        """Logs one request with probability `sampling_rate`.

        Returns:
            Whether it was logged.
        """
        with self._lock:
            if self._random.random() >= self._config.sampling_rate:
                return False
        entry = prediction_log_pb2.PredictionLog()
        entry.log_metadata.model_spec.name = model_name
        entry.log_metadata.model_spec.version.value = version
        entry.log_metadata.model_spec.signature_name = signature_name
        entry.log_metadata.sampling_config.sampling_rate = self._config.sampling_rate
        entry.predict_log.request.model_spec.CopyFrom(entry.log_metadata.model_spec)
        if self._config.include_images:
            for k, v in inputs.items():
                entry.predict_log.request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
        for k, v in outputs.items():
            entry.predict_log.response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        entry.predict_log.response.model_spec.CopyFrom(entry.log_metadata.model_spec)
        record = entry.SerializeToString()
        with self._lock:
            if self._writer is None:
                self._path = f"{self._prefix}-{self._file_index:05d}{SUFFIX}{IN_PROGRESS}"
                self._writer = tf.io.TFRecordWriter(self._path)
            self._writer.write(record)
            self._writer.flush()
            self._records += 1
            if self._records >= self._config.max_records_per_file:
                self._publish()
        return True

    def close(self) -> None:
        """Publishes the open file."""
        with self._lock:
            self._publish()

    def _publish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        tf.io.gfile.rename(self._path, self._path[: -len(IN_PROGRESS)], overwrite=True)
        log.info("request log %s published (%d records)", self._path[: -len(IN_PROGRESS)], self._records)
        self._writer, self._path, self._records = None, None, 0
        self._file_index += 1


def read_request_log(directory: str) -> list[prediction_log_pb2.PredictionLog]:
    """Every record of the complete log files in `directory`, oldest file first."""
    files = sorted(tf.io.gfile.glob(os.path.join(directory, f"*{SUFFIX}")))
    return [prediction_log_pb2.PredictionLog.FromString(r)
            for f in files for r in tf.data.TFRecordDataset(f).as_numpy_iterator()]


def read_request_images(directory: str, input_name: str | None = None) -> list[bytes]:
    """The encoded images of the logged predict requests, in order: the input of a serving-skew check.

    Args:
        directory: a request log folder (radflow serve's or TF Serving's).
        input_name: the request input holding the images; None takes each request's string inputs.

    Returns:
        One bytes object per image (a request carrying N images contributes N); empty when the
        log was written without include_images.
    """
    images = []
    for entry in read_request_log(directory):
        for name, tensor in entry.predict_log.request.inputs.items():
            if tensor.dtype == types_pb2.DT_STRING and input_name in (None, name):
                images.extend(tf.make_ndarray(tensor).reshape(-1).tolist())
    return images
