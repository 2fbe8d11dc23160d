"""TF Serving's gRPC services (PredictionService, ModelService) over a ModelManager.

The servicers subclass the generated bases from tensorflow-serving-api, so the wire protocol is
TF Serving's own; methods not implemented here (Regress, MultiInference,
HandleReloadConfigRequest) answer UNIMPLEMENTED, as the bases do.
"""

from __future__ import annotations

import logging

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from radflow.serving.errors import ServingError, invalid
from radflow.serving.manager import ModelManager
from radflow.serving.request_log import RequestLogger
from radflow.serving.servable import fill_outputs, tensors_from_protos

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"  # the one metadata field TF Serving offers


def _abort(context: grpc.ServicerContext, err: Exception):
    error = ServingError.from_exception(err)
    if error.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        log.error("request failed: %s", error.message, exc_info=err)
    context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify and GetModelMetadata.

    Args:
        manager: the models.
        request_log: samples predict requests, or None.
    """

    def __init__(self, manager: ModelManager, request_log: RequestLogger | None = None):
        self._manager = manager
        self._request_log = request_log

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        try:
            with self._manager.servable(request.model_spec) as servable:
                inputs = tensors_from_protos(request.inputs)
                signature, outputs = servable.predict(request.model_spec.signature_name, inputs,
                                                      list(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature
            fill_outputs(response, outputs)
            if self._request_log:
                self._request_log.log_predict(servable.name, servable.version, signature, inputs, outputs)
            return response
        except Exception as err:  # every failure becomes the status the client sees
            _abort(context, err)

    def Classify(self, request: classification_pb2.ClassificationRequest, context
                 ) -> classification_pb2.ClassificationResponse:
        try:
            which = request.input.WhichOneof("kind")
            if which != "example_list":
                raise invalid(f"Classify takes an example_list input, got {which or 'none'}")
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
            if not examples:
                raise invalid("Input is empty")
            with self._manager.servable(request.model_spec) as servable:
                signature, _ = servable.signature(request.model_spec.signature_name)
                result = servable.classify(signature, examples)
            response = classification_pb2.ClassificationResponse(result=result)
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature
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
