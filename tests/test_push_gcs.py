"""push, retention, listing and rollback on gs://, against a real GCS emulator started here."""

import base64
import json
import os
import shutil
import socket

import pytest
import tensorflow as tf

from radflow import fileio
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.evaluate.evaluate import BLESSING_FILE, CANARY_FILE, evaluate
from radflow.components.push.config import PushConfig
from radflow.components.push.layout import SAVED_MODEL_PB, read_lineage, versions
from radflow.components.push.push import list_versions, push, rollback
from radflow.components.train.train import SCORES, SERVING_INPUT, THRESHOLD

BUCKET = "radflow-test"


@pytest.fixture(scope="module")
def gcs():
    """gcp-storage-emulator in this process; google-cloud-storage reaches it via STORAGE_EMULATOR_HOST."""
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ.update(STORAGE_EMULATOR_HOST=f"http://localhost:{port}", GOOGLE_CLOUD_PROJECT="test")
    fileio._gcs_client.cache_clear()
    try:
        yield f"gs://{BUCKET}"
    finally:
        server.stop()
        fileio._gcs_client.cache_clear()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_fileio_round_trips_through_the_emulator(gcs, tmp_path):
    fileio.write_text_atomic(f"{gcs}/io/a/b.txt", "hello")
    assert fileio.read_text(f"{gcs}/io/a/b.txt") == "hello"
    assert fileio.exists(f"{gcs}/io/a") and not fileio.exists(f"{gcs}/io/missing")
    assert fileio.listdir(f"{gcs}/io") == ["a"]
    (tmp_path / "src" / "d").mkdir(parents=True)
    (tmp_path / "src" / "d" / "x").write_bytes(b"1")
    (tmp_path / "src" / "saved_model.pb").write_bytes(b"2")
    fileio.copytree(str(tmp_path / "src"), f"{gcs}/io/tree", last="saved_model.pb")
    assert fileio.walk_files(f"{gcs}/io/tree") == ["d/x", "saved_model.pb"]
    fileio.rmtree(f"{gcs}/io")
    assert not fileio.exists(f"{gcs}/io")


def test_push_publish_list_retain_and_roll_back_on_gcs(gcs, good_model_dir, separable_examples_dir, tmp_path):
    evaluation = str(tmp_path / "evaluation")
    evaluate(good_model_dir, separable_examples_dir, evaluation, EvaluateConfig(bootstrap_resamples=50,
                                                                                explain_images=0))
    serving, model_root = f"{gcs}/models", f"{gcs}/models/radflow"
    config = PushConfig(latency_requests=3, keep_versions=2)

    first = push(good_model_dir, evaluation, serving, config, run_id="gcs-run")
    assert first.pushed and first.version == 1 and first.path == f"{model_root}/1", first.reason
    assert fileio.exists(f"{model_root}/1/{SAVED_MODEL_PB}")
    assert read_lineage(model_root, 1)["run_id"] == "gcs-run"

    # An upload killed before its saved_model.pb: TF Serving will not load it, radflow does not list it,
    # and its number is never reused.
    fileio.write_text_atomic(f"{model_root}/2/variables/variables.index", "partial")
    assert versions(model_root) == [1]
    # The same evaluation again is stale (judged with no production, which is now version 1).
    stale = push(good_model_dir, evaluation, serving, config)
    assert not stale.pushed and "stale blessing" in stale.reason and versions(model_root) == [1]
    judged = tmp_path / "judged-against-1"  # an evaluation judged against version 1
    shutil.copytree(evaluation, judged)
    blessing = json.loads((judged / BLESSING_FILE).read_text())
    (judged / BLESSING_FILE).write_text(json.dumps({**blessing, "baseline_version": 1}))
    second = push(good_model_dir, str(judged), serving, config)
    assert second.version == 3 and versions(model_root) == [1, 3], second.reason

    back = rollback(serving, 1, config, run_id="oncall")
    assert back.pushed and back.version == 4 and back.removed_versions == [1]  # keep_versions=2
    assert [(i.version, i.live, i.rollback_of) for i in list_versions(serving)] == [(3, False, None), (4, True, 1)]

    # The published version is a loadable SavedModel that answers with the chosen threshold.
    local = str(tmp_path / "v4")
    fileio.copytree(f"{model_root}/4", local)
    with open(os.path.join(evaluation, CANARY_FILE)) as f:
        canary = json.load(f)
    answer = tf.saved_model.load(local).signatures["serving_default"](
        **{SERVING_INPUT: tf.constant([base64.b64decode(canary["image_bytes_b64"][0])])})
    assert answer[SCORES].numpy()[0] == pytest.approx(canary["scores"][0], abs=1e-5)
    assert answer[THRESHOLD].numpy()[0] == pytest.approx(canary["threshold"], abs=1e-7)
