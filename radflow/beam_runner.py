"""How radflow runs its Beam pipelines (ingest, validate), with a fix for the DirectRunner's data plane.

Beam 2.59's DirectRunner in `multi_threading` (and `multi_processing`) mode moves elements between
the runner and its SDK workers over gRPC, through output streams that a timer thread flushes every
second (`data_plane.TimeBasedBufferingClosableOutputStream`, DATA_BUFFER_TIME_LIMIT_MS = 1000 in
`fn_api_runner.worker_handlers`, not configurable below one second). That flush reads the buffer
and then clears it without excluding the bundle thread, which goes on encoding elements into the
same buffer: whatever the bundle thread wrote between the read and the clear is lost, and when the
clear cuts an element in two, the receiving side decodes garbage. Nothing fails: the pipeline ends
with fewer elements. CPU contention widens the window between the read and the clear, which is why
ingest lost records on a loaded 2-core machine and rarely on an idle one. `in_memory` mode, and
the Python SDK harness on Dataflow, Flink or Spark (whose time limit defaults to 0), never create
those streams. Upstream's data_plane.py still has the same flush (apache/beam master, checked
2026-12-01).

radflow's pipelines are batch pipelines, where the time-based flush buys nothing (it exists to
lower latency in streaming), so `run` makes the data plane flush by size only (every 10 MB, and
when a bundle closes), which is done by the thread that writes. `tests/test_beam_runner.py` shows
the stream losing elements and the fix keeping them all.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.worker import data_plane


def _size_flushed(close_callback, flush_callback, data_buffer_time_limit_ms):
    """`ClosableOutputStream.create` without the racing timer: flushed by size and on close only."""
    del data_buffer_time_limit_ms  # the timer thread is what loses data
    return data_plane.SizeBasedBufferingClosableOutputStream(close_callback, flush_callback=flush_callback)


def use_size_flushed_data_plane() -> None:
    """Makes every data-plane stream of this process flush from its writing thread only (idempotent)."""
    data_plane.ClosableOutputStream.create = staticmethod(_size_flushed)


def run(pipeline: beam.Pipeline) -> beam.runners.runner.PipelineResult:
    """Runs `pipeline` to completion, with the data-plane fix for runners that execute in this process.

    Args:
        pipeline: a constructed Beam pipeline.

    Returns:
        The finished pipeline's result (metrics, state).

    Raises:
        RuntimeError: the pipeline did not finish in state DONE.
    """
    use_size_flushed_data_plane()
    result = pipeline.run()
    state = result.wait_until_finish()
    if state not in (None, beam.runners.runner.PipelineState.DONE):
        raise RuntimeError(f"Beam pipeline ended in state {state}, not DONE")
    return result
