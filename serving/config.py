"""Options of `radflow serve`, and the text-proto files tensorflow_model_server reads.

`--model_config_file` is parsed with TF Serving's own ModelServerConfig message, so one file works
for both servers. `--batching_parameters_file` (BatchingParameters), `--ssl_config_file`
(SSLConfig) and `--monitoring_config_file` (MonitoringConfig) are TF Serving messages the
tensorflow-serving-api wheel does not ship; their descriptors are rebuilt here from
session_bundle_config.proto, ssl_config.proto and monitoring_config.proto, field for field, so the
same text parses the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from radflow import fileio
from radflow.serving.flags import DEFAULT_MAX_MESSAGE_BYTES, default_threads
from radflow.serving.limits import RequestLimits
from radflow.serving.metrics import DEFAULT_PATH


@dataclass(frozen=True)
class BatchingOptions:
    """Server-side batching; the defaults are TF Serving's SharedBatchScheduler defaults."""

    max_batch_size: int = 1000  # most rows one signature call receives
    batch_timeout_micros: int = 0  # how long the first queued request waits for others to join it
    max_enqueued_batches: int = 10  # queue bound, in batches; beyond it requests get UNAVAILABLE
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # batches run in parallel
    allowed_batch_sizes: tuple[int, ...] = ()  # if set, batches are padded up to the next of these sizes


@dataclass(frozen=True)
class RequestLogConfig:
    """A sampled log of predict requests, as TF Serving's PredictionLog records, for drift analysis."""

    directory: str  # local or gs:// folder for requests-*.tfrecord files
    sampling_rate: float = 0.01  # fraction of requests logged
    include_images: bool = False  # store the request's input tensors (the images); off keeps only outputs
    max_records_per_file: int = 1000  # a file is closed and published after this many records


@dataclass(frozen=True)
class TlsConfig:
    """TF Serving's SSLConfig: PEM contents (not paths) of the server's key and certificate, a CA
    to verify clients with, and whether clients must present a certificate it signed."""

    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None = None
    client_verify: bool = False


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback by default: a local model server should not be open to the network
    port: int = 8500  # gRPC port, as tensorflow_model_server; 0 lets the OS pick one
    grpc_socket_path: str | None = None  # also serve gRPC on this UNIX socket (--grpc_socket_path)
    rest_api_port: int | None = 8501  # REST port; None disables REST (the CLI's --rest_api_port 0)
    file_system_poll_wait_seconds: float = 1.0  # how often each base path is scanned (0: once; < 0: never)
    model_config_file: str | None = None  # re-read every model_config_poll_seconds when both are set
    model_config_poll_seconds: float = 0.0  # --model_config_file_poll_wait_seconds; 0: read once
    enable_batching: bool = False  # batch concurrent requests into one signature call
    batching: BatchingOptions = BatchingOptions()  # used when enable_batching
    per_model_batching: bool = False  # a version's own batching_params.pbtxt overrides `batching`
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # gRPC message and REST body limit
    grpc_max_threads: int = field(default_factory=default_threads)  # concurrent RPCs; more get RESOURCE_EXHAUSTED
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()  # extra gRPC server options
    rest_api_num_threads: int = field(default_factory=default_threads)  # REST requests run at once
    rest_api_timeout_seconds: float = 30.0  # reading and answering one REST request
    rest_api_cors: bool = False  # CORS headers on REST responses (--rest_api_enable_cors_support)
    # TensorFlow's thread pools, as tensorflow_model_server's --tensorflow_{intra,inter}_op_parallelism;
    # 0 lets TensorFlow size them to the cores. Only the first TensorFlow user of a process can set them.
    intra_op_threads: int = 0  # threads one op may use; 1 is fastest for one-image requests on a CPU
    inter_op_threads: int = 0  # ops that run at once, across concurrent requests
    ssl_cert_file: str | None = None  # PEM certificate chain; with ssl_key_file, gRPC and REST use TLS
    ssl_key_file: str | None = None  # PEM private key
    tls: TlsConfig | None = None  # --ssl_config_file's SSLConfig (instead of the two files)
    request_log: RequestLogConfig | None = None  # None: nothing about requests is stored
    shutdown_grace_seconds: float = 10.0  # in-flight requests get this long to finish on shutdown
    max_num_load_retries: int = 5  # retries of a failed load (TF Serving's default)
    load_retry_interval_seconds: float = 60.0  # between retries (TF Serving's default: 1 minute)
    saved_model_tags: tuple[str, ...] = ("serve",)  # the meta graph to load
    enable_model_warmup: bool = True  # replay assets.extra/tf_serving_warmup_requests before AVAILABLE
    warmup_iterations: int = 1  # times each warmup record is replayed
    allow_version_labels_for_unavailable_models: bool = False  # TF Serving's flag of that name
    metrics_path: str | None = None  # serve Prometheus metrics at this REST path (MonitoringConfig)
    limits: RequestLimits = field(default_factory=RequestLimits)  # batch, admission, decode memory


