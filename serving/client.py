"""A small client for radflow models behind TF Serving or `radflow serve`, over gRPC or REST.

Only TF Serving's standard messages and paths are used, so the same client talks to a real
tensorflow_model_server. The model's contract (train's export): one string input of encoded
images in, `scores`, `classes` and the operating `threshold` out; the decision for a binary model
is the positive (last) class when its score reaches the threshold.

    from radflow.serving.client import ServingClient
    client = ServingClient("localhost:8500", model="radflow")
    for p in client.predict_files(["xray.png", "study.dcm"]):
        print(p.path, p.decision, p.scores)
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from radflow import dicom
from radflow.components.train.train import CLASSES, SCORES, THRESHOLD
from radflow.serving.flags import DEFAULT_MAX_MESSAGE_BYTES, VERSION_HEADER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientPrediction:
    path: str
    label: str  # the highest-scoring class
    scores: dict[str, float]  # class name -> probability, in the model's class order
    threshold: float  # the model's operating threshold on the positive-class score
    decision: str  # binary: the positive class if its score >= threshold, else the other; otherwise `label`
    version: int | None  # the version that answered; over REST only radflow serve says (X-Model-Version)


def read_image(path: str) -> bytes:
    """An image file's bytes as the model takes them: JPEG/PNG as they are, DICOM converted to PNG
    by the same rules as ingest (radflow.dicom)."""
    data = tf.io.gfile.GFile(path, "rb").read()
    return dicom.to_png(data) if dicom.is_dicom(data) else data


def decide(classes: list[str], scores: list[float], threshold: float) -> str:
    """The decision at the operating threshold: binary models compare the positive (last) class's score."""
    if len(classes) == 2:
        return classes[1] if scores[1] >= threshold else classes[0]
    return classes[int(np.argmax(scores))]


class ServingClient:
    """Predicts through TF Serving's gRPC or REST API.

    Args:
        server: HOST:PORT of the gRPC port, or of the REST port with `rest=True`.
        model: the model name.
        version: ask for this version; None for the latest (or `label`).
        label: ask for the version carrying this label (e.g. "stable", "canary").
        rest: use REST instead of gRPC.
        signature: the signature to call.
        timeout: seconds per call.
        tls: speak TLS (https for REST).
        ca_cert: PEM file of the CA that signed the server's certificate; None trusts the system's CAs.
    """

    def __init__(self, server: str, model: str = "radflow", version: int | None = None, label: str | None = None,
                 rest: bool = False, signature: str = "serving_default", timeout: float = 30.0,
                 tls: bool = False, ca_cert: str | None = None):
        if version is not None and label:
            raise ValueError("ask for a version or a label, not both")
        self.server, self.model, self.version, self.label = server, model, version, label
        self.rest, self.signature, self.timeout = rest, signature, timeout
        self._input_name: str | None = None
        tls = tls or ca_cert is not None
        if rest:
            self._session = requests.Session()
            self._verify = ca_cert or True
            self._base = f"{'https' if tls else 'http'}://{server}"
        else:
            options = [("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
                       ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES)]
            if tls:
                roots = tf.io.gfile.GFile(ca_cert, "rb").read() if ca_cert else None
                self._channel = grpc.secure_channel(server, grpc.ssl_channel_credentials(roots), options)
            else:
                self._channel = grpc.insecure_channel(server, options)
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        if self.rest:
            self._session.close()
        else:
            self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _model_path(self) -> str:
        path = f"{self._base}/v1/models/{self.model}"
        if self.version is not None:
            return f"{path}/versions/{self.version}"
        return f"{path}/labels/{self.label}" if self.label else path

    def _spec(self, spec) -> None:
        spec.name = self.model
        spec.signature_name = self.signature
        if self.version is not None:
            spec.version.value = self.version
        elif self.label:
            spec.version_label = self.label

    def input_name(self) -> str:
        """The signature's string input, read from the model's metadata (not assumed).

        Raises:
            ValueError: the signature has no single string input.
        """
        if self._input_name is None:
            if self.rest:
                reply = self._session.get(f"{self._model_path()}/metadata", timeout=self.timeout, verify=self._verify)
                _raise_for_rest(reply)
                sig = reply.json()["metadata"]["signature_def"]["signature_def"][self.signature]
                names = [k for k, v in sig["inputs"].items() if v["dtype"] == "DT_STRING"]
            else:
                request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
                self._spec(request.model_spec)
                response = self._stub.GetModelMetadata(request, timeout=self.timeout)
                defs = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(defs)
                sig = defs.signature_def[self.signature]
                names = [k for k, v in sig.inputs.items() if v.dtype == types_pb2.DT_STRING]
            if len(names) != 1:
                raise ValueError(f"signature {self.signature!r} has string inputs {names}; expected one")
            self._input_name = names[0]
        return self._input_name

    def predict(self, images: list[bytes], paths: list[str] | None = None) -> list[ClientPrediction]:
        """Scores encoded images (JPEG/PNG) in one request.

        Raises:
            grpc.RpcError or requests.HTTPError: the server refused the request (the message is the server's).
        """
        paths = paths or [f"image[{i}]" for i in range(len(images))]
        if self.rest:
            body = {"signature_name": self.signature,
                    "instances": [{self.input_name(): {"b64": base64.b64encode(b).decode()}} for b in images]}
            reply = self._session.post(f"{self._model_path()}:predict", json=body, timeout=self.timeout,
                                       verify=self._verify)
            _raise_for_rest(reply)
            rows = [(r[SCORES], r[CLASSES], r[THRESHOLD]) for r in reply.json()["predictions"]]
            header = reply.headers.get(VERSION_HEADER, "")
            version = int(header) if header.isdigit() else None  # TF Serving's JSON does not name it
        else:
            request = predict_pb2.PredictRequest()
            self._spec(request.model_spec)
            request.inputs[self.input_name()].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
            response = self._stub.Predict(request, timeout=self.timeout)
            scores, classes, thresholds = (tf.make_ndarray(response.outputs[k]) for k in (SCORES, CLASSES, THRESHOLD))
            rows = [(s.tolist(), [c.decode() for c in cs], float(t))
                    for s, cs, t in zip(scores, classes, thresholds, strict=True)]
            version = response.model_spec.version.value
        predictions = []
        for path, (scores, classes, threshold) in zip(paths, rows, strict=True):
            named = dict(zip(classes, (float(s) for s in scores), strict=True))
            predictions.append(ClientPrediction(path, max(named, key=named.get), named, float(threshold),
                                                decide(classes, list(named.values()), float(threshold)), version))
        return predictions

    def predict_files(self, paths: list[str]) -> list[ClientPrediction]:
        """Reads JPEG, PNG or DICOM files and scores them in one request."""
        return self.predict([read_image(p) for p in paths], paths)


def _raise_for_rest(reply: requests.Response) -> None:
    if reply.status_code != 200:
        try:
            message = reply.json().get("error", reply.text)
        except ValueError:
            message = reply.text
        raise requests.HTTPError(f"{reply.status_code}: {message}", response=reply)
