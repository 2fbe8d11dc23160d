"""The review page, in a real headless browser (Debian's chromium driven by Playwright), against a real model server.

conftest's tiny model (32 px) is published as version 1 the way push publishes it (SavedModel, and
model.keras in the lineage folder) and served in-process by `radflow serve`'s ModelServer on a
loopback port. Screenshots go to tests/artifacts/ (git-ignored); each test prints its path.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import requests
import tensorflow as tf

from radflow import dicom
from radflow.components.push.layout import LINEAGE_DIR
from radflow.components.train.train import KERAS_MODEL_FILE, SAVED_MODEL_DIR, THRESHOLD_ASSET
from radflow.explain import grad_cam
from radflow.preprocessing import preprocess_encoded
from radflow.serving.client import ServingClient
from radflow.serving.config import ServerConfig, single_model_config
from radflow.serving.review.app import ReviewServer
from radflow.serving.review.config import ReviewConfig
from radflow.serving.server import ModelServer

MODEL = "radflow"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")
NOT_AN_IMAGE = b"Patient: Doe^Jane\nthis is a text file, not an X-ray\n"

# Grayscale standard deviation of the heat-map canvas's pixels, in the browser: a blank or uniform map is ~0.
CANVAS_STD = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0, s = 0, s2 = 0;
  for (let i = 0; i < d.length; i += 4) {
    const v = 0.3 * d[i] + 0.59 * d[i + 1] + 0.11 * d[i + 2];
    s += v; s2 += v * v; n++;
  }
  const m = s / n;
  return {width: c.width, std: Math.sqrt(Math.max(0, s2 / n - m * m))};
}"""


def publish(model_dir: str, base: str, version: int, keras_model: str | None = "default",
            threshold: float | None = None) -> str:
    """Lays a version out as push publishes it: staged, then renamed into place.

    keras_model: the model.keras to publish in the lineage folder; "default" is the trained one, None none.
    threshold: the operating threshold push would write into the version's assets; None keeps the export's.
    """
    staged = os.path.join(base, f".staging-{version}")
    shutil.copytree(os.path.join(model_dir, SAVED_MODEL_DIR), staged)
    if threshold is not None:
        with open(os.path.join(staged, "assets", THRESHOLD_ASSET), "w") as f:
            f.write(f"{threshold}\n")
    os.makedirs(os.path.join(staged, LINEAGE_DIR))
    with open(os.path.join(staged, LINEAGE_DIR, "lineage.json"), "w") as f:
        json.dump({"data": {"modality": "chest X-ray"}}, f)  # push copies the examples' modality here
    if keras_model:
        source = os.path.join(model_dir, KERAS_MODEL_FILE) if keras_model == "default" else keras_model
        shutil.copy(source, os.path.join(staged, LINEAGE_DIR, KERAS_MODEL_FILE))
    os.replace(staged, os.path.join(base, str(version)))
    return os.path.join(base, str(version))


def start_model_server(base: str) -> ModelServer:
    server = ModelServer(ServerConfig(port=0, rest_api_port=None, file_system_poll_wait_seconds=0.2),
                         [single_model_config(MODEL, base)])
    server.start()
    assert server.wait_until_ready(60), "the model never became AVAILABLE"
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(page, name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, f"review_{name}.png")
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")
    return path


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """(model server, model base path) with version 1 published."""
    base = str(tmp_path_factory.mktemp("serving") / MODEL)
    os.makedirs(base)
    publish(model_dir, base, 1)
    server = start_model_server(base)
    yield server, base
    server.stop()


@pytest.fixture(scope="module")
def review(served):
    server, base = served
    with ReviewServer(ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, port=0)) as page:
        yield page


