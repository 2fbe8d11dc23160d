"""TF Serving's REST API: paths, JSON request formats and error bodies, over a ModelManager.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    {"instances": [...]} or {"inputs": ...}
    GET  /readyz   200 once every model has an AVAILABLE version, else 503 (TF Serving has no such endpoint)
    GET  /healthz  200 while the process serves

Binary values travel as {"b64": "..."}; string outputs whose name ends in "_bytes" come back the
same way. Errors are {"error": "..."} with TF Serving's HTTP status for the gRPC code.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from radflow.serving.errors import ServingError, invalid
from radflow.serving.grpc_service import SIGNATURE_DEF_FIELD, model_metadata
from radflow.serving.manager import ModelManager
from radflow.serving.request_log import RequestLogger

log = logging.getLogger(__name__)

_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
PREDICT_PATH = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(_SPEC + r"(/metadata)?", re.IGNORECASE)


# -- JSON <-> tensors -------------------------------------------------------------------------------


def _decode_strings(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise invalid(f"a string value must be a JSON string or {{\"b64\": ...}}, got keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError) as err:
            raise invalid(f"Unable to base64 decode: {err}") from err
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    raise invalid(f"expected a string value, got {json.dumps(value)[:40]}")


def _shape(value: Any) -> list[int]:
    """The shape of a nested list, refusing ragged ones."""
    if not isinstance(value, list):
        return []
    shapes = [_shape(v) for v in value]
    if any(s != shapes[0] for s in shapes[1:]):
        raise invalid("nested lists must be rectangular: all instances and rows must have the same shape")
    return [len(value)] + (shapes[0] if shapes else [])


def _leaves(value: Any) -> list:
    return [leaf for v in value for leaf in _leaves(v)] if isinstance(value, list) else [value]


def json_to_array(value: Any, dtype: int, name: str) -> np.ndarray:
    """A JSON value (nested lists, {"b64"} for bytes) as an array of the signature input's dtype.

    Raises:
        ServingError: INVALID_ARGUMENT when the value is ragged or does not convert.
    """
    shape = _shape(value)
    if dtype == types_pb2.DT_STRING:
        arr = np.empty(len(_leaves(value)), dtype=object)
        arr[:] = _leaves(_decode_strings(value))
        return arr.reshape(shape)
    bad = [v for v in _leaves(value) if isinstance(v, str | dict | list) or v is None]
    if bad:
        raise invalid(f"input '{name}' expects {tf.as_dtype(dtype).name} numbers, got {json.dumps(bad[0])[:40]}")
    try:
        return np.asarray(value, dtype=tf.as_dtype(dtype).as_numpy_dtype)
    except (ValueError, TypeError, OverflowError) as err:
        raise invalid(f"input '{name}': cannot convert to {tf.as_dtype(dtype).name}: {err}") from err


def _named(value: Any) -> bool:
    """Whether a JSON object maps input names to values (rather than being one {"b64"} value)."""
    return isinstance(value, dict) and set(value) != {"b64"}


def parse_predict_body(body: dict, inputs_info) -> tuple[dict[str, np.ndarray], bool]:
    """A :predict body -> input arrays, and whether it was the row ("instances") format.

    Raises:
        ServingError: INVALID_ARGUMENT for a body in neither or both formats, or unfit values.
    """
    keys = list(inputs_info)
    if ("instances" in body) == ("inputs" in body):
        raise invalid('JSON body must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid('"instances" must be a non-empty list')
        named = [_named(i) for i in instances]
        if any(named) and not all(named):
            raise invalid("instances must all be objects of named inputs, or all bare values")
        if not named[0]:
            if len(keys) != 1:
                raise invalid(f"the signature has inputs {keys}: each instance must be an object naming them")
            columns = {keys[0]: instances}
        else:
            columns = {}
            for k in keys:
                if any(k not in i for i in instances):
                    raise invalid(f"instances are missing input '{k}'")
                columns[k] = [i[k] for i in instances]
            extra = {k for i in instances for k in i} - set(keys)
            if extra:
                raise invalid(f"instances name inputs not in the signature: {sorted(extra)}")
        return {k: json_to_array(v, inputs_info[k].dtype, k) for k, v in columns.items()}, True
    inputs = body["inputs"]
    if not _named(inputs):
        if len(keys) != 1:
            raise invalid(f"the signature has inputs {keys}: \"inputs\" must be an object naming them")
        inputs = {keys[0]: inputs}
    unknown = set(inputs) - set(keys)
    if unknown:
        raise invalid(f"inputs not in the signature: {sorted(unknown)}")
    return {k: json_to_array(v, inputs_info[k].dtype, k) for k, v in inputs.items()}, False


def _to_json(arr: np.ndarray, name: str) -> Any:
    if arr.dtype.kind in "OS":
        as_b64 = name.endswith("_bytes")
        flat = [{"b64": base64.b64encode(b).decode()} if as_b64 else b.decode("utf-8", "replace")
                for b in arr.reshape(-1)]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim else flat[0]
    return arr.tolist()


def outputs_to_json(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """Outputs -> {"predictions": [...]} (row) or {"outputs": ...} (columnar), as TF Serving writes them.

    Raises:
        ServingError: INVALID_ARGUMENT when the row format is asked but outputs disagree on batch size.
    """
    if not row_format:
        if len(outputs) == 1:
            (name, arr), = outputs.items()
            return {"outputs": _to_json(arr, name)}
        return {"outputs": {k: _to_json(v, k) for k, v in outputs.items()}}
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    n = next(iter(sizes.values()))
    for k, size in sizes.items():
        if size is None or size != n:
            raise invalid(f"Tensor name: {k} has inconsistent batch size: {size} expecting: {n}")
    if len(outputs) == 1:
        (name, arr), = outputs.items()
        return {"predictions": [_to_json(arr[i], name) for i in range(n)]}
    return {"predictions": [{k: _to_json(v[i], k) for k, v in outputs.items()} for i in range(n)]}


# -- HTTP -------------------------------------------------------------------------------------------


class RestServer(ThreadingHTTPServer):
    """The HTTP server. `close` lets requests in flight finish: idle keep-alive connections are
    shut for reading, so their threads end, and request threads are joined."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], manager: ModelManager, max_body_bytes: int,
                 request_log: RequestLogger | None = None):
        super().__init__(address, _Handler)
        self.manager = manager
        self.max_body_bytes = max_body_bytes
        self.request_log = request_log
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close(self) -> None:
        """Stops accepting, ends idle connections, and waits for requests in flight."""
        self.shutdown()
        with self.connections_lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RD)
                except OSError:
                    pass  # already closed by the client
        self.server_close()


