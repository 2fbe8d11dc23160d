"""The review page opens a study from a real PACS (Orthanc, tests/orthanc.py) by StudyInstanceUID.

One study has two chest images; `radflow route` (in-process, `once`) has answered the first before
the second arrived. In a real headless browser the page must show each image's served prediction
and say that the first has its SR and Secondary Capture stored back, and the second not yet.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
import test_review
from orthanc import Orthanc, chest_dicom, skip_reason
from pydicom.uid import generate_uid
from test_review import CANVAS_STD, MODEL, screenshot

from radflow import dicom
from radflow.pacs.connection import PacsConfig
from radflow.pacs.router import RouteConfig, Router
from radflow.serving.client import ServingClient
from radflow.serving.review.app import ReviewServer
from radflow.serving.review.config import ReviewConfig

# test_review's fixtures: the served tiny model (version 1 with its model.keras) and the headless browser.
served, browser, page = test_review.served, test_review.browser, test_review.page
pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(scope="module")
def study(served, tmp_path_factory):
    """(Orthanc, the study's UID, its two images' bytes): the first answered by the router, the second not."""
    server, base = served
    folder = tmp_path_factory.mktemp("review-pacs")
    pacs = Orthanc(str(folder)).start()
    rng = np.random.default_rng(11)
    uid, series = generate_uid(), generate_uid()
    images = []
    for k in range(2):
        pixels = np.clip(rng.normal(100, 30, (70, 90)) + (60 if k else 0), 0, 255).astype(np.uint8)
        images.append(chest_dicom(pixels, patient_id="PID-REVIEW", study_uid=uid, series_uid=series,
                                  instance_number=k + 1))
    pacs.upload(images[0])
    config = RouteConfig(pacs=PacsConfig(pacs.dicomweb, credentials_file=pacs.credentials_file()),
                         serving=f"127.0.0.1:{server.grpc_port}", model_name=MODEL, model_base_path=base,
                         state_dir=str(folder / "route"), since="20000101", lookback_days=0, poll_s=0.2)
    router = Router(config)
    router.run(once=True)
    assert router.ledger.counts()["done"] == 1
    pacs.upload(images[1])
    yield pacs, uid, images
    pacs.stop()


@pytest.fixture(scope="module")
def review_pacs(served, study):
    server, base = served
    pacs = study[0]
    config = ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, port=0,
                          pacs=PacsConfig(pacs.dicomweb, credentials_file=pacs.credentials_file()))
    with ReviewServer(config) as page_server:
        yield page_server


def test_a_study_opened_by_uid_shows_each_image_and_what_is_stored_back(review_pacs, study, served, page):
    pacs, uid, images = study
    server, _ = served
    page.goto(review_pacs.url)
    page.wait_for_selector("#pacs-form:not([hidden])", timeout=30_000)
    assert f"127.0.0.1:{pacs.http_port}" in page.inner_text("#pacs-form")
    page.fill("#study-uid", uid)
    page.click("#study-open")
    page.wait_for_selector("#result[data-ready=true]", timeout=60_000)
    with ServingClient(f"127.0.0.1:{server.grpc_port}", MODEL) as client:
        expected = [client.predict([dicom.to_png(data)])[0] for data in images]
    first = pydicom.dcmread(io.BytesIO(images[0]), stop_before_pixels=True).SOPInstanceUID
    buttons = page.locator("#study-images button")
    assert buttons.count() == 2
    assert page.inner_text("#decision") == expected[0].decision
    assert first in page.inner_text("#file-name")
    assert f"stored back by version 1: {expected[0].decision}" in page.inner_text("#stored")
    # a barely trained model's Grad-CAM may find no supporting region; the page must then say so
    heat = page.evaluate(CANVAS_STD, "heatmap")
    assert heat["std"] > 5 or "the heat map is flat" in page.inner_text("#notes"), heat
    screenshot(page, "pacs_study")
    page.locator("#study-images button").nth(1).click()
    page.wait_for_selector("#stored:has-text('no result stored')", timeout=60_000)
    assert page.inner_text("#decision") == expected[1].decision


def test_study_errors_are_clear(review_pacs, served, tmp_path):
    url = review_pacs.url
    unknown = requests.get(f"{url}api/pacs/studies/1.2.3.4.5", timeout=30)
    assert unknown.status_code == 404 and "has no study 1.2.3.4.5" in unknown.json()["error"]
    bad = requests.get(f"{url}api/pacs/studies/not-a-uid", timeout=30)
    assert bad.status_code == 400 and "is not a StudyInstanceUID" in bad.json()["error"]
    server, base = served
    with ReviewServer(ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, port=0)) as plain:
        answer = requests.get(f"{plain.url}api/pacs/studies/1.2.3", timeout=30)
        assert answer.status_code == 400 and "without a PACS" in answer.json()["error"]
        assert requests.get(f"{plain.url}api/status", timeout=30).json()["pacs"] is None
    gone = Orthanc(str(tmp_path))  # never started: nothing listens on its port
    config = ReviewConfig(server=f"127.0.0.1:{server.grpc_port}", model_base_path=base, port=0,
                          pacs=PacsConfig(gone.dicomweb, retries=0))
    with ReviewServer(config) as down:
        answer = requests.get(f"{down.url}api/pacs/studies/1.2.3", timeout=60)
        assert answer.status_code == 503 and "did not answer" in answer.json()["error"]
