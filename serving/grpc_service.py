"""TF Serving's gRPC services (PredictionService, ModelService) over a ModelManager.

The servicers subclass the generated bases from tensorflow-serving-api, so the wire protocol is
TF Serving's own; methods not implemented here (Regress, MultiInference,
HandleReloadConfigRequest) answer UNIMPLEMENTED, as the bases do. Every request passes the
server's RequestGate before TensorFlow sees it, and is counted in the metrics as TF Serving
counts it (by model and status; latency of successful requests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from radflow.serving.errors import ServingError, invalid
from radflow.serving.limits import RequestGate
from radflow.serving.manager import ModelManager
from radflow.serving.metrics import ServingMetrics
from radflow.serving.request_log import RequestLogger
from radflow.serving.servable import check_inputs, fill_outputs, tensors_from_protos

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"  # the one metadata field TF Serving offers


@dataclass
class Observation:
    """What the metrics record of one request; the handler fills in the sizes."""

    request_bytes: int = 0
    response_bytes: int = 0


@contextmanager
def observed(metrics: ServingMetrics | None, model: str, api: str, entrypoint: str) -> Iterator[Observation]:
    """Counts the request in `metrics` by the status it ends with (OK, or its ServingError's code)."""
    seen, start, status, reason = Observation(), time.perf_counter(), "OK", ""
    try:
        yield seen
    except Exception as err:  # counted by status, then re-raised to the handler
        error = ServingError.from_exception(err)
        status, reason = error.code.name, error.reason
        raise
    finally:
        if metrics is not None:
            metrics.record_request(model, api, entrypoint, status, time.perf_counter() - start,
                                   seen.request_bytes, seen.response_bytes, reason)


@dataclass(frozen=True)
class Answer:
    """A predict request's result, with the version that produced it."""

    model: str
    version: int
    signature: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def run_predict(manager: ModelManager, gate: RequestGate, spec: model_pb2.ModelSpec, signature_name: str,
                make_inputs: Callable[[meta_graph_pb2.SignatureDef], dict[str, np.ndarray]],
                output_filter: list[str] | tuple = (), metrics: ServingMetrics | None = None) -> Answer:
    """Predict, shared by gRPC and REST: resolve the version, build and admit the inputs, run.

    Args:
        manager: the models.
        gate: the server's request limits.
        spec: which model and version.
        signature_name: the signature ("" for serving_default).
        make_inputs: builds the input arrays once the signature is known.
        output_filter: the outputs to return (all when empty).
        metrics: counts decisions and scores, or None.

    Raises:
        ServingError: the status the client gets.
    """
    with manager.servable(spec) as servable:
        name, sig = servable.signature(signature_name)
        inputs = make_inputs(sig)
        check_inputs(name, sig, inputs)
        with gate.admitted(sig, inputs):
            signature, outputs = servable.predict(name, inputs, output_filter)
    if metrics is not None:
        metrics.record_outputs(servable.name, servable.version, outputs)
    return Answer(servable.name, servable.version, signature, inputs, outputs)


def _abort(context: grpc.ServicerContext, err: Exception):
    error = ServingError.from_exception(err)
    if error.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        log.error("request failed: %s", error.message, exc_info=err)
    context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify and GetModelMetadata.

    Args:
        manager: the models.
        gate: the request limits.
        request_log: samples predict requests, or None.
        metrics: request and prediction metrics, or None.
    """

    def __init__(self, manager: ModelManager, gate: RequestGate, request_log: RequestLogger | None = None,
                 metrics: ServingMetrics | None = None):
        self._manager = manager
        self._gate = gate
        self._request_log = request_log
        self._metrics = metrics

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        try:
            with observed(self._metrics, request.model_spec.name, "Predict", "GRPC") as seen:
                seen.request_bytes = request.ByteSize()
                self._gate.check_protos(request.inputs)
                answer = run_predict(self._manager, self._gate, request.model_spec, request.model_spec.signature_name,
                                     lambda _: tensors_from_protos(request.inputs), list(request.output_filter),
                                     self._metrics)
                response = predict_pb2.PredictResponse()
                response.model_spec.name = answer.model
                response.model_spec.version.value = answer.version
                response.model_spec.signature_name = answer.signature
                fill_outputs(response, answer.outputs)
                seen.response_bytes = response.ByteSize()
            if self._request_log:
                self._request_log.log_predict(answer.model, answer.version, answer.signature, answer.inputs,
                                              answer.outputs)
            return response
        except Exception as err:  # every failure becomes the status the client sees
            _abort(context, err)

    def Classify(self, request: classification_pb2.ClassificationRequest, context
                 ) -> classification_pb2.ClassificationResponse:
        try:
            with observed(self._metrics, request.model_spec.name, "Classify", "GRPC") as seen:
                seen.request_bytes = request.ByteSize()
                which = request.input.WhichOneof("kind")
                if which != "example_list":
                    raise invalid(f"Classify takes an example_list input, got {which or 'none'}")
                examples = [e.SerializeToString() for e in request.input.example_list.examples]
                if not examples:
                    raise invalid("Input is empty")
                if len(examples) > self._gate.limits.max_batch_size:
                    raise invalid(f"{len(examples)} examples are more than this server's maximum batch of "
                                  f"{self._gate.limits.max_batch_size} (--max_request_batch_size)", "batch_too_large")
                with self._manager.servable(request.model_spec) as servable:
                    signature, _ = servable.signature(request.model_spec.signature_name)
                    result = servable.classify(signature, examples)
                response = classification_pb2.ClassificationResponse(result=result)
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = signature
                seen.response_bytes = response.ByteSize()
            return response
        except Exception as err:  # every failure becomes the status the client sees
            _abort(context, err)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context
                         ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        try:
            return model_metadata(self._manager, request)
        except Exception as err:  # every failure becomes the status the client sees
            _abort(context, err)


def model_metadata(manager: ModelManager, request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata, shared by gRPC and REST.

    Raises:
        ServingError: INVALID_ARGUMENT without metadata fields or for one other than signature_def;
            NOT_FOUND for an unknown model or version.
    """
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for name in request.metadata_field:
        if name != SIGNATURE_DEF_FIELD:
            raise invalid(f"Metadata field {name} is not supported")
    with manager.servable(request.model_spec) as servable:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            defs.signature_def[key].CopyFrom(sig)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(defs)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus."""

    def __init__(self, manager: ModelManager):
        self._manager = manager

    def GetModelStatus(self, request, context):
        try:
            return self._manager.status(request.model_spec)
        except Exception as err:  # every failure becomes the status the client sees
            _abort(context, err)