_POOL = descriptor_pool.DescriptorPool()
_f = descriptor_pb2.FieldDescriptorProto


def _ssl_and_monitoring_classes():
    """SSLConfig and MonitoringConfig message classes, from descriptors matching TF Serving's protos."""
    proto = descriptor_pb2.FileDescriptorProto(name="radflow/ssl_and_monitoring_config.proto",
                                               package="tensorflow.serving", syntax="proto3")
    ssl = proto.message_type.add(name="SSLConfig")
    for number, name in enumerate(("server_key", "server_cert", "custom_ca"), start=1):
        ssl.field.add(name=name, number=number, label=_f.LABEL_OPTIONAL, type=_f.TYPE_STRING)
    ssl.field.add(name="client_verify", number=4, label=_f.LABEL_OPTIONAL, type=_f.TYPE_BOOL)
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=_f.LABEL_OPTIONAL, type=_f.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=_f.LABEL_OPTIONAL, type=_f.TYPE_STRING)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, label=_f.LABEL_OPTIONAL, type=_f.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig")
    _POOL.Add(proto)
    return tuple(message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"tensorflow.serving.{name}"))
                 for name in ("SSLConfig", "MonitoringConfig"))


def _batching_parameters_class():
    """The BatchingParameters message class, from a descriptor matching TF Serving's proto."""
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(
        name="radflow/session_bundle_config.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    msg = proto.message_type.add(name="BatchingParameters")
    f = _f
    for number, (name, wrapper) in enumerate([
        ("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
        ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
        ("thread_pool_name", "StringValue"),
    ], start=1):
        msg.field.add(name=name, number=number, label=f.LABEL_OPTIONAL, type=f.TYPE_MESSAGE,
                      type_name=f".google.protobuf.{wrapper}")
    msg.field.add(name="allowed_batch_sizes", number=6, label=f.LABEL_REPEATED, type=f.TYPE_INT64)
    msg.field.add(name="pad_variable_length_inputs", number=7, label=f.LABEL_OPTIONAL, type=f.TYPE_BOOL)
    msg.field.add(name="enable_large_batch_splitting", number=8, label=f.LABEL_OPTIONAL, type=f.TYPE_MESSAGE,
                  type_name=".google.protobuf.BoolValue")
    msg.field.add(name="max_execution_batch_size", number=9, label=f.LABEL_OPTIONAL, type=f.TYPE_MESSAGE,
                  type_name=".google.protobuf.Int64Value")
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()
SSLConfig, MonitoringConfig = _ssl_and_monitoring_classes()


def parse_ssl_config(text: str) -> TlsConfig:
    """Reads an SSLConfig text proto (--ssl_config_file).

    Raises:
        ValueError: it does not parse, or lacks server_key or server_cert.
    """
    try:
        config = text_format.Parse(text, SSLConfig())
    except text_format.ParseError as err:
        raise ValueError(f"ssl config: {err}") from err
    for name in ("server_key", "server_cert"):
        if not getattr(config, name).strip():
            raise ValueError(f"ssl config: {name} is empty (it holds the PEM text itself, not a path)")
    if config.client_verify and not config.custom_ca.strip():
        raise ValueError("ssl config: client_verify needs custom_ca, the CA that signs client certificates")
    return TlsConfig(config.server_key.encode(), config.server_cert.encode(),
                     config.custom_ca.encode() if config.custom_ca.strip() else None, config.client_verify)


def parse_monitoring_config(text: str) -> str | None:
    """Reads a MonitoringConfig text proto (--monitoring_config_file).

    Returns:
        The path to serve Prometheus metrics at (TF Serving's default path when unset), or None when
        prometheus_config is not enabled.

    Raises:
        ValueError: it does not parse, or the path does not start with "/".
    """
    try:
        config = text_format.Parse(text, MonitoringConfig())
    except text_format.ParseError as err:
        raise ValueError(f"monitoring config: {err}") from err
    if not config.prometheus_config.enable:
        return None
    path = config.prometheus_config.path or DEFAULT_PATH
    if not path.startswith("/"):
        raise ValueError(f"monitoring config: prometheus_config.path must start with '/', got {path!r}")
    return path


def parse_batching_parameters(text: str) -> BatchingOptions:
    """Reads a BatchingParameters text proto; unset fields keep TF Serving's defaults.

    Raises:
        ValueError: the text does not parse, or allowed_batch_sizes is not increasing and ending at
            max_batch_size (TF Serving's own rule).
    """
    try:
        params = text_format.Parse(text, BatchingParameters())
    except text_format.ParseError as err:
        raise ValueError(f"batching parameters: {err}") from err
    defaults = BatchingOptions()
    values = {name: getattr(params, name).value if params.HasField(name) else getattr(defaults, name)
              for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")}
    allowed = tuple(params.allowed_batch_sizes)
    if allowed and (list(allowed) != sorted(set(allowed)) or allowed[-1] != values["max_batch_size"]):
        raise ValueError(f"batching parameters: allowed_batch_sizes {list(allowed)} must increase and end at "
                         f"max_batch_size {values['max_batch_size']}")
    if min(values.values()) < 0 or values["max_batch_size"] < 1 or values["num_batch_threads"] < 1:
        raise ValueError(f"batching parameters: sizes and thread counts must be positive: {values}")
    return BatchingOptions(**values, allowed_batch_sizes=allowed)


def parse_model_config(text: str) -> list[model_server_config_pb2.ModelConfig]:
    """Reads a ModelServerConfig text proto (TF Serving's --model_config_file).

    Raises:
        ValueError: it does not parse, lists no model, repeats a name, or a model lacks a base_path.
    """
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as err:
        raise ValueError(f"model config: {err}") from err
    models = list(config.model_config_list.config)
    if not models:
        raise ValueError("model config: model_config_list lists no model")
    names = [m.name for m in models]
    for m in models:
        if not m.name or not m.base_path:
            raise ValueError(f"model config: every model needs a name and a base_path: {m}")
        if names.count(m.name) > 1:
            raise ValueError(f"model config: model {m.name!r} is listed twice")
        if m.model_platform not in ("", "tensorflow"):
            raise ValueError(f"model config: model {m.name!r} has platform {m.model_platform!r}; only tensorflow")
    return models


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelConfig:
    """The config --model_name/--model_base_path stand for: the latest version of one model."""
    return model_server_config_pb2.ModelConfig(name=name, base_path=base_path, model_platform="tensorflow")


def read_model_config_file(path: str) -> list[model_server_config_pb2.ModelConfig]:
    return parse_model_config(fileio.read_text(path))


def read_batching_parameters_file(path: str) -> BatchingOptions:
    return parse_batching_parameters(fileio.read_text(path))


def read_ssl_config_file(path: str) -> TlsConfig:
    return parse_ssl_config(fileio.read_text(path))


def read_monitoring_config_file(path: str) -> str | None:
    return parse_monitoring_config(fileio.read_text(path))
