"""`radflow serve`: a TF-Serving-compatible model server for local use.

Speaks TF Serving's gRPC (PredictionService, ModelService, grpc.health.v1) and REST protocols
with the messages of tensorflow-serving-api, so clients written for tensorflow_model_server work
unchanged; the flags mirror tensorflow_model_server's.

    radflow serve --model_name radflow --model_base_path models/radflow
    radflow serve --model_config_file models.config --model_config_file_poll_wait_seconds=60 \\
        --enable_batching --batching_parameters_file batching.config --monitoring_config_file monitoring.config
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import tempfile
import threading
import time
from concurrent import futures

import grpc
import tensorflow as tf
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from radflow import fileio
from radflow.admission import AdmissionRules
from radflow.serving.config import (
    BatchingOptions,
    RequestLogConfig,
    ServerConfig,
    TlsConfig,
    parse_model_config,
    read_batching_parameters_file,
    read_model_config_file,
    read_monitoring_config_file,
    read_ssl_config_file,
    single_model_config,
)
from radflow.serving.flags import ignored_flags
from radflow.serving.grpc_service import ModelService, PredictionService
from radflow.serving.limits import RequestGate, RequestLimits
from radflow.serving.manager import ManagerOptions, ModelManager
from radflow.serving.metrics import ServingMetrics
from radflow.serving.request_log import RequestLogger
from radflow.serving.rest import RestOptions, RestServer

log = logging.getLogger(__name__)

GRPC_QUEUE_FACTOR = 4  # concurrent RPCs admitted per gRPC worker thread (running or waiting for a worker)


class ModelServer:
    """The model manager behind a gRPC and a REST endpoint.

    Args:
        config: ports, limits, batching, TLS, request log, metrics.
        models: one ModelConfig per model to serve.
    """

    def __init__(self, config: ServerConfig, models: list[model_server_config_pb2.ModelConfig]):
        self.config = config
        _configure_tensorflow_threads(config)
        self._health = health.HealthServicer()
        self.metrics = ServingMetrics()
        self._gate = RequestGate(config.limits)
        options = ManagerOptions(
            poll_seconds=config.file_system_poll_wait_seconds,
            batching=config.batching if config.enable_batching else None, per_model_batching=config.per_model_batching,
            max_num_load_retries=config.max_num_load_retries,
            load_retry_interval_seconds=config.load_retry_interval_seconds, saved_model_tags=config.saved_model_tags,
            enable_model_warmup=config.enable_model_warmup, warmup_iterations=config.warmup_iterations,
            allow_version_labels_for_unavailable_models=config.allow_version_labels_for_unavailable_models)
        self._manager = ModelManager(models, options, self._update_health, self.metrics)
        self._request_log = RequestLogger(config.request_log) if config.request_log else None
        self._grpc: grpc.Server | None = None
        self._rest: RestServer | None = None
        self._stopped = threading.Event()
        self._config_thread: threading.Thread | None = None
        self.grpc_port: int | None = None
        self.rest_port: int | None = None

    @property
    def manager(self) -> ModelManager:
        return self._manager

    def _update_health(self) -> None:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._manager.model_names:
            self._health.set(name, serving if self._manager.model_ready(name) else not_serving)
        self._health.set("", serving if self._manager.ready() else not_serving)

    def start(self) -> None:
        """Opens both ports, then loads models in the background; readiness turns true as they become AVAILABLE.

        Raises:
            RuntimeError: a port cannot be bound.
        """
        c = self.config
        options = [("grpc.max_receive_message_length", c.max_message_bytes),
                   ("grpc.max_send_message_length", c.max_message_bytes),
                   ("grpc.so_reuseport", 0), *c.grpc_channel_arguments]
        # grpc_max_threads workers; as many again x3 RPCs may wait for one, further ones are refused with
        # RESOURCE_EXHAUSTED rather than queued (each holding its message) without bound.
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=c.grpc_max_threads, thread_name_prefix="grpc"),
                                 options=options, maximum_concurrent_rpcs=GRPC_QUEUE_FACTOR * c.grpc_max_threads)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self._manager, self._gate, self._request_log, self.metrics), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self._manager), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        self._update_health()
        tls = _tls(c)
        credentials = (grpc.ssl_server_credentials([(tls.server_key, tls.server_cert)], tls.custom_ca,
                                                   require_client_auth=tls.client_verify) if tls else None)
        addresses = ([f"{c.host}:{c.port}"] if c.port is not None else []) + (
            [f"unix:{c.grpc_socket_path}"] if c.grpc_socket_path else [])
        for address in addresses:
            port = (self._grpc.add_secure_port(address, credentials) if credentials
                    else self._grpc.add_insecure_port(address))
            if not port and not address.startswith("unix:"):
                raise RuntimeError(f"cannot bind gRPC to {address}")
            if not address.startswith("unix:"):
                self.grpc_port = port
        self._grpc.start()
        if c.rest_api_port is not None:
            rest = RestOptions(num_threads=c.rest_api_num_threads, timeout_seconds=c.rest_api_timeout_seconds,
                               max_body_bytes=c.max_message_bytes, cors=c.rest_api_cors, metrics_path=c.metrics_path,
                               shutdown_grace_seconds=c.shutdown_grace_seconds)
            self._rest = RestServer((c.host, c.rest_api_port), self._manager, self._gate, rest, self._request_log,
                                    self.metrics, _ssl_context(tls) if tls else None)
            self._rest.start()
            self.rest_port = self._rest.port
        log.info("serving gRPC on %s and REST on %s (%s)%s", " and ".join(addresses) or "nothing",
                 f"{c.host}:{self.rest_port}" if self.rest_port else "nothing",
                 ("TLS, client certificates required" if tls.client_verify else "TLS") if tls else "plaintext",
                 f"; Prometheus metrics at {c.metrics_path}" if c.metrics_path and self.rest_port else "")
        self._manager.start()
        if c.model_config_file and c.model_config_poll_seconds > 0:
            self._config_thread = threading.Thread(target=self._poll_model_config, name="model-config", daemon=True)
            self._config_thread.start()

    def _poll_model_config(self) -> None:
        """Re-reads the model config file and applies it when it changed; a bad file keeps the config in force."""
        c = self.config
        last = fileio.read_text(c.model_config_file)
        while not self._stopped.wait(c.model_config_poll_seconds):
            try:
                text = fileio.read_text(c.model_config_file)
                if text == last:
                    continue
                self._manager.reload(parse_model_config(text))
                log.info("model config %s reloaded", c.model_config_file)
                last = text
            except Exception as err:  # a half-written or wrong file must not end polling
                log.error("model config %s not applied, the previous one stays: %s", c.model_config_file, err)

    def wait_until_ready(self, timeout: float) -> bool:
        """Waits until every model has an AVAILABLE version; returns whether that happened in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._manager.ready():
                return True
            time.sleep(0.05)
        return self._manager.ready()

    def stop(self) -> None:
        """Graceful shutdown: refuse new work, let requests in flight finish, unload, publish the request log."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("shutting down: finishing requests in flight (up to %.0f s)", self.config.shutdown_grace_seconds)
        self._health.enter_graceful_shutdown()
        if self._config_thread:
            self._config_thread.join()
        if self._rest:
            self._rest.close()
        if self._grpc:
            self._grpc.stop(self.config.shutdown_grace_seconds).wait()
        self._manager.stop()
        if self._request_log:
            self._request_log.close()
        log.info("stopped")

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _tls(config: ServerConfig) -> TlsConfig | None:
    """The TLS material: --ssl_config_file's SSLConfig, or the PEM files of --ssl_cert_file/--ssl_key_file."""
    if config.tls:
        return config.tls
    if config.ssl_cert_file:
        return TlsConfig(fileio.read_bytes(config.ssl_key_file), fileio.read_bytes(config.ssl_cert_file))
    return None