@pytest.fixture(scope="module")
def xray(synth_dir) -> tuple[str, bytes]:
    """A synthetic PNEUMONIA chest X-ray (JPEG, non-square) from conftest's sample."""
    path = sorted(glob.glob(os.path.join(synth_dir, "test", "PNEUMONIA", "*.jpeg")))[0]
    with open(path, "rb") as f:
        return path, f.read()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed: `apt-get install -y chromium` (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    yield context.new_page()
    context.close()


def served_answer(served, image: bytes):
    server, _ = served
    with ServingClient(f"127.0.0.1:{server.grpc_port}", MODEL) as client:
        return client.predict([image])[0]


def upload(page, url: str, name: str, data: bytes, mime: str) -> None:
    page.goto(url)
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_upload_shows_the_served_prediction_and_a_gradcam_overlay(review, served, xray, page):
    path, data = xray
    upload(page, review.url, os.path.basename(path), data, "image/jpeg")
    page.wait_for_selector("#result[data-ready=true]", timeout=30_000)
    expected = served_answer(served, data)
    assert page.inner_text("#decision") == expected.decision
    assert page.inner_text("#label") == expected.label
    assert page.inner_text("#version") == "1" and page.inner_text("#model") == MODEL
    assert f"{expected.threshold:.3f}" in page.inner_text("#decision-rule")
    rows = page.locator("#scores tbody tr").all_inner_texts()
    assert [r.split("\t")[:2] for r in rows] == [[k, f"{v:.3f}"] for k, v in expected.scores.items()]
    assert "NOT FOR CLINICAL USE" in page.inner_text("#banner")
    assert "version 1" in page.inner_text("#status")
    # The wording comes from the served version's labels and modality, not a fixed "chest X-ray".
    assert page.inner_text("#drop-what") == "Drop a chest X-ray image to classify as NORMAL or PNEUMONIA"
    assert not page.locator("#notes li").count(), page.locator("#notes").inner_text()

    heat = page.evaluate(CANVAS_STD, "heatmap")
    xray_canvas = page.evaluate(CANVAS_STD, "xray")
    assert heat["width"] == xray_canvas["width"] > 0
    assert heat["std"] > 5, f"the Grad-CAM overlay is blank: {heat}"
    assert xray_canvas["std"] > 5
    assert page.is_visible("#heatmap")
    shot = screenshot(page, "result")
    assert os.path.getsize(shot) > 10_000
    page.fill("#opacity", "80")
    assert page.eval_on_selector("#heatmap", "c => getComputedStyle(c).opacity") == "0.8"
    assert page.inner_text("#opacity-value") == "80%"


def test_a_dicom_file_is_rendered_and_scored_like_its_png(review, served, page):
    from test_dicom import make_dicom  # the pydicom writer of the DICOM tests

    rng = np.random.default_rng(3)
    pixels = (rng.random((40, 56)) * 3000 + 500).astype(np.uint16)
    data = make_dicom(pixels, WindowCenter=2000, WindowWidth=3000)
    upload(page, review.url, "study.dcm", data, "application/dicom")
    page.wait_for_selector("#result[data-ready=true]", timeout=30_000)
    expected = served_answer(served, dicom.to_png(data))
    assert page.inner_text("#decision") == expected.decision
    assert "DICOM, 56×40 px" in page.inner_text("#file-name")
    assert page.evaluate(CANVAS_STD, "xray")["std"] > 5


def test_a_file_that_is_not_an_image_shows_an_error(review, page):
    upload(page, review.url, "notes.txt", NOT_AN_IMAGE, "text/plain")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert page.inner_text("#error") == ("notes.txt: not an image: upload a JPEG, PNG or DICOM file (Unknown image "
                                         "file format. One of JPEG, PNG, GIF, BMP required.)")
    assert page.is_hidden("#result")
    screenshot(page, "not_an_image")
    reply = requests.post(review.url + "api/review", data=NOT_AN_IMAGE, timeout=30)
    assert reply.status_code == 400 and "not an image" in reply.json()["error"]
    assert requests.post(review.url + "api/review", data=b"", timeout=30).status_code == 400


def test_an_unreachable_model_server_shows_an_error(served, xray, page):
    _, base = served
    config = ReviewConfig(server=f"127.0.0.1:{free_port()}", model_base_path=base, port=0, timeout_s=5)
    with ReviewServer(config) as down:
        upload(page, down.url, "chest.jpeg", xray[1], "image/jpeg")
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "unreachable" in page.inner_text("#error")
        assert "unreachable" in page.inner_text("#status")
        screenshot(page, "unreachable")
        assert requests.post(down.url + "api/review", data=xray[1], timeout=30).status_code == 503
        assert requests.get(down.url + "api/status", timeout=30).status_code == 503


def test_a_server_error_is_a_502_and_an_oversized_upload_a_413(served, xray):
    server, base = served
    config = ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, model_name="no_such_model",
                          port=0, max_upload_bytes=len(xray[1]))
    with ReviewServer(config) as wrong:
        reply = requests.post(wrong.url + "api/review", data=xray[1], timeout=30)
        assert reply.status_code == 502 and "NOT_FOUND" in reply.json()["error"]
        reply = requests.post(wrong.url + "api/review", data=xray[1] + b"\0", timeout=30)
        assert reply.status_code == 413


