"""One loaded version of a model: its signatures, request validation, execution and warmup.

Everything is driven by the SavedModel's own SignatureDefs (read from saved_model.pb, as TF
Serving reads them), never by names known in advance, so any signature a model exports (encoded
bytes, decoded pixels, a classify signature) is served, described and validated the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

from radflow.serving.batching import Batcher, Tensors
from radflow.serving.config import BatchingOptions
from radflow.serving.errors import ServingError, invalid

log = logging.getLogger(__name__)

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")  # TF Serving's warmup location
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# What the loader reads from a version directory; assets.extra (warmup), lineage and anything
# else stay where they are.
LOADED_PARTS = SAVED_MODEL_FILES + ("fingerprint.pb", "variables", "assets")
ASSETS_DIR = "assets"
MEMORY_ROOT = "ram://radflow-serving"  # TensorFlow's in-memory file system


def _copy_tree(src: str, dst: str) -> None:
    tf.io.gfile.makedirs(dst)
    for name in tf.io.gfile.listdir(src):
        name = name.rstrip("/")
        source, target = os.path.join(src, name), os.path.join(dst, name)
        if tf.io.gfile.isdir(source):
            _copy_tree(source, target)
        else:
            tf.io.gfile.copy(source, target, overwrite=True)


def _remove(path: str) -> None:
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def read_signature_defs(path: str, tags: tuple[str, ...] = (SERVE_TAG,)) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the meta graph tagged exactly `tags` of the SavedModel at `path`.

    Raises:
        ServingError: NOT_FOUND without a saved_model.pb(txt); DATA_LOSS if it does not parse;
            FAILED_PRECONDITION without a meta graph of those tags.
    """
    saved = saved_model_pb2.SavedModel()
    pb, pbtxt = (os.path.join(path, name) for name in SAVED_MODEL_FILES)
    try:
        if tf.io.gfile.exists(pb):
            saved.ParseFromString(tf.io.gfile.GFile(pb, "rb").read())
        elif tf.io.gfile.exists(pbtxt):
            text_format.Parse(tf.io.gfile.GFile(pbtxt, "r").read(), saved)
        else:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"no saved_model.pb in {path}")
    except (message.DecodeError, text_format.ParseError) as err:
        raise ServingError(grpc.StatusCode.DATA_LOSS, f"unreadable SavedModel in {path}: {err}") from err
    for meta_graph in saved.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return dict(meta_graph.signature_def)
    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f"no meta graph tagged {sorted(tags)} in {path}")


def _dtype_name(dtype: int) -> str:
    return tf.as_dtype(dtype).name if dtype != types_pb2.DT_INVALID else "invalid"


def _batchable(sig: meta_graph_pb2.SignatureDef) -> bool:
    """True when every input and output has a free leading (batch) dimension."""
    infos = list(sig.inputs.values()) + list(sig.outputs.values())
    return bool(infos) and all(not i.tensor_shape.unknown_rank and i.tensor_shape.dim
                               and i.tensor_shape.dim[0].size == -1 for i in infos)


def check_inputs(name: str, sig: meta_graph_pb2.SignatureDef, inputs: Tensors) -> None:
    """Refuses inputs whose names, dtypes or shapes do not fit the signature.

    Raises:
        ServingError: INVALID_ARGUMENT naming the offending input.
    """
    missing, extra = set(sig.inputs) - set(inputs), set(inputs) - set(sig.inputs)
    if missing or extra:
        raise invalid(f"input size does not match signature '{name}': sent {sorted(inputs)}; "
                      f"extra {sorted(extra)}; missing but required {sorted(missing)}")
    for key, info in sig.inputs.items():
        arr = inputs[key]
        if info.dtype == types_pb2.DT_STRING:
            ok = arr.dtype.kind in "OSU"
        else:
            ok = arr.dtype == tf.as_dtype(info.dtype).as_numpy_dtype
        if not ok:
            got = "string" if arr.dtype.kind in "OSU" else tf.as_dtype(arr.dtype).name
            raise invalid(f"input '{key}' of signature '{name}' expects {_dtype_name(info.dtype)} but {got} was "
                          "provided")
        shape = info.tensor_shape
        if shape.unknown_rank:
            continue
        want = [d.size for d in shape.dim]
        if len(want) != arr.ndim or any(w not in (-1, g) for w, g in zip(want, arr.shape, strict=True)):
            shown = ["?" if w == -1 else w for w in want]
            raise invalid(f"input '{key}' of signature '{name}' expects shape {shown} but got {list(arr.shape)}")


