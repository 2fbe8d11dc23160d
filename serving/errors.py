"""The one error type of the server: a gRPC status code and a message, as TF Serving answers.

TensorFlow's error codes are gRPC's, so an op failing inside a signature (say, DecodePng on bytes
that are not an image) maps onto the status the client sees without a table; REST maps the same
codes onto HTTP statuses exactly as tensorflow_model_server's http_server.cc does.
"""

from __future__ import annotations

import re

import grpc
import tensorflow as tf

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

# tensorflow_model_server's ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request or load failure carrying the status code the client should get.

    Args:
        code: the gRPC status code.
        message: what went wrong, phrased for the caller.
        reason: for a request refused before it ran, why (the `reason` label of the refused-requests
            metric, e.g. "batch_too_large"); empty otherwise.
    """

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    @classmethod
    def from_exception(cls, err: Exception) -> ServingError:
        """Keeps a ServingError, maps a TensorFlow op error by its code, and calls anything else UNKNOWN."""
        if isinstance(err, ServingError):
            return err
        if isinstance(err, tf.errors.OpError):
            return cls(_BY_VALUE.get(err.error_code, grpc.StatusCode.UNKNOWN), op_error_message(err.message))
        return cls(grpc.StatusCode.UNKNOWN, f"{type(err).__name__}: {err}")


def op_error_message(message: str) -> str:
    """A TensorFlow op error without its graph trace: "Graph execution error", the "Detected at node"
    stack and the {{node ...}} markers say where in the graph it failed, not what was wrong."""
    lines = [line.strip() for line in message.splitlines()]
    noise = ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[")
    kept = [line for line in lines if line and not line.startswith(noise)]
    text = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]|\s*\{\{[^}]*\}\}|\s*\[Op:[^\]]*\]", "", " ".join(kept)).strip()
    return text or message.strip()


def invalid(message: str, reason: str = "") -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message, reason)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)
