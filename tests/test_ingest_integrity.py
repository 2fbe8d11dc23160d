"""Ingest loses no record under CPU contention, and a record that did go missing could never pass unseen."""

import csv
import os
import resource
import subprocess
import sys

import pytest
import tensorflow as tf

from radflow import examples as ex
from radflow.components.ingest.config import IngestConfig
from radflow.components.ingest.ingest import (
    INGESTED,
    READBACK_FILE,
    SourceFile,
    check_accounting,
    ingest,
    read_manifest,
    verify_shards,
)

# `radflow ingest` in a child whose Beam flushes its gRPC data streams every millisecond instead of
# every second: the race that lost records (radflow/beam_runner.py) then has a thousand chances a
# second instead of one, so a run of a few hundred files lost about half its records before the fix.
_CHILD = """
import sys
from apache_beam.runners.portability.fn_api_runner import worker_handlers
worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 1
from radflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def cpu_contention():
    """Two busy processes, one per core of the development machine, for the length of the test."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for p in busy:
        p.kill()
        p.wait()


@pytest.fixture(scope="module")
def sample_600(tmp_path_factory) -> str:
    from radflow.synth import synthesize

    out = str(tmp_path_factory.mktemp("contention") / "chest_xray")
    synthesize(out, n=600, seed=3, min_side=64, max_side=128)
    return out


def _records(out: str, split: str) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(ex.split_files(out, split)))


def test_ingest_under_cpu_contention_writes_every_record(sample_600, tmp_path, cpu_contention):
    out = str(tmp_path / "examples")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "ingest", sample_600, out, "--image-size", "64",
         "--beam-args=--direct_running_mode=multi_threading --direct_num_workers=2"],
        capture_output=True, text=True, timeout=420,
        # a damaged stream once made the child allocate 24 GB: cap it so a regression fails alone
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_manifest(out)
    metadata = ex.read_metadata(out)
    for split in ex.SPLITS:
        ingested = sum(r["state"] == INGESTED and r["split"] == split for r in rows)
        assert _records(out, split) == ingested == metadata.split_size(split)
    assert metadata.verified_records == sum(r["state"] == INGESTED for r in rows) > 500


@pytest.fixture(scope="module")
def finished(sample_600, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("finished") / "examples")
    ingest(sample_600, out, IngestConfig(image_size=32, beam_args=("--direct_running_mode=in_memory",)))
    return out


def _drop_record(shard: str, index: int) -> bytes:
    records = list(tf.data.TFRecordDataset([shard]).as_numpy_iterator())
    with tf.io.TFRecordWriter(shard) as w:
        for i, r in enumerate(records):
            if i != index:
                w.write(r)
    return records[index]


def test_read_back_names_the_input_whose_record_is_missing(finished, tmp_path):
    import hashlib
    import shutil

    out = str(tmp_path / "copy")
    shutil.copytree(finished, out)
    os.remove(os.path.join(out, ex.METADATA_FILE))
    rows = read_manifest(out)
    assert verify_shards(out, rows) == sum(r["state"] == INGESTED for r in rows)
    dropped = _drop_record(ex.split_files(out, "train")[0], 3)
    lost = next(r["path"] for r in rows if r["example_sha256"] == hashlib.sha256(dropped).hexdigest())
    with pytest.raises(RuntimeError, match=r"train: 1 of \d+ records of ingested inputs are missing") as err:
        verify_shards(out, rows)
    assert lost in str(err.value) and "no metadata.json" in str(err.value)
    with open(os.path.join(out, READBACK_FILE)) as f:
        assert list(csv.reader(f))[1:] == [["train", "missing", lost]]
    assert not os.path.exists(os.path.join(out, ex.METADATA_FILE))


def test_read_back_catches_a_record_in_the_wrong_split_or_damaged(finished, tmp_path):
    import shutil

    out = str(tmp_path / "copy")
    shutil.copytree(finished, out)
    rows = read_manifest(out)
    moved = _drop_record(ex.split_files(out, "test")[0], 0)
    with tf.io.TFRecordWriter(os.path.join(out, "train", "extra.tfrecord")) as w:
        w.write(moved)  # a test record in a train shard
        w.write(moved[:-1] + b"\x00")  # a damaged record matches nobody
    with pytest.raises(RuntimeError) as err:
        verify_shards(out, rows)
    message = str(err.value)
    assert "test: 1 of" in message and "train: 2 records match no ingested row of train" in message
    assert "(manifest: test)" in message


def test_accounting_names_inputs_without_a_row():
    files = [SourceFile(f"/d/{n}.png", "A") for n in "abc"]
    rows = [{"path": "/d/a.png"}, {"path": "/d/b.png"}, {"path": "/d/b.png"}, {"path": "/d/z.png"}]
    with pytest.raises(RuntimeError) as err:
        check_accounting(files, rows)
    assert "1 inputs have no manifest row (/d/c.png)" in str(err.value)
    assert "several rows (/d/b.png)" in str(err.value) and "name no listed input (/d/z.png)" in str(err.value)
    check_accounting(files, [{"path": f.path} for f in files])
