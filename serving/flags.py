"""The flags of `radflow serve`: every flag of tensorflow_model_server 2.16, and radflow's own.

Each of tensorflow_model_server's 46 flags (model_servers/main.cc, defaults from server.h) is
accepted with its name, type and default, so a Deployment's args start either server. The ones
that mean something here are honoured; those that configure what this server does not have (GPU
memory, TFLite, TPUs, XLA, the profiler) are accepted and logged once as ignored when set.
ALTS credentials cannot be honoured and are refused rather than silently dropped. One default
differs on purpose: --rest_api_port is 8501 (TF Serving: 0, no REST), because REST is how a
laptop user talks to a local server.

Kept free of TensorFlow and gRPC imports, so that building the `radflow` command line stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

TF_SERVING_VERSION = "2.16.1"  # the tensorflow_model_server whose flags these are
VERSION_HEADER = "X-Model-Version"  # REST predict responses of radflow serve name the answering version here
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20  # a 2048x2048 16-bit RGBA PNG is at most ~32 MiB; base64 over REST ~43 MiB


def schedulable_cpus() -> int:
    """TensorFlow's port::NumSchedulableCPUs: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads() -> int:
    """TF Serving's default gRPC and REST thread counts: 4 x the schedulable CPUs."""
    return 4 * schedulable_cpus()


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1")


def version_text() -> str:
    """What --version prints, in tensorflow_model_server's two lines."""
    return (f"TensorFlow ModelServer: radflow serve {metadata.version('radflow')} (the flags of "
            f"tensorflow_model_server {TF_SERVING_VERSION})\nTensorFlow Library: {metadata.version('tensorflow')}")


class _Version(argparse.Action):
    """--version[=true]: print the versions and exit 0, as tensorflow_model_server does; =false is a no-op."""

    def __call__(self, parser, namespace, values, option_string=None):
        value = True if values is None else _bool(values)
        setattr(namespace, self.dest, value)
        if value:
            print(version_text())
            sys.exit(0)


# Flags of tensorflow_model_server that configure what radflow serve does not have: accepted,
# and logged once when set to anything but their default.
IGNORED = {
    "num_load_threads": "versions load one at a time in the manager's thread (TF Serving's 0)",
    "num_unload_threads": "versions unload one at a time in the manager's thread (TF Serving's 0)",
    "flush_filesystem_caches": "there are no TensorFlow file-system caches to flush here",
    "tensorflow_session_config_file": "TF2 functions run without a Session; use the thread flags",
    "platform_config_file": "only the TensorFlow platform is served",
    "per_process_gpu_memory_fraction": "no GPU memory is reserved by this server",
    "remove_unused_fields_from_bundle_metagraph": "the MetaGraphDef is not kept in memory",
    "prefer_tflite_model": "TensorFlow Lite models are not served",
    "num_tflite_pools": "TensorFlow Lite models are not served",
    "num_tflite_interpreters_per_pool": "TensorFlow Lite models are not served",
    "enable_signature_method_name_check": "Classify always checks the method name, Predict never does",
    "xla_cpu_compilation_enabled": "XLA JIT is TensorFlow's choice per function here",
    "enable_profiler": "there is no profiler service",
    "thread_pool_factory_config_file": "requests run in the gRPC and REST thread pools",
    "mixed_precision": "the model runs in the precision it was exported with",
    "skip_initialize_tpu": "there is no TPU",
    "enable_grpc_healthcheck_service": "grpc.health.v1 is always served",
}


