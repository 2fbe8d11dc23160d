"""TF Serving's REST API: paths, JSON request formats and error bodies, over a ModelManager.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    {"instances": [...]} or {"inputs": ...}
    GET  <MonitoringConfig path>  Prometheus metrics (with --monitoring_config_file)
    GET  /readyz   200 once every model has an AVAILABLE version, else 503 (TF Serving has no such endpoint)
    GET  /healthz  200 while the process serves

Binary values travel as {"b64": "..."}; string outputs whose name ends in "_bytes" come back the
same way. Errors are {"error": "..."} with TF Serving's HTTP status for the gRPC code, for every
method and path: TF Serving answers other methods on /v1/ with 400 "Malformed request". A
predict response names the version that answered in an `X-Model-Version` header (TF Serving's
JSON has no place for it).

The HTTP layer is aiohttp: one event loop reads requests (headers, bodies, chunked or not), so a
slow or stalled client holds a coroutine and its buffer, never a worker thread; the model runs in
a bounded pool of `num_threads` threads (--rest_api_num_threads). A connection that sends no
complete request within `timeout` seconds is closed, and a body not received within it gets 408;
a request that does not finish within it gets 504 (--rest_api_timeout_in_ms). The listen backlog
is `backlog`, keep-alive is on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from aiohttp import web
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from radflow.serving.errors import ServingError, invalid
from radflow.serving.flags import VERSION_HEADER
from radflow.serving.grpc_service import SIGNATURE_DEF_FIELD, model_metadata, observed, run_predict
from radflow.serving.limits import RequestGate, check_rows
from radflow.serving.manager import ModelManager
from radflow.serving.metrics import CONTENT_TYPE, ServingMetrics
from radflow.serving.request_log import RequestLogger

log = logging.getLogger(__name__)

_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
PREDICT_PATH = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(_SPEC + r"(/metadata)?", re.IGNORECASE)
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)  # TF Serving's kHTTPRestApiHandlerPathRegex
INT64_MAX = 2**63 - 1
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
                "Access-Control-Allow-Headers": "Content-Type"}  # TF Serving's AddCORSHeaders


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


def parse_predict_body(body: dict, inputs_info, gate: RequestGate | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """A :predict body -> input arrays, and whether it was the row ("instances") format.

    Args:
        body: the parsed JSON.
        inputs_info: the signature's inputs.
        gate: when given, the batch is checked against its limits before any array is built.

    Raises:
        ServingError: INVALID_ARGUMENT for a body in neither or both formats, a batch out of
            bounds, or unfit values.
    """
    keys = list(inputs_info)
    if ("instances" in body) == ("inputs" in body):
        raise invalid('JSON body must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid('"instances" must be a non-empty list')
        if gate is not None:
            check_rows("instances", len(instances), gate.limits)
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
    if gate is not None:
        for k, v in inputs.items():
            if isinstance(v, list) and inputs_info[k].tensor_shape.dim:
                check_rows(k, len(v), gate.limits)
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


@dataclass(frozen=True)
class RestOptions:
    """The HTTP layer's settings; TF Serving's defaults where it has the flag."""

    num_threads: int = 8  # --rest_api_num_threads: requests run by the model at once
    timeout_seconds: float = 30.0  # --rest_api_timeout_in_ms: reading a request, and answering it
    max_body_bytes: int = 64 * 2**20  # larger bodies get 413
    backlog: int = 1024  # listen backlog: connections the kernel queues before the server accepts them
    cors: bool = False  # --rest_api_enable_cors_support
    metrics_path: str | None = None  # serve Prometheus text here (MonitoringConfig), None: no metrics
    shutdown_grace_seconds: float = 10.0  # requests in flight get this long on close


def _spec(match: re.Match) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=match.group(1))
    if match.group(2):
        version = int(match.group(2))
        if version > INT64_MAX:  # TF Serving's SimpleAtoi into int64
            raise invalid(f"Failed to convert version: {match.group(2)} to numeric.")
        spec.version.value = version
    elif match.group(3):
        spec.version_label = match.group(3)
    return spec


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] | None = None


def _json_reply(status: int, body: dict, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(body).encode(), headers=headers)


def _error_reply(err: Exception) -> _Reply:
    error = ServingError.from_exception(err)
    if error.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        log.error("REST request failed: %s", error.message, exc_info=err)
    return _json_reply(error.http_status, {"error": error.message})


class RestServer:
    """TF Serving's REST API on aiohttp, in a thread of its own.

    Args:
        address: (host, port); port 0 lets the OS pick one (read `port` after `start`).
        manager: the models.
        gate: the request limits shared with gRPC.
        options: threads, timeouts, limits, CORS, the metrics path.
        request_log: samples predict requests, or None.
        metrics: request metrics (also served at `options.metrics_path`), or None.
        ssl_context: serve HTTPS with this context, or None.
    """

    def __init__(self, address: tuple[str, int], manager: ModelManager, gate: RequestGate, options: RestOptions,
                 request_log: RequestLogger | None = None, metrics: ServingMetrics | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self._address, self.manager, self.gate, self.options = address, manager, gate, options
        self.request_log, self.metrics, self._ssl = request_log, metrics, ssl_context
        self._executor = ThreadPoolExecutor(options.num_threads, thread_name_prefix="rest")
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def start(self) -> None:
        """Binds and starts serving in the background.

        Raises:
            OSError: the port cannot be bound.
        """
        started: dict[str, Any] = {}
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._setup())
            except Exception as err:  # handed to start(), which raises it in the caller's thread
                started["error"] = err
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="rest", daemon=True)
        self._thread.start()
        ready.wait()
        if "error" in started:
            raise started["error"]

    async def _setup(self) -> None:
        o = self.options
        app = web.Application(client_max_size=o.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=o.timeout_seconds,
                                     shutdown_timeout=o.shutdown_grace_seconds)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._address[0], self._address[1], backlog=o.backlog,
                           ssl_context=self._ssl, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stops accepting, lets requests in flight finish (up to the grace period), ends the thread."""
        if self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(
                self.options.shutdown_grace_seconds + 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._executor.shutdown(wait=True)
        self._loop.close()
        self._thread = None

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            raw = await asyncio.wait_for(request.read(), self.options.timeout_seconds)
        except TimeoutError:
            reply = _json_reply(408, {"error": f"request body not received within {self.options.timeout_seconds:g} s"})
            return self._response(reply, close=True)
        except web.HTTPRequestEntityTooLarge:
            reply = _json_reply(413, {"error": f"request body is over the limit of {self.options.max_body_bytes} "
                                      "bytes"})
            return self._response(reply, close=True)
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self._dispatch, request.method, request.path,
                                    request.headers.get("Origin", ""), raw)
        try:
            reply = await asyncio.wait_for(asyncio.shield(work), self.options.timeout_seconds)
        except TimeoutError:
            reply = _json_reply(504, {"error": f"request not answered within {self.options.timeout_seconds:g} s "
                                      "(--rest_api_timeout_in_ms)"})
        return self._response(reply)

    def _response(self, reply: _Reply, close: bool = False) -> web.Response:
        headers = dict(reply.headers or {})
        if self.options.cors:
            headers.update(CORS_HEADERS)
        if close:
            headers["Connection"] = "close"
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type.split(";")[0],
                            charset="utf-8" if "charset" in reply.content_type else None, headers=headers)

    # -- handlers, run in the worker pool ---------------------------------------------------------

    def _dispatch(self, method: str, path: str, origin: str, raw: bytes) -> _Reply:
        try:
            if method == "GET" and self.options.metrics_path and path == self.options.metrics_path:
                return _Reply(200, self.metrics.exposition(), CONTENT_TYPE)
            if method == "GET" and path == "/healthz":
                return _json_reply(200, {"status": "SERVING"})
            if method == "GET" and path == "/readyz":
                ready = self.manager.ready()
                return _json_reply(200 if ready else 503, {"ready": ready, "models": {
                    name: self.manager.model_ready(name) for name in self.manager.model_names}})
            if method == "OPTIONS":  # CORS preflight, as TF Serving answers it
                if re.match(r"https?://", origin):
                    return _json_reply(200, {})
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, "Origin header is missing in CORS preflight")
            if method == "POST" and (match := PREDICT_PATH.fullmatch(path)):
                return self._post(match, raw)
            if method == "GET" and (match := STATUS_PATH.fullmatch(path)):
                return self._get(match)
            if API_PATH.fullmatch(path):
                raise invalid(f"Malformed request: {method} {path}")
            return _json_reply(404, {"error": f"no such path: {method} {path}"})
        except Exception as err:  # every failure becomes an {"error": ...} body
            return _error_reply(err)

    def _get(self, match: re.Match) -> _Reply:
        spec = _spec(match)
        if match.group(4):
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
            request.model_spec.CopyFrom(spec)
            response = model_metadata(self.manager, request)
            defs = get_model_metadata_pb2.SignatureDefMap()
            response.metadata[SIGNATURE_DEF_FIELD].Unpack(defs)
            return _json_reply(200, {
                "model_spec": json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True,
                                                        including_default_value_fields=True),
                # Defaults printed, as TF Serving prints them ("unknown_rank": false, empty maps).
                "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(
                    defs, preserving_proto_field_name=True, including_default_value_fields=True)},
            })
        return _json_reply(200, json_format.MessageToDict(self.manager.status(spec), preserving_proto_field_name=True,
                                                          including_default_value_fields=True))

    def _post(self, match: re.Match, raw: bytes) -> _Reply:
        method = match.group(4).lower()
        model = match.group(1)
        reply = None
        try:
            with observed(self.metrics, model, method, "REST") as seen:
                seen.request_bytes = len(raw)
                if method != "predict":
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                       f":{method} is not served over REST by radflow serve; use gRPC")
                spec = _spec(match)
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise invalid(f"JSON Parse error: {err}") from err
                except RecursionError as err:
                    raise invalid("JSON Parse error: the document is nested too deeply") from err
                if not isinstance(body, dict):
                    raise invalid("JSON body must be an object")
                row_format = []

                def make_inputs(sig):
                    try:
                        inputs, rows = parse_predict_body(body, sig.inputs, self.gate)
                    except RecursionError as err:
                        raise invalid("values are nested deeper than any signature input") from err
                    row_format.append(rows)
                    return inputs

                answer = run_predict(self.manager, self.gate, spec, body.get("signature_name", ""), make_inputs,
                                     metrics=self.metrics)
                reply = _json_reply(200, outputs_to_json(answer.outputs, row_format[0]),
                                    {VERSION_HEADER: str(answer.version)})
                seen.response_bytes = len(reply.body)
        except Exception as err:  # every failure becomes an {"error": ...} body
            return _error_reply(err)
        if self.request_log:
            self.request_log.log_predict(answer.model, answer.version, answer.signature, answer.inputs, answer.outputs)
        return reply
