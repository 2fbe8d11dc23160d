"""What one request may cost: rows, declared sizes, image admission, and decode memory in flight.

Every check here runs before TensorFlow builds a tensor or decodes an image:

- A TensorProto may declare a shape larger than the values it carries; TensorFlow (and numpy's
  `make_ndarray`) then repeat the last value to fill it, so a 112-byte request declaring [4000]
  with one PNG becomes 4,000 decodes. String tensors must carry one value per element, and no
  tensor may expand beyond the message limit.
- A batch above `max_batch_size` rows, or an empty one, is refused with INVALID_ARGUMENT, the code
  TF Serving answers a batch it cannot take.
- Image inputs (the string inputs of predict signatures) pass `radflow.admission`: header-only
  size limits and the constant-image check ingest and the schema apply; DICOM bytes are refused
  with a message saying the client converts them.
- Admitted images reserve an estimate of their decode memory from one budget shared by all
  requests; a request waits for room (or is refused with RESOURCE_EXHAUSTED), so concurrent large
  images cannot together exhaust memory. After a large decode, freed heap pages are handed back to
  the OS (glibc keeps them otherwise: a 2.7 GiB decode left RSS at 4.9 GB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from radflow import dicom
from radflow.admission import AdmissionRules, Refused, admit
from radflow.serving.errors import ServingError, invalid
from radflow.serving.flags import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

PREDICT_METHOD = "tensorflow/serving/predict"
# Peak bytes per pixel of decoding and preprocessing one image in the export's graph (uint8 decode,
# float32 conversion, resize): 2.7 GiB was measured for a 20,000 x 20,000 gray PNG, ~7 per pixel.
DECODE_BYTES_PER_PIXEL = 8
TRIM_AFTER_BYTES = 64 * 2**20  # return freed heap to the OS after a request that decoded this much

# Refusal reasons (the `reason` label of :radflow:serving:refused_request_count).
BATCH_TOO_LARGE = "batch_too_large"
EMPTY_BATCH = "empty_batch"
SHAPE_MISMATCH = "declared_shape_mismatch"
TENSOR_TOO_LARGE = "tensor_too_large"
DICOM_BYTES = "dicom_bytes"
DECODE_BUDGET = "decode_memory_budget"


@dataclass(frozen=True)
class RequestLimits:
    """Limits on one request.

    Raises:
        ValueError: a field out of range, named.
    """

    max_batch_size: int = 128  # rows (images) per request; --max_request_batch_size
    max_tensor_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # what a request's tensors may expand to
    admission: AdmissionRules = field(default_factory=AdmissionRules)  # image rules shared with ingest
    decode_budget_bytes: int = 2 * 2**30  # estimated decode memory of all requests in flight
    decode_wait_seconds: float = 30.0  # how long a request waits for decode memory before RESOURCE_EXHAUSTED

    def __post_init__(self):
        for name in ("max_batch_size", "max_tensor_bytes", "decode_budget_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"request limits: {name} must be positive, got {getattr(self, name)}")
        if self.decode_wait_seconds < 0:
            raise ValueError(f"request limits: decode_wait_seconds must be >= 0, got {self.decode_wait_seconds}")


def check_rows(key: str, rows: int, limits: RequestLimits) -> None:
    """Refuses an empty batch or one above the limit.

    Raises:
        ServingError: INVALID_ARGUMENT, with reason EMPTY_BATCH or BATCH_TOO_LARGE.
    """
    if rows == 0:
        raise invalid(f"input '{key}' is an empty batch (no rows): send at least one value", EMPTY_BATCH)
    if rows > limits.max_batch_size:
        raise invalid(f"input '{key}' has a batch of {rows} rows, larger than this server's maximum of "
                      f"{limits.max_batch_size} (--max_request_batch_size): split the request", BATCH_TOO_LARGE)


def check_tensor_proto(key: str, proto: tensor_pb2.TensorProto, limits: RequestLimits) -> None:
    """Checks a request TensorProto's declared shape against what it carries, before it is expanded.

    Raises:
        ServingError: INVALID_ARGUMENT for a negative dimension, a batch out of bounds, a string
            tensor with fewer or more values than its shape, or a tensor over the size limit.
    """
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid(f"input '{key}' declares a negative dimension: {dims}")
    elements = math.prod(dims)
    if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) != elements:
        raise invalid(f"input '{key}' declares shape {dims} ({elements} values) but carries "
                      f"{len(proto.string_val)}: send one value per element", SHAPE_MISMATCH)
    if dims:
        check_rows(key, dims[0], limits)
    if proto.dtype == types_pb2.DT_STRING:
        return
    try:
        itemsize = tf.as_dtype(proto.dtype).size
    except TypeError as err:
        raise invalid(f"input '{key}' has an unknown dtype {proto.dtype}") from err
    if elements * itemsize > limits.max_tensor_bytes:
        raise invalid(f"input '{key}' declares shape {dims}, {elements * itemsize} bytes, over the limit of "
                      f"{limits.max_tensor_bytes}", TENSOR_TOO_LARGE)
    if proto.tensor_content and len(proto.tensor_content) != elements * itemsize:
        raise invalid(f"input '{key}' declares shape {dims} ({elements * itemsize} bytes) but carries "
                      f"{len(proto.tensor_content)} bytes", SHAPE_MISMATCH)


def image_inputs(sig: meta_graph_pb2.SignatureDef) -> list[str]:
    """The inputs taken as encoded images: the string inputs of a predict signature (a classify
    signature's strings are serialized tf.Examples)."""
    if sig.method_name != PREDICT_METHOD:
        return []
    return [k for k, info in sig.inputs.items() if info.dtype == types_pb2.DT_STRING]


def admit_images(sig: meta_graph_pb2.SignatureDef, inputs: dict[str, np.ndarray], limits: RequestLimits) -> int:
    """Applies the admission rules to every image a request carries.

    Returns:
        The estimated decode memory of the admitted images, in bytes.

    Raises:
        ServingError: INVALID_ARGUMENT naming the input, the value and the rule it breaks.
    """
    total = 0
    for key in image_inputs(sig):
        for i, value in enumerate(np.asarray(inputs[key]).reshape(-1)):
            data = value if isinstance(value, bytes) else str(value).encode()
            if dicom.is_dicom(data):
                raise invalid(f"input '{key}' value {i} is a DICOM file; the model takes JPEG or PNG bytes. Convert "
                              "it on the client first, as `radflow predict` does (radflow.dicom.to_png)", DICOM_BYTES)
            try:
                header = admit(data, limits.admission)
            except Refused as err:
                raise invalid(f"input '{key}' value {i}: {err.message}", err.reason) from err
            if header is not None:
                total += header.pixels * DECODE_BYTES_PER_PIXEL
    return total


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)


