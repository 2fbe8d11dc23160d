"""ingest from a gs:// prefix, against gcp-storage-emulator started here (no mocks, no credentials)."""

import io
import json
import socket

import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from PIL import Image

from radflow import examples as ex
from radflow.components.ingest.config import IngestConfig
from radflow.components.ingest.ingest import CLASS_PER_FOLDER, INGESTED, QUARANTINED, ingest, read_manifest

BUCKET = "radflow-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A running emulator; STORAGE_EMULATOR_HOST points Beam's GCS filesystem (and its workers) at it."""
    from gcp_storage_emulator.server import create_server

    # Beam looks up Application Default Credentials with ~20 s of retries per process before going
    # anonymous; a local, never-expiring dummy token (only ever sent to the emulator) ends the search.
    credentials = tmp_path_factory.mktemp("gcs") / "adc.json"
    credentials.write_text(json.dumps({"type": "authorized_user", "client_id": "emulator", "client_secret": "-",
                                       "refresh_token": "-", "token": "emulator", "expiry": "2099-01-01T00:00:00Z"}))

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("STORAGE_EMULATOR_HOST", f"http://localhost:{port}")
    mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    try:
        yield storage.Client(project="test", credentials=AnonymousCredentials()).bucket(BUCKET)
    finally:
        mp.undo()
        server.stop()


def _png(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 40), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_ingest_from_a_bucket_prefix_with_three_classes(gcs, tmp_path):
    rng = np.random.default_rng(0)
    for label in ("COVID19", "NORMAL", "PNEUMONIA"):
        for i in range(4):
            gcs.blob(f"cxr/{label}/{label.lower()}{i}.png").upload_from_string(_png(rng))
    gcs.blob("cxr/NORMAL/broken.png").upload_from_string(b"\x89PNG\r\n\x1a\n cut short")
    gcs.blob("elsewhere/NORMAL/other.png").upload_from_string(_png(rng))  # outside the prefix

    out = str(tmp_path / "out")
    result = ingest(f"gs://{BUCKET}/cxr", out, IngestConfig(image_size=16, min_side=16, max_quarantined_fraction=0.2,
                                                           patient_key_secret="k",
                                                           patient_id_pattern=r"/(\w+)\.png$"))
    assert result.metadata.label_names == ("COVID19", "NORMAL", "PNEUMONIA")
    assert result.metadata.layout == CLASS_PER_FOLDER
    assert result.states == {INGESTED: 12, QUARANTINED: 1}
    rows = read_manifest(out)
    assert all(r["path"].startswith(f"gs://{BUCKET}/cxr/") for r in rows)
    assert next(r for r in rows if r["path"].endswith("broken.png"))["reason"].startswith("truncated")
    assert sum(ex.read_metadata(out).split_size(s) for s in ex.SPLITS) == 12


def test_an_empty_bucket_prefix_fails_at_once_naming_it(gcs, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"gs://{BUCKET}/nothing-here"):
        ingest(f"gs://{BUCKET}/nothing-here", str(tmp_path / "out"))