def add_tf_serving_arguments(parser: argparse.ArgumentParser) -> None:
    """tensorflow_model_server 2.16's flags, in main.cc's order, with server.h's defaults."""
    threads = default_threads()
    a = parser.add_argument

    def flag(name: str, kind, default, help: str) -> None:
        if kind is bool:
            a(f"--{name}", nargs="?", const=True, default=default, type=_bool, metavar="BOOL", help=help)
        else:
            a(f"--{name}", type=kind, default=default, help=help)

    flag("port", int, 8500, "gRPC port (default 8500); 0 disables TCP gRPC (then --grpc_socket_path is needed)")
    flag("grpc_socket_path", str, "", "also serve gRPC on this UNIX socket")
    flag("rest_api_port", int, 8501, "REST port; 0 disables REST (default 8501; tensorflow_model_server: 0)")
    flag("rest_api_num_threads", int, threads, f"REST requests run at once (default 4 x CPUs = {threads})")
    flag("rest_api_timeout_in_ms", int, 30000, "reading and answering one REST request (default 30000)")
    flag("rest_api_enable_cors_support", bool, False, "CORS headers on REST responses")
    flag("enable_batching", bool, False, "batch concurrent requests (also --enable_batching=true)")
    flag("allow_version_labels_for_unavailable_models", bool, False,
         "a new label may name a version that is not loaded yet")
    flag("batching_parameters_file", str, "", "BatchingParameters text proto (implies batching)")
    flag("enable_per_model_batching_parameters", bool, False,
         "a version's own batching_params.pbtxt overrides the batching parameters (with --enable_batching)")
    flag("model_config_file", str, "", "ModelServerConfig text proto: several models, version policies, "
         "labels (instead of --model_name/--model_base_path, which are then ignored)")
    flag("model_config_file_poll_wait_seconds", int, 0,
         "re-read --model_config_file this often, applying added and removed models and moved labels; 0: once")
    flag("model_name", str, "default", "name of the one model to serve (with --model_base_path)")
    flag("model_base_path", str, "", "folder of integer version directories, local or gs://")
    flag("num_load_threads", int, 0, "accepted; ignored")
    flag("num_unload_threads", int, 0, "accepted; ignored")
    flag("max_num_load_retries", int, 5, "retries of a failed load before giving up (default 5)")
    flag("load_retry_interval_micros", int, 60_000_000, "microseconds between load retries (default 1 minute)")
    flag("file_system_poll_wait_seconds", int, 1, "seconds between scans for new versions; 0: once; < 0: never")
    flag("flush_filesystem_caches", bool, True, "accepted; ignored")
    flag("tensorflow_session_parallelism", int, 0, "both TensorFlow pools, when the two flags below are 0")
    flag("tensorflow_session_config_file", str, "", "accepted; ignored")
    flag("tensorflow_intra_op_parallelism", int, 0, "threads one TensorFlow op may use; 0 lets TensorFlow "
         "choose. On a CPU serving one image per request, 1 is fastest")
    flag("tensorflow_inter_op_parallelism", int, 0, "TensorFlow ops run at once, across requests; 0: TF chooses")
    flag("use_alts_credentials", bool, False, "not available: refused when true (use --ssl_config_file)")
    flag("ssl_config_file", str, "", "SSLConfig text proto: server key and certificate, custom CA, client "
         "verification; TLS on gRPC and REST")
    flag("platform_config_file", str, "", "accepted; ignored")
    flag("per_process_gpu_memory_fraction", float, 0.0, "accepted; ignored")
    flag("saved_model_tags", str, "serve", "comma-separated tags of the meta graph to load (default serve)")
    flag("grpc_channel_arguments", str, "", "gRPC server options, key=value,key=value (ints as ints)")
    flag("grpc_max_threads", int, threads, f"concurrent RPCs; more get RESOURCE_EXHAUSTED (default {threads})")
    flag("enable_model_warmup", bool, True, "replay assets.extra/tf_serving_warmup_requests before AVAILABLE")
    flag("num_request_iterations_for_warmup", int, 0, "times each warmup record is replayed (if > 0)")
    a("--version", nargs="?", default=False, action=_Version, metavar="BOOL", help="print the version and exit")
    flag("monitoring_config_file", str, "", "MonitoringConfig text proto: Prometheus metrics on the REST port")
    flag("remove_unused_fields_from_bundle_metagraph", bool, True, "accepted; ignored")
    flag("prefer_tflite_model", bool, False, "accepted; ignored")
    flag("num_tflite_pools", int, schedulable_cpus(), "accepted; ignored")
    flag("num_tflite_interpreters_per_pool", int, 1, "accepted; ignored")
    flag("enable_signature_method_name_check", bool, False, "accepted; ignored")
    flag("xla_cpu_compilation_enabled", bool, False, "accepted; ignored")
    flag("enable_profiler", bool, True, "accepted; ignored")
    flag("thread_pool_factory_config_file", str, "", "accepted; ignored")
    flag("mixed_precision", str, "", "accepted; ignored")
    flag("skip_initialize_tpu", bool, False, "accepted; ignored")
    flag("enable_grpc_healthcheck_service", bool, False, "accepted; grpc.health.v1 is always served")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `radflow serve`: tensorflow_model_server's, then radflow's own."""
    add_tf_serving_arguments(parser)
    a = parser.add_argument
    a("--host", default="127.0.0.1",
      help="address to bind (default 127.0.0.1; 0.0.0.0 opens the server to the network)")
    a("--max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
      help=f"gRPC message and REST body limit (default {DEFAULT_MAX_MESSAGE_BYTES})")
    a("--ssl_cert_file", help="PEM certificate: serve gRPC and REST over TLS (with --ssl_key_file)")
    a("--ssl_key_file", help="PEM private key for --ssl_cert_file")
    a("--max_request_batch_size", type=int, default=128,
      help="most images (rows) one request may carry; more get INVALID_ARGUMENT (default 128)")
    a("--max_decode_bytes_in_flight", type=int, default=2 * 2**30,
      help="estimated decode memory of all requests at once; a request waits for room (default 2 GiB)")
    a("--image_min_side", type=int, default=32,
      help="refuse images whose shorter side is smaller, as ingest quarantines them (default 32)")
    a("--image_max_pixels", type=int, default=100_000_000,
      help="refuse images of more pixels, read from the header before decoding (default 100,000,000)")
    a("--image_min_std", type=float, default=1.0,
      help="refuse (nearly) constant images, as the schema does (std on 0-255; default 1; 0 turns it off)")
    a("--request_log_dir", help="write a sampled request log (PredictionLog TFRecords) here")
    a("--request_log_sampling_rate", type=float, default=0.01, help="fraction of requests logged (default 0.01)")
    a("--request_log_include_images", nargs="?", const=True, default=False, type=_bool,
      help="store the request images in the log (off: only outputs are stored)")


def ignored_flags(args: argparse.Namespace) -> dict[str, str]:
    """The ignored flags this command line sets to something other than their default, with why."""
    parser = argparse.ArgumentParser()
    add_tf_serving_arguments(parser)
    defaults = vars(parser.parse_args([]))
    return {name: reason for name, reason in IGNORED.items() if getattr(args, name) != defaults[name]}
