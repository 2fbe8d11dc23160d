"""Server-side batching: concurrent requests to one signature run as one call.

TF Serving's BasicBatchScheduler in miniature. Requests queue; a batch thread takes the oldest,
waits up to `batch_timeout_micros` for more to join, concatenates their inputs along the batch
dimension (up to `max_batch_size` rows, padded to an allowed size if any), runs the signature once
and hands every request its own rows back. Unlike TF Serving, a batch that fails with
INVALID_ARGUMENT (one undecodable image) is re-run request by request, so one bad request never
fails its neighbours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from radflow.serving.config import BatchingOptions
from radflow.serving.errors import ServingError

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass
class _Task:
    inputs: Tensors
    rows: int
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Tensors | None = None
    error: ServingError | None = None


class Batcher:
    """Batches calls to `execute`, a function from batched inputs to batched outputs.

    Args:
        execute: runs the signature on inputs whose first dimension is the batch.
        options: sizes and timeout, TF Serving's BatchingParameters.
        name: for thread names and logs.
    """

    def __init__(self, execute: Callable[[Tensors], Tensors], options: BatchingOptions, name: str):
        self._execute = execute
        self._options = options
        self._queue: deque[_Task] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{name}-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()

    def run(self, inputs: Tensors) -> Tensors:
        """Runs one request through the queue and returns its own rows of the outputs.

        Raises:
            ServingError: UNAVAILABLE when the queue is full or the batcher is closed, or the
                request's own failure.
        """
        rows = len(next(iter(inputs.values()))) if inputs else 0
        if rows == 0 or rows > self._options.max_batch_size:
            return self._execute(inputs)  # nothing to share a call with
        task = _Task(inputs, rows)
        with self._cond:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            limit = self._options.max_enqueued_batches * self._options.max_batch_size
            if sum(t.rows for t in self._queue) + rows > limit:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   "The batch scheduling queue to which this task was submitted is full")
            self._queue.append(task)
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def close(self) -> None:
        """Runs what is queued, then stops the batch threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def _next_batch(self) -> list[_Task] | None:
        timeout = self._options.batch_timeout_micros / 1e6
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + timeout
            while (not self._closed and sum(t.rows for t in self._queue) < self._options.max_batch_size
                   and (remaining := deadline - time.monotonic()) > 0):
                self._cond.wait(remaining)
            batch, rows = [], 0
            while self._queue and rows + self._queue[0].rows <= self._options.max_batch_size:
                task = self._queue.popleft()
                batch.append(task)
                rows += task.rows
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Task]) -> None:
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        try:
            merged = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
        except ValueError:  # trailing dimensions differ between requests: they cannot share a call
            for task in batch:
                self._run_alone(task)
            return
        rows = sum(t.rows for t in batch)
        padded = next((s for s in self._options.allowed_batch_sizes if s >= rows), rows)
        if padded > rows:  # pad with copies of the first row; their outputs are dropped
            merged = {k: np.concatenate([v, np.repeat(v[:1], padded - rows, axis=0)]) for k, v in merged.items()}
        try:
            outputs = self._execute(merged)
        except Exception as err:  # every failure goes to the requests that caused it
            error = ServingError.from_exception(err)
            if error.code == grpc.StatusCode.INVALID_ARGUMENT:
                log.debug("batch of %d failed (%s); running its requests one by one", len(batch), error.message)
                for task in batch:
                    self._run_alone(task)
                return
            for task in batch:
                task.error = error
                task.done.set()
            return
        start = 0
        for task in batch:
            task.outputs = {k: v[start:start + task.rows] for k, v in outputs.items()}
            start += task.rows
            task.done.set()

    def _run_alone(self, task: _Task) -> None:
        try:
            task.outputs = self._execute(task.inputs)
        except Exception as err:  # handed to the request
            task.error = ServingError.from_exception(err)
        task.done.set()