def _spec(match: re.Match) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=match.group(1))
    if match.group(2):
        spec.version.value = int(match.group(2))
    elif match.group(3):
        spec.version_label = match.group(3)
    return spec


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's HTTP server
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, delayed ACKs add ~40 ms
    server: RestServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, err: Exception) -> None:
        error = ServingError.from_exception(err)
        if error.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            log.error("REST request failed: %s", error.message, exc_info=err)
        self._reply(error.http_status, {"error": error.message})

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        manager = self.server.manager
        try:
            if path == "/healthz":
                self._reply(200, {"status": "SERVING"})
            elif path == "/readyz":
                ready = manager.ready()
                self._reply(200 if ready else 503, {"ready": ready, "models": {
                    name: manager.model_ready(name) for name in manager.model_names}})
            elif match := STATUS_PATH.fullmatch(path):
                spec = _spec(match)
                if match.group(4):
                    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
                    request.model_spec.CopyFrom(spec)
                    response = model_metadata(manager, request)
                    defs = get_model_metadata_pb2.SignatureDefMap()
                    response.metadata[SIGNATURE_DEF_FIELD].Unpack(defs)
                    self._reply(200, {
                        "model_spec": json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True,
                                                                including_default_value_fields=True),
                        # Defaults printed, as TF Serving prints them ("unknown_rank": false, empty maps).
                        "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(
                            defs, preserving_proto_field_name=True, including_default_value_fields=True)},
                    })
                else:
                    self._reply(200, json_format.MessageToDict(manager.status(spec), preserving_proto_field_name=True,
                                                               including_default_value_fields=True))
            else:
                raise invalid(f"Malformed request: GET {path}")
        except Exception as err:  # every failure becomes an {"error": ...} body
            self._fail(err)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > self.server.max_body_bytes:
            self.close_connection = True  # the body is not read; the connection cannot be reused
            self._reply(413, {"error": f"request body of {length} bytes is over the limit of "
                              f"{self.server.max_body_bytes} bytes"})
            return
        raw = self.rfile.read(length)
        try:
            match = PREDICT_PATH.fullmatch(path)
            if not match:
                raise invalid(f"Malformed request: POST {path}")
            if match.group(4).lower() != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f":{match.group(4)} is not served over REST by radflow serve; use gRPC")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise invalid(f"JSON Parse error: {err}") from err
            if not isinstance(body, dict):
                raise invalid("JSON body must be an object")
            spec = _spec(match)
            with self.server.manager.servable(spec) as servable:
                signature, sig = servable.signature(body.get("signature_name", ""))
                inputs, row_format = parse_predict_body(body, sig.inputs)
                _, outputs = servable.predict(signature, inputs)
            reply = outputs_to_json(outputs, row_format)
            if self.server.request_log:
                self.server.request_log.log_predict(servable.name, servable.version, signature, inputs, outputs)
            self._reply(200, reply)
        except Exception as err:  # every failure becomes an {"error": ...} body
            self._fail(err)
