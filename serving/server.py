"""`radflow serve`: a TF-Serving-compatible model server for local use.

Speaks TF Serving's gRPC (PredictionService, ModelService, grpc.health.v1) and REST protocols
with the messages of tensorflow-serving-api, so clients written for tensorflow_model_server work
unchanged; the flags mirror tensorflow_model_server's.

    radflow serve --model_name radflow --model_base_path models/radflow
    radflow serve --model_config_file models.config --enable_batching --batching_parameters_file batching.config
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from concurrent import futures

import grpc
import tensorflow as tf
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from radflow.serving.config import (
    BatchingOptions,
    RequestLogConfig,
    ServerConfig,
    read_batching_parameters_file,
    read_model_config_file,
    single_model_config,
)
from radflow.serving.grpc_service import ModelService, PredictionService
from radflow.serving.manager import ModelManager
from radflow.serving.request_log import RequestLogger
from radflow.serving.rest import RestServer

log = logging.getLogger(__name__)


class ModelServer:
    """The model manager behind a gRPC and a REST endpoint.

    Args:
        config: ports, limits, batching, TLS, request log.
        models: one ModelConfig per model to serve.
    """

    def __init__(self, config: ServerConfig, models: list[model_server_config_pb2.ModelConfig]):
        self.config = config
        _configure_tensorflow_threads(config)
        self._health = health.HealthServicer()
        self._manager = ModelManager(models, config.file_system_poll_wait_seconds,
                                     config.batching if config.enable_batching else None, self._update_health)
        self._request_log = RequestLogger(config.request_log) if config.request_log else None
        self._grpc: grpc.Server | None = None
        self._rest: RestServer | None = None
        self._rest_thread: threading.Thread | None = None
        self._stopped = threading.Event()
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
                   ("grpc.so_reuseport", 0)]
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=c.max_threads, thread_name_prefix="grpc"),
                                 options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self._manager, self._request_log), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self._manager), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        self._update_health()
        address = f"{c.host}:{c.port}"
        if c.ssl_cert_file:
            with open(c.ssl_key_file, "rb") as k, open(c.ssl_cert_file, "rb") as crt:
                creds = grpc.ssl_server_credentials([(k.read(), crt.read())])
            self.grpc_port = self._grpc.add_secure_port(address, creds)
        else:
            self.grpc_port = self._grpc.add_insecure_port(address)
        if not self.grpc_port:
            raise RuntimeError(f"cannot bind gRPC to {address}")
        self._grpc.start()
        if c.rest_api_port is not None:
            self._rest = RestServer((c.host, c.rest_api_port), self._manager, c.max_message_bytes, self._request_log)
            if c.ssl_cert_file:
                import ssl

                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(c.ssl_cert_file, c.ssl_key_file)
                self._rest.socket = context.wrap_socket(self._rest.socket, server_side=True)
            self.rest_port = self._rest.server_address[1]
            self._rest_thread = threading.Thread(target=self._rest.serve_forever, name="rest", daemon=True)
            self._rest_thread.start()
        scheme = "TLS" if c.ssl_cert_file else "plaintext"
        log.info("serving gRPC on %s:%d and REST on %s (%s)", c.host, self.grpc_port,
                 f"{c.host}:{self.rest_port}" if self.rest_port else "nothing", scheme)
        self._manager.start()

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


def config_from_args(args: argparse.Namespace) -> tuple[ServerConfig, list[model_server_config_pb2.ModelConfig]]:
    """The server config and model configs that the flags describe.

    Raises:
        ValueError: models named both ways or neither, half a TLS pair, or an unreadable config file.
    """
    if bool(args.model_config_file) == bool(args.model_base_path):
        raise ValueError("give either --model_config_file, or --model_name with --model_base_path")
    if args.model_config_file:
        models = read_model_config_file(args.model_config_file)
    else:
        models = [single_model_config(args.model_name or "default", args.model_base_path)]
    if bool(args.ssl_cert_file) != bool(args.ssl_key_file):
        raise ValueError("--ssl_cert_file and --ssl_key_file go together")
    batching = (read_batching_parameters_file(args.batching_parameters_file) if args.batching_parameters_file
                else BatchingOptions())
    request_log = (RequestLogConfig(args.request_log_dir, args.request_log_sampling_rate,
                                    args.request_log_include_images) if args.request_log_dir else None)
    config = ServerConfig(
        host=args.host, port=args.port, rest_api_port=args.rest_api_port or None,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_batching=args.enable_batching or bool(args.batching_parameters_file), batching=batching,
        max_message_bytes=args.max_message_bytes, ssl_cert_file=args.ssl_cert_file, ssl_key_file=args.ssl_key_file,
        intra_op_threads=args.tensorflow_intra_op_parallelism, inter_op_threads=args.tensorflow_inter_op_parallelism,
        request_log=request_log)
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