def test_uploads_ingest_would_not_admit_get_a_400_with_the_reason_before_any_decode(served):
    import io

    from PIL import Image

    server, base = served

    def png(image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    config = ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, port=0)
    with ReviewServer(config) as page:
        for data, reason in ((png(Image.new("L", (12000, 12000))), "pixels"),  # 3.6 GiB when the page decoded it
                             (png(Image.new("L", (1, 1), 200)), "at least 32 px"),
                             (png(Image.new("L", (64, 64))), "constant")):
            reply = requests.post(page.url + "api/review", data=data, timeout=60)
            assert reply.status_code == 400 and reply.headers["Content-Type"].startswith("application/json")
            assert reason in reply.json()["error"], reply.json()


def test_the_heat_map_is_grad_cam_of_the_served_versions_keras_model(review, served, xray):
    """Same bytes, shared preprocessing, the decided class, that version's model.keras."""
    _, base = served
    result = review.reviewer.review(xray[1])
    model = keras.models.load_model(os.path.join(base, "1", LINEAGE_DIR, KERAS_MODEL_FILE))
    _, size, _, channels = model.input_shape
    x = preprocess_encoded(tf.constant(xray[1]), size, channels).numpy()
    heat = grad_cam(model, x, result["classes"].index(result["decision"]))
    assert result["gradcam"]["peak"] == [int(i) for i in np.unravel_index(int(heat.argmax()), heat.shape)]
    assert result["gradcam"]["class"] == result["decision"]
    assert result["gradcam"]["keras_score_gap"] < 1e-4  # model.keras and the server agree


def test_a_new_version_is_explained_by_its_own_model_and_missing_or_mismatched_models_are_flagged(
        model_dir, xray, tmp_path):
    base = str(tmp_path / MODEL)
    os.makedirs(base)
    publish(model_dir, base, 1)
    server = start_model_server(base)
    try:
        config = ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, port=0)
        with ReviewServer(config) as page:
            assert page.reviewer.review(xray[1])["version"] == 1
            # Version 2: the same SavedModel, but a model.keras whose output bias moved: not what is served.
            model = keras.models.load_model(os.path.join(model_dir, KERAS_MODEL_FILE))
            last = model.layers[-1]
            kernel, bias = last.get_weights()
            last.set_weights([kernel, bias + 3.0])
            model.save(str(tmp_path / "other.keras"))
            publish(model_dir, base, 2, str(tmp_path / "other.keras"))
            assert _wait_for_version(page, 2)
            result = page.reviewer.review(xray[1])
            assert result["version"] == 2 and result["gradcam"] is not None
            assert any("disagrees with the server" in n for n in result["notes"]), result["notes"]
            # Version 3: published without model.keras: the prediction, and a note instead of a heat map.
            publish(model_dir, base, 3, keras_model=None)
            assert _wait_for_version(page, 3)
            result = page.reviewer.review(xray[1])
            assert result["version"] == 3 and result["gradcam"] is None
            assert any("no Grad-CAM" in n for n in result["notes"]), result["notes"]
            # Version 4: a model.keras whose last maps are all zero (its batch norm shifts them below
            # the ReLU): Grad-CAM has nothing to point to, and the note says the map is flat.
            model = keras.models.load_model(os.path.join(model_dir, KERAS_MODEL_FILE))
            norm = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][-1]
            gamma, beta, mean, var = norm.get_weights()
            norm.set_weights([np.zeros_like(gamma), np.full_like(beta, -1.0), mean, var])
            model.save(str(tmp_path / "blind.keras"))
            publish(model_dir, base, 4, str(tmp_path / "blind.keras"))
            assert _wait_for_version(page, 4)
            result = page.reviewer.review(xray[1])
            assert any("the heat map is flat" in n for n in result["notes"]), result["notes"]
    finally:
        server.stop()


def _wait_for_version(page: ReviewServer, version: int, timeout_s: float = 30) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.reviewer.status()["serving_version"] == version:
            return True
        time.sleep(0.1)
    return False


def _files(*roots: str) -> dict[str, bytes]:
    found = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    found[os.path.join(folder, name)] = f.read()
    return found


def test_uploads_are_not_written_to_disk_unless_asked(review, served, xray, tmp_path, monkeypatch):
    _, base = served
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where anything spooled would land
    monkeypatch.chdir(cwd)
    before = _files(base)
    reply = requests.post(review.url + "api/review", data=xray[1], timeout=60)
    assert reply.status_code == 200 and reply.headers["Cache-Control"] == "no-store"
    assert _files(str(scratch), str(cwd)) == {}
    assert _files(base) == before

    server, _ = served
    saved = tmp_path / "kept"
    config = ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, port=0,
                          save_uploads=str(saved))
    with ReviewServer(config) as keeping:
        assert requests.post(keeping.url + "api/review", data=xray[1], timeout=60).status_code == 200
    kept = _files(str(saved))
    assert list(kept.values()) == [xray[1]] and next(iter(kept)).endswith(".jpg")