def _ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The REST port's TLS context. Python loads a key only from a file: it is written to a private
    temporary folder and removed as soon as it is loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="radflow-tls-") as folder:
        key, cert = os.path.join(folder, "key.pem"), os.path.join(folder, "cert.pem")
        for path, data in ((key, tls.server_key), (cert, tls.server_cert)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(data)
        context.load_cert_chain(cert, key)
    if tls.custom_ca:
        context.load_verify_locations(cadata=tls.custom_ca.decode())
    if tls.client_verify:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _configure_tensorflow_threads(config: ServerConfig) -> None:
    """Sizes TensorFlow's thread pools before any model loads; a process whose TensorFlow already
    runs (a test, a notebook) keeps its pools, with a warning."""
    wanted = {"intra-op": config.intra_op_threads, "inter-op": config.inter_op_threads}
    try:
        if config.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(config.intra_op_threads)
        if config.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(config.inter_op_threads)
    except RuntimeError:
        log.warning("TensorFlow is already running in this process: its thread pools stay as they are, "
                    "not %s", wanted)
    log.info("TensorFlow threads: intra-op %s, inter-op %s (0: as many as TensorFlow chooses)",
             tf.config.threading.get_intra_op_parallelism_threads(),
             tf.config.threading.get_inter_op_parallelism_threads())


def _channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """--grpc_channel_arguments: key=value pairs, comma-separated; values that parse as int are ints,
    as TF Serving passes them.

    Raises:
        ValueError: a pair without "=".
    """
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            pairs.append((key, int(value)))
        except ValueError:
            pairs.append((key, value))
    return tuple(pairs)


def config_from_args(args: argparse.Namespace) -> tuple[ServerConfig, list[model_server_config_pb2.ModelConfig]]:
    """The server config and model configs that the flags describe.

    Raises:
        ValueError: no model named, half a TLS pair, both kinds of TLS, ALTS, a bad value, or an
            unreadable config file; the message names the flag.
    """
    for name, reason in ignored_flags(args).items():
        log.warning("--%s=%s has no effect on radflow serve: %s", name, getattr(args, name), reason)
    if args.use_alts_credentials:
        raise ValueError("--use_alts_credentials: ALTS is not available in radflow serve; use --ssl_config_file")
    if args.model_config_file:
        if args.model_base_path:
            log.warning("--model_base_path is ignored: --model_config_file names the models")
        models = read_model_config_file(args.model_config_file)
    elif args.model_base_path:
        models = [single_model_config(args.model_name, args.model_base_path)]
    else:
        raise ValueError("give --model_config_file, or --model_base_path (with --model_name)")
    if bool(args.ssl_cert_file) != bool(args.ssl_key_file):
        raise ValueError("--ssl_cert_file and --ssl_key_file go together")
    if args.ssl_config_file and args.ssl_cert_file:
        raise ValueError("give --ssl_config_file or --ssl_cert_file/--ssl_key_file, not both")
    if not args.port and not args.grpc_socket_path:
        raise ValueError("--port 0 disables gRPC over TCP: give --grpc_socket_path then")
    for name in ("rest_api_num_threads", "grpc_max_threads", "rest_api_timeout_in_ms"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    tags = tuple(t.strip() for t in args.saved_model_tags.split(",") if t.strip())
    if not tags:
        raise ValueError("--saved_model_tags names no tag")
    batching = (read_batching_parameters_file(args.batching_parameters_file) if args.batching_parameters_file
                else BatchingOptions())
    request_log = (RequestLogConfig(args.request_log_dir, args.request_log_sampling_rate,
                                    args.request_log_include_images) if args.request_log_dir else None)
    metrics_path = read_monitoring_config_file(args.monitoring_config_file) if args.monitoring_config_file else None
    session = args.tensorflow_session_parallelism  # TF Serving: both pools, unless either is set on its own
    intra, inter = args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism
    if not intra and not inter:
        intra = inter = session
    try:
        limits = RequestLimits(max_batch_size=args.max_request_batch_size,
                               max_tensor_bytes=args.max_message_bytes,
                               admission=AdmissionRules(args.image_min_side, args.image_max_pixels, args.image_min_std),
                               decode_budget_bytes=args.max_decode_bytes_in_flight)
    except ValueError as err:
        raise ValueError(f"--max_request_batch_size/--max_decode_bytes_in_flight/--image_*: {err}") from err
    config = ServerConfig(
        host=args.host, port=args.port or None, grpc_socket_path=args.grpc_socket_path or None,
        rest_api_port=args.rest_api_port or None,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        model_config_file=args.model_config_file or None,
        model_config_poll_seconds=args.model_config_file_poll_wait_seconds,
        enable_batching=args.enable_batching or bool(args.batching_parameters_file), batching=batching,
        per_model_batching=args.enable_per_model_batching_parameters,
        max_message_bytes=args.max_message_bytes, grpc_max_threads=args.grpc_max_threads,
        grpc_channel_arguments=_channel_arguments(args.grpc_channel_arguments),
        rest_api_num_threads=args.rest_api_num_threads, rest_api_timeout_seconds=args.rest_api_timeout_in_ms / 1000,
        rest_api_cors=args.rest_api_enable_cors_support,
        ssl_cert_file=args.ssl_cert_file, ssl_key_file=args.ssl_key_file,
        tls=read_ssl_config_file(args.ssl_config_file) if args.ssl_config_file else None,
        intra_op_threads=intra, inter_op_threads=inter, request_log=request_log,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_seconds=args.load_retry_interval_micros / 1e6, saved_model_tags=tags,
        enable_model_warmup=args.enable_model_warmup, warmup_iterations=args.num_request_iterations_for_warmup,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        metrics_path=metrics_path, limits=limits)
    return config, models


def serve(config: ServerConfig, models: list[model_server_config_pb2.ModelConfig]) -> None:
    """Runs the server until SIGTERM or SIGINT, then shuts down gracefully."""
    server = ModelServer(config, models)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    try:
        done.wait()
    finally:
        server.stop()