class DecodeBudget:
    """Bounds the estimated decode memory of all requests in flight.

    Args:
        limit_bytes: the budget.
        wait_seconds: how long a request waits for room.
    """

    def __init__(self, limit_bytes: int, wait_seconds: float):
        self._limit, self._wait = limit_bytes, wait_seconds
        self._used = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Holds `nbytes` of the budget while the request runs.

        Raises:
            ServingError: RESOURCE_EXHAUSTED when the request alone is over the budget, or no room
                frees up within the wait.
        """
        if nbytes > self._limit:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the request's images would take ~{nbytes} bytes to decode, over this server's "
                               f"budget of {self._limit} (--max_decode_bytes_in_flight): send fewer or smaller "
                               "images per request", DECODE_BUDGET)
        with self._cond:
            if not self._cond.wait_for(lambda: self._used + nbytes <= self._limit, timeout=self._wait):
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"no decode memory free for {self._wait:.0f} s (other requests hold "
                                   f"{self._used} of {self._limit} bytes): retry later", DECODE_BUDGET)
            self._used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()
            if nbytes >= TRIM_AFTER_BYTES and (trim := _malloc_trim()) is not None:
                trim(0)


class RequestGate:
    """The limits of one server, applied the same way to gRPC and REST requests.

    Args:
        limits: the limits.
    """

    def __init__(self, limits: RequestLimits):
        self.limits = limits
        self._budget = DecodeBudget(limits.decode_budget_bytes, limits.decode_wait_seconds)

    def check_protos(self, protos) -> None:
        """Checks a request's TensorProtos (its inputs map) before any is expanded."""
        for key, proto in protos.items():
            check_tensor_proto(key, proto, self.limits)

    @contextmanager
    def admitted(self, sig: meta_graph_pb2.SignatureDef, inputs: dict[str, np.ndarray]) -> Iterator[None]:
        """Admits the request's images and holds their decode memory while it runs.

        Raises:
            ServingError: INVALID_ARGUMENT for a refused image, RESOURCE_EXHAUSTED for no memory.
        """
        for key, arr in inputs.items():
            if key in sig.inputs and arr.ndim and sig.inputs[key].tensor_shape.dim:
                check_rows(key, arr.shape[0], self.limits)
        with self._budget.reserve(admit_images(sig, inputs, self.limits)):
            yield