def test_only_loopback_host_names_are_answered(review):
    assert requests.get(review.url, timeout=30).status_code == 200
    reply = requests.get(review.url, headers={"Host": "attacker.example"}, timeout=30)
    assert reply.status_code == 400


def test_radflow_review_command_serves_the_page(served, tmp_path):
    server, base = served
    proc = subprocess.Popen(
        [sys.executable, "-m", "radflow.cli", "review", "--server", f"127.0.0.1:{server.grpc_port}",
         "--model_base_path", base, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("review page on http://127.0.0.1:"), line
        url = line.split()[3]
        page = requests.get(url, timeout=30)
        assert page.status_code == 200 and "NOT FOR CLINICAL USE" in page.text
        assert requests.get(url + "api/status", timeout=30).json()["serving_version"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


HOT_CENTROID = """(id) => {
  // Centroid of the hottest tenth of the heat map canvas (jet: hot is red, cold is blue), in canvas pixels.
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const hot = [];
  for (let i = 0; i < d.length; i += 4) hot.push(d[i] - d[i + 2]);
  const cut = [...hot].sort((a, b) => a - b)[Math.floor(0.9 * hot.length)];
  let n = 0, row = 0, col = 0;
  hot.forEach((h, i) => { if (h >= cut) { n++; row += Math.floor(i / c.width); col += i % c.width; } });
  return {size: c.width, row: row / n, col: col / n};
}"""


def blob_detector(model_dir: str) -> str:
    """A hand-built model whose only evidence is bright pixels, exported as train exports.

    P(PNEUMONIA) = sigmoid(40 * mean(relu(x - 0.6)) - 0.2) on 16 px inputs: a bright blob (x ~ 0.8)
    raises the score and the chest-like background (x ~ 0.35) adds nothing, so its Grad-CAM lies
    exactly on the blob, with no dependence on how a training run happened to go.
    """
    from radflow import examples as ex
    from radflow.components.train.export import export_serving

    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(1, 1, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="scores")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([np.ones((1, 1, 1, 1)), np.array([-0.6])])
    model.get_layer("scores").set_weights([np.array([[40.0]]), np.array([-0.2])])
    os.makedirs(model_dir)
    export_serving(model, ex.DatasetMetadata(("NORMAL", "PNEUMONIA"), image_size=16, channels=1),
                   os.path.join(model_dir, SAVED_MODEL_DIR))
    model.save(os.path.join(model_dir, KERAS_MODEL_FILE))
    return model_dir


def test_the_overlay_lies_on_the_evidence(tmp_path, page):
    """A model whose evidence is a bright blob: on the page, the heat sits on the blob.

    The image is not square, so the check also covers the padding the model and the page share.
    """
    import io

    from PIL import Image

    base = str(tmp_path / MODEL)
    os.makedirs(base)
    # A low operating threshold keeps the decision (whose class Grad-CAM explains) on PNEUMONIA.
    publish(blob_detector(str(tmp_path / "blob_model")), base, 1, threshold=0.05)
    server = start_model_server(base)
    rng = np.random.default_rng(0)
    pixels = rng.normal(90, 20, (12, 16))  # chest-like noise at the model's 16 px, then shown 4x larger
    pixels[1:6, 9:14] += 110
    # 48 x 64 (rows x cols), padded to 64 x 64 with 8 rows above and below; the blob's centre is (14, 46),
    # (22, 46) once padded.
    pixels = np.kron(pixels, np.ones((4, 4)))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    try:
        config = ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, port=0)
        with ReviewServer(config) as review:
            upload(page, review.url, "blob.png", buf.getvalue(), "image/png")
            page.wait_for_selector("#result[data-ready=true]", timeout=30_000)
            assert page.inner_text("#decision") == "PNEUMONIA"
            hot = page.evaluate(HOT_CENTROID, "heatmap")
            screenshot(page, "blob")
    finally:
        server.stop()
    assert hot["size"] == 64
    # The heat is on the blob, not where a flipped, transposed or mis-padded overlay would put it.
    distance = {name: np.hypot(hot["row"] - r, hot["col"] - c) for name, (r, c) in {
        "blob": (22, 46), "flipped left-right": (22, 18), "flipped up-down": (42, 46), "transposed": (46, 22),
        "rotated": (42, 18), "unpadded": (14, 46)}.items()}
    assert min(distance, key=distance.get) == "blob", (hot, distance)
    assert distance["blob"] < 4, (hot, distance)  # within half the padding's 8-row offset
