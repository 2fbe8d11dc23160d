"""The flags of `radflow serve`, named as tensorflow_model_server's where it has them.

Kept free of TensorFlow and gRPC imports, so that building the `radflow` command line stays fast.
"""

from __future__ import annotations

import argparse

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20  # a 2048x2048 16-bit RGBA PNG is at most ~32 MiB; base64 over REST ~43 MiB


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `radflow serve`, named as tensorflow_model_server's where it has them."""
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    parser.add_argument("--rest_api_port", type=int, default=8501, help="REST port; 0 disables REST (default 8501)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 opens the server to the network)")
    parser.add_argument("--model_name", help="name of the one model to serve (with --model_base_path)")
    parser.add_argument("--model_base_path", help="folder of integer version directories, local or gs://")
    parser.add_argument("--model_config_file", help="ModelServerConfig text proto: several models, version "
                        "policies, labels (instead of --model_name/--model_base_path)")
    parser.add_argument("--enable_batching", nargs="?", const=True, default=False, type=_bool,
                        help="batch concurrent requests (also --enable_batching=true, as tensorflow_model_server)")
    parser.add_argument("--batching_parameters_file", help="BatchingParameters text proto (implies batching)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="seconds between scans for new versions (default 1)")
    parser.add_argument("--max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help=f"gRPC message and REST body limit (default {DEFAULT_MAX_MESSAGE_BYTES})")
    parser.add_argument("--ssl_cert_file", help="PEM certificate: serve gRPC and REST over TLS (with --ssl_key_file)")
    parser.add_argument("--ssl_key_file", help="PEM private key for --ssl_cert_file")
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                        help="threads one TensorFlow op may use; 0 lets TensorFlow choose (default 0). On a "
                        "CPU serving one image per request, 1 is fastest")
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                        help="TensorFlow ops run at once, across requests; 0 lets TensorFlow choose (default 0)")
    parser.add_argument("--request_log_dir", help="write a sampled request log (PredictionLog TFRecords) here")
    parser.add_argument("--request_log_sampling_rate", type=float, default=0.01,
                        help="fraction of requests logged (default 0.01)")
    parser.add_argument("--request_log_include_images", nargs="?", const=True, default=False, type=_bool,
                        help="store the request images in the log (off: only outputs are stored)")