class Servable:
    """A SavedModel version, ready to answer predict and classify requests.

    The version is loaded from a copy in TensorFlow's in-memory file system, and only its assets
    are kept there afterwards: a graph that reads an asset per request (the export reads
    assets/threshold.txt in every call) then reads memory, not the version directory, which under
    gs:// would be one object-store read per request. Storage is read once per loaded version.

    Args:
        name: the model name.
        version: the version number (its directory name).
        path: the version directory.
        batching: batch concurrent calls to batchable signatures with these options; None: no batching.
        tags: the meta graph to load (--saved_model_tags).
    """

    def __init__(self, name: str, version: int, path: str, batching: BatchingOptions | None = None,
                 tags: tuple[str, ...] = (SERVE_TAG,)):
        self.name, self.version, self.path = name, version, path
        self.signature_defs = read_signature_defs(path, tags)
        self._memory = f"{MEMORY_ROOT}/{uuid.uuid4().hex}/{version}"
        try:
            for part in LOADED_PARTS:
                if tf.io.gfile.exists(os.path.join(path, part)):
                    source, target = os.path.join(path, part), os.path.join(self._memory, part)
                    _copy_tree(source, target) if tf.io.gfile.isdir(source) else tf.io.gfile.copy(source, target)
            self._functions = tf.saved_model.load(self._memory, tags=list(tags)).signatures
        finally:
            for part in LOADED_PARTS:
                if part != ASSETS_DIR:
                    _remove(os.path.join(self._memory, part))
        self._batching = batching
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()

    def signature(self, name: str) -> tuple[str, meta_graph_pb2.SignatureDef]:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signature_defs or name not in self._functions:
            raise invalid(f'Serving signature name: "{name}" not found in signature def')
        return name, self.signature_defs[name]

    def predict(self, signature_name: str, inputs: Tensors, output_filter: list[str] | tuple = ()
                ) -> tuple[str, Tensors]:
        """Runs a signature on validated inputs.

        Returns:
            The resolved signature name and the outputs (all, or those in `output_filter`).

        Raises:
            ServingError: INVALID_ARGUMENT for unfit inputs, an unknown signature or output, or an
                op that refuses its data (e.g. bytes that are not an image).
        """
        name, sig = self.signature(signature_name)
        check_inputs(name, sig, inputs)
        unknown = set(output_filter) - set(sig.outputs)
        if unknown:
            raise invalid(f"output tensor alias not found in signature '{name}': {sorted(unknown)}")
        batcher = self._batcher(name, sig)
        outputs = batcher.run(inputs) if batcher else self._execute(name, sig, inputs)
        return name, {k: v for k, v in outputs.items() if not output_filter or k in output_filter}

    def classify(self, signature_name: str, examples: list[bytes]) -> classification_pb2.ClassificationResult:
        """Runs a classify signature on serialized tf.Examples.

        Raises:
            ServingError: INVALID_ARGUMENT when the signature is not a classify signature.
        """
        name, sig = self.signature(signature_name)
        if sig.method_name != CLASSIFY_METHOD:
            raise invalid(f"Expected classification signature method_name to be {CLASSIFY_METHOD}. "
                          f"Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise invalid(f"classify signature '{name}' must have one input, has {sorted(sig.inputs)}")
        key = next(iter(sig.inputs))
        _, out = self.predict(name, {key: np.array(examples, dtype=object)})
        classes, scores = out.get("classes"), out.get("scores")
        result = classification_pb2.ClassificationResult()
        for i in range(len(examples)):
            row = result.classifications.add()
            k = (classes if classes is not None else scores).shape[1]
            for j in range(k):
                label = classes[i][j].decode() if classes is not None else ""
                row.classes.add(label=label, score=float(scores[i][j]) if scores is not None else 0.0)
        return result

    def warmup(self, iterations: int = 1) -> int:
        """Replays assets.extra/tf_serving_warmup_requests, as TF Serving does before AVAILABLE.

        Args:
            iterations: times each record is replayed (--num_request_iterations_for_warmup).

        Returns:
            The number of requests replayed (0 without a warmup file).

        Raises:
            ServingError: a warmup request fails or is of a kind this server does not replay.
        """
        path = os.path.join(self.path, WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        n = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            entry = prediction_log_pb2.PredictionLog.FromString(record)
            kind = entry.WhichOneof("log_type")
            for _ in range(max(1, iterations)):
                if kind == "predict_log":
                    request = entry.predict_log.request
                    self.predict(request.model_spec.signature_name, tensors_from_protos(request.inputs),
                                 list(request.output_filter))
                elif kind == "classify_log":
                    request = entry.classify_log.request
                    self.classify(request.model_spec.signature_name,
                                  [e.SerializeToString() for e in request.input.example_list.examples])
                else:
                    raise invalid(f"warmup request {n} is a {kind}, which radflow serve does not replay")
                n += 1
        return n

    def close(self) -> None:
        """Drains and stops the batch threads and drops the in-memory assets; the model is freed
        with the last reference."""
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for b in batchers:
            b.close()
        _remove(self._memory)

    def _batcher(self, name: str, sig: meta_graph_pb2.SignatureDef) -> Batcher | None:
        if self._batching is None or not _batchable(sig):
            return None
        with self._lock:
            if name not in self._batchers:
                self._batchers[name] = Batcher(lambda inputs: self._execute(name, sig, inputs), self._batching,
                                               f"{self.name}-{self.version}-{name}")
            return self._batchers[name]

    def _execute(self, name: str, sig: meta_graph_pb2.SignatureDef, inputs: Tensors) -> Tensors:
        args = {k: tf.constant(v, dtype=tf.as_dtype(sig.inputs[k].dtype)) for k, v in inputs.items()}
        try:
            outputs = self._functions[name](**args)
        except tf.errors.OpError as err:
            raise ServingError.from_exception(err) from err
        return {k: v.numpy() for k, v in outputs.items()}


def tensors_from_protos(protos) -> Tensors:
    """TensorProtos (a request's inputs map) -> numpy arrays.

    Raises:
        ServingError: INVALID_ARGUMENT for a malformed TensorProto.
    """
    try:
        return {k: tf.make_ndarray(v) for k, v in protos.items()}
    except Exception as err:  # make_ndarray raises several types on malformed content
        raise invalid(f"malformed input tensor: {err}") from err


def fill_outputs(response: predict_pb2.PredictResponse, outputs: Tensors) -> None:
    """Writes output arrays into a PredictResponse's outputs map."""
    for k, v in outputs.items():
        response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
