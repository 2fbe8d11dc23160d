"""The DirectRunner's data plane: Beam's timer-flushed stream drops elements; radflow's runs never use it."""

import sys
import threading
import time

from apache_beam.coders import coders
from apache_beam.coders.coder_impl import create_InputStream
from apache_beam.runners.worker import data_plane

from radflow import beam_runner


def _write_and_count(stream_factory, seconds: float) -> tuple[int, int]:
    """Writes length-prefixed elements into a stream for `seconds`, then counts what its callbacks got."""
    received: list[bytes] = []
    coder = coders.BytesCoder().get_impl()
    stream = stream_factory(received.append, received.append)
    written, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100):
            coder.encode_to_stream(b"0123456789", stream, True)
            stream.maybe_flush()
            written += 1
    stream.close()
    data, decoded = create_InputStream(b"".join(received)), 0
    while data.size() > 0:
        coder.decode_from_stream(data, True)
        decoded += 1
    return written, decoded


def test_the_timer_flushed_stream_loses_elements_and_radflows_stream_keeps_them():
    # The race, made frequent: a flush every millisecond and a thread switch at every chance.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        written, decoded = _write_and_count(
            lambda close, flush: data_plane.TimeBasedBufferingClosableOutputStream(
                close, flush_callback=flush, time_flush_threshold_ms=1), seconds=2)
        assert decoded < written, "Beam's timer flush no longer loses elements: beam_runner's fix may go"
        beam_runner.use_size_flushed_data_plane()
        written, decoded = _write_and_count(
            lambda close, flush: data_plane.ClosableOutputStream.create(close, flush, 1), seconds=2)
        assert decoded == written
        assert threading.active_count() < 50  # no flusher thread per stream is left behind
    finally:
        sys.setswitchinterval(old)
