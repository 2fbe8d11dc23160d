"""`radflow review`: a web page on 127.0.0.1 where a radiologist uploads an X-ray and sees what production answers.

The prediction comes from the model server over gRPC, whose reply names the version that
answered; the Grad-CAM heat map is computed from that same version's Keras model, which push
publishes inside the version (`<version>/radflow_lineage/model.keras`), on the same bytes after the
shared preprocessing (`radflow.preprocessing.preprocess_encoded`). The Keras model's scores are
compared with the server's, so a heat map that would explain a different model is flagged.

    radflow serve --model_name radflow --model_base_path models/radflow &
    radflow review --server localhost:8500 --model_base_path models/radflow
    # then open http://127.0.0.1:8502

With `--pacs URL` the page also opens a study from the PACS by StudyInstanceUID (QIDO-RS, then
WADO-RS of each image, as stored): each image gets the same prediction and Grad-CAM as an upload,
and the page says whether `radflow route` has already stored its SR and Secondary Capture there
(their UIDs follow from the image and the model name; radflow.pacs.results).

Uploads stay in memory: the body is read as one buffer (never spooled to a temporary file),
responses carry `Cache-Control: no-store`, and nothing is written unless `save_uploads` names a
folder. The page binds loopback only and answers only requests addressed to 127.0.0.1/localhost.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import signal
import threading
import time
from collections import OrderedDict
from importlib import resources

import grpc
import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from werkzeug.exceptions import HTTPException, NotFound, SecurityError
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from radflow import dicom, fileio
from radflow.admission import AdmissionRules, Refused, admit
from radflow.components.push.layout import LINEAGE_DIR, read_lineage, version_path
from radflow.components.train.train import KERAS_MODEL_FILE, LABELS_ASSET
from radflow.explain import grad_cam, overlay
from radflow.pacs import results as pacs_results
from radflow.pacs.connection import (
    PacsHTTPError,
    PacsTLSError,
    PacsUnavailable,
    call,
    open_client,
    retrieve_as_stored,
)
from radflow.preprocessing import decode_image, preprocess_encoded, standardize
from radflow.serving.client import ClientPrediction, ServingClient
from radflow.serving.review.config import ReviewConfig

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # never the network: the page has no authentication and handles patient images
TRUSTED_HOSTS = ("127.0.0.1", "localhost")  # Host headers answered; others (DNS rebinding) get 400
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # a DICOM UID: digits and dots, at most 64 characters
_SR_CLASSES = "1.2.840.10008.5.1.4.1.1.88."  # every Structured Report SOP class starts so: not an image
_TAGS = {"sop": "00080018", "series": "0020000E", "sop_class": "00080016", "number": "00200013"}
STATIC_FILES = {"index.html": "text/html", "review.js": "text/javascript", "review.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # results hold patient images: not into the browser's disk cache either
}
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


class ReviewError(Exception):
    """A request the page answers with a message and an HTTP status instead of a result.

    Args:
        status: 400 bad upload, 413 too large, 502 the server answered with an error, 503 unreachable.
        message: shown on the page as it is.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _server_error(err: grpc.RpcError, server: str) -> ReviewError:
    if err.code() in UNREACHABLE:
        return ReviewError(503, f"model server {server} is unreachable ({err.code().name}): {err.details()}")
    return ReviewError(502, f"model server {server} answered {err.code().name}: {err.details()}")


def _png_data_url(pixels: np.ndarray) -> str:
    """uint8 (H, W, 1|3) pixels as a data: URL, so the page never needs a second request (or a file)."""
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def served_bytes(data: bytes) -> tuple[bytes, str]:
    """The upload as the serving signature takes it, and its kind: DICOM becomes PNG by radflow.dicom's rules.

    Raises:
        ReviewError: 400 for an empty upload or a DICOM file that cannot be rendered.
    """
    if not data:
        raise ReviewError(400, "the upload is empty")
    if not dicom.is_dicom(data):
        return data, "image"
    try:
        return dicom.to_png(data), "DICOM"
    except dicom.DicomError as err:
        raise ReviewError(400, f"DICOM file cannot be shown: {err}") from err


def decode(image_bytes: bytes) -> np.ndarray:
    """Decodes with the serving signature's decoder, so what it refuses the server would refuse too.

    Raises:
        ReviewError: 400 when the bytes are not a JPEG, PNG (or BMP, GIF) image.
    """
    try:
        return decode_image(tf.constant(image_bytes), channels=3).numpy()
    except tf.errors.InvalidArgumentError as err:
        # TF's message without its graph-node prefix and op suffix, e.g. "Unknown image file format. ..."
        reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", err.message.splitlines()[0]).strip()
        raise ReviewError(400, f"not an image: upload a JPEG, PNG or DICOM file ({reason})") from err


class ExplainModels:
    """Each served version's Keras model, loaded once and kept for the most recent `keep` versions.

    Args:
        model_base_path: `<serving_root>/<model_name>`, local or gs://.
        keep: how many versions stay loaded.
    """

    def __init__(self, model_base_path: str, keep: int = 2):
        self.model_base_path, self.keep = model_base_path, keep
        self._loaded: OrderedDict[int, tuple[keras.Model, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, version: int) -> str:
        return os.path.join(version_path(self.model_base_path, version), LINEAGE_DIR, KERAS_MODEL_FILE)

    def get(self, version: int) -> tuple[keras.Model, str | None] | None:
        """(model, Grad-CAM layer from the version's lineage or None), or None if the version has no model.keras."""
        with self._lock:
            if version not in self._loaded:
                path = self.path(version)
                if not fileio.exists(path):
                    return None
                training = (read_lineage(self.model_base_path, version).get("config") or {}).get("training") or {}
                self._loaded[version] = (keras.models.load_model(path, compile=False),
                                         training.get("last_conv_layer") or None)
                log.info("review: loaded %s for Grad-CAM", path)
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(version)
            return self._loaded[version]


class Reviewer:
    """Scores uploads through the model server and explains them with the same version's Keras model.

    Args:
        config: the server, the model base path, limits.
    """

    def __init__(self, config: ReviewConfig):
        self.config = config
        self.client = ServingClient(config.server, config.model_name, timeout=config.timeout_s)
        self._channel = grpc.insecure_channel(config.server)
        self._models_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.models = ExplainModels(config.model_base_path)
        self.pacs = open_client(config.pacs) if config.pacs else None

    def close(self) -> None:
        self.client.close()
        self._channel.close()

    def status(self) -> dict:
        """The model's versions and states as the server reports them, and the one it serves.

        Raises:
            ReviewError: 503 when the server is unreachable, 502 when it answers with an error.
        """
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.config.model_name
        try:
            reply = self._models_stub.GetModelStatus(request, timeout=self.config.timeout_s)
        except grpc.RpcError as err:
            raise _server_error(err, self.config.server) from err
        states = {s.version: s.state for s in reply.model_version_status}
        available = [v for v, state in states.items() if state == AVAILABLE]
        serving = max(available, default=None)
        return {"server": self.config.server, "model": self.config.model_name, "serving_version": serving,
                "versions": {v: get_model_status_pb2.ModelVersionStatus.State.Name(s) for v, s in states.items()},
                **(self.describe(serving) if serving is not None else {"labels": [], "modality": ""})}

    def describe(self, version: int) -> dict:
        """What the version classifies, for the page's wording: its labels and the images' modality."""
        path = version_path(self.config.model_base_path, version)
        labels_file = os.path.join(path, "assets", LABELS_ASSET)
        labels = fileio.read_text(labels_file).split() if fileio.exists(labels_file) else []
        modality = (read_lineage(self.config.model_base_path, version).get("data") or {}).get("modality", "")
        return {"labels": labels, "modality": modality}

    def review(self, data: bytes) -> dict:
        """The page's result for one uploaded file.

        Args:
            data: the file's bytes (JPEG, PNG or DICOM).

        Returns:
            The served prediction (class, scores, threshold, decision, model and version), the image
            as the model sees it (padded to square) and the Grad-CAM heat map, both as PNG data URLs,
            and notes (why there is no heat map, or that model.keras disagrees with the server).

        Raises:
            ReviewError: 400 for a file that is not an image, 502/503 when the server fails or is unreachable.
        """
        image_bytes, kind = served_bytes(data)
        try:  # the server's own rules (ingest's), before anything is decoded here
            admit(image_bytes, AdmissionRules(max_pixels=self.config.max_pixels))
        except Refused as err:
            raise ReviewError(400, f"not admitted: {err.message}") from err
        pixels = decode(image_bytes)
        if self.config.save_uploads:
            self._save(data, kind)
        start = time.perf_counter()
        try:
            prediction = self.client.predict([image_bytes])[0]
        except grpc.RpcError as err:
            raise _server_error(err, self.config.server) from err
        except ValueError as err:  # the model's metadata does not have the contract's string input
            raise ReviewError(502, f"model server {self.config.server}: {err}") from err
        predict_ms = (time.perf_counter() - start) * 1000
        side = min(max(pixels.shape[:2]), self.config.display_size)
        result = {
            "model": self.config.model_name, "version": prediction.version, "server": self.config.server,
            "kind": kind, "label": prediction.label, "scores": prediction.scores, "threshold": prediction.threshold,
            "decision": prediction.decision, "classes": list(prediction.scores),
            "original_size": list(pixels.shape[:2]),
            "image": _png_data_url(standardize(tf.constant(pixels), side).numpy()),
            "gradcam": None, "notes": [], "timings_ms": {"predict": round(predict_ms, 1)},
        }
        start = time.perf_counter()
        self._explain(image_bytes, prediction, result)
        result["timings_ms"]["gradcam"] = round((time.perf_counter() - start) * 1000, 1)
        log.info("review: %s upload scored by version %s: %s", kind, prediction.version, prediction.decision)
        return result

    def _pacs_call(self, fn, what: str):
        try:
            return call(fn, what, self.config.pacs)
        except PacsUnavailable as err:
            raise ReviewError(503, str(err)) from err
        except PacsTLSError as err:
            raise ReviewError(502, str(err)) from err
        except PacsHTTPError as err:
            raise ReviewError(404 if err.status == 404 else 502, str(err)) from err

    def open_study(self, study_uid: str) -> dict:
        """Every image of a PACS study, reviewed as an upload would be, with what route stored for it.

        Args:
            study_uid: the StudyInstanceUID.

        Returns:
            {"study_uid", "pacs", "images": [review results in InstanceNumber order, each with sop_instance_uid
            and "stored"],
            "not_reviewed": instances left out (reports, the router's results, images over max_study_images)}.

        Raises:
            ReviewError: 400 without a PACS or for a malformed UID, 404 for a study the PACS does not have,
                502/503 when the PACS or the model server fails or is unreachable.
        """
        if self.pacs is None:
            raise ReviewError(400, "this page was started without a PACS (radflow review --pacs URL)")
        if not (_UID.match(study_uid) and len(study_uid) <= 64):
            raise ReviewError(400, f"{study_uid[:80]!r} is not a StudyInstanceUID (digits and dots, at most 64)")
        found = self._pacs_call(lambda: self.pacs.search_for_instances(
            study_instance_uid=study_uid, fields=["SOPClassUID", "SeriesInstanceUID", "InstanceNumber"]),
            f"the instances of {study_uid}")
        if not found:
            raise ReviewError(404, f"PACS {self.config.pacs.host} has no study {study_uid}")
        uids = {_value(item, _TAGS["sop"]) for item in found}
        model = self.config.model_name
        ours = self._result_uids(uids)
        images = [item for item in found if not _value(item, _TAGS["sop_class"]).startswith(_SR_CLASSES)
                  and _value(item, _TAGS["sop"]) not in ours]
        images.sort(key=lambda item: (_number(_value(item, _TAGS["number"])), _value(item, _TAGS["sop"])))
        reviewed = []
        for item in images[:self.config.max_study_images]:
            sop, series = _value(item, _TAGS["sop"]), _value(item, _TAGS["series"])
            url = f"{self.config.pacs.url}/studies/{study_uid}/series/{series}/instances/{sop}"
            data = self._pacs_call(lambda u=url: retrieve_as_stored(self.pacs, u), f"WADO-RS of {sop}")[0]
            result = self.review(data)
            sr_uid, sc_uid = (pacs_results.result_uid(model, sop, kind) for kind in (pacs_results.SR, pacs_results.SC))
            stored = {"sr": sr_uid in uids, "sc": sc_uid in uids, "sr_uid": sr_uid, "sc_uid": sc_uid}
            if stored["sr"]:
                sr_url = (f"{self.config.pacs.url}/studies/{study_uid}/series/"
                          f"{pacs_results.result_series_uid(model, study_uid, pacs_results.SR)}/instances/{sr_uid}")
                report = pacs_results.read_sr(self._pacs_call(lambda u=sr_url: retrieve_as_stored(self.pacs, u),
                                                              f"WADO-RS of the stored SR {sr_uid}")[0])
                stored.update(version=report.version, decision=report.decision)
            reviewed.append({**result, "sop_instance_uid": sop, "stored": stored})
        log.info("review: study %s from PACS %s: %d images reviewed", study_uid, self.config.pacs.host, len(reviewed))
        return {"study_uid": study_uid, "pacs": self.config.pacs.host, "images": reviewed,
                "not_reviewed": len(found) - len(reviewed)}

    def _result_uids(self, uids: set[str]) -> set[str]:
        """The UIDs this model's results of these instances have (or would have)."""
        model = self.config.model_name
        return {pacs_results.result_uid(model, u, kind) for u in uids for kind in (pacs_results.SR, pacs_results.SC)}

    def _explain(self, image_bytes: bytes, prediction: ClientPrediction, result: dict) -> None:
        """Adds the Grad-CAM heat map of the decided class, or a note saying why there is none."""
        version = prediction.version
        loaded = self.models.get(version) if version else None
        if loaded is None:
            result["notes"].append(f"no Grad-CAM: version {version} was published without "
                                   f"{LINEAGE_DIR}/{KERAS_MODEL_FILE} under {self.config.model_base_path}")
            return
        model, layer = loaded
        _, size, _, channels = model.input_shape
        x = preprocess_encoded(tf.constant(image_bytes), size, channels).numpy()
        keras_scores = np.asarray(model(x[None], training=False), np.float32)[0]
        if keras_scores.shape[-1] == 1:  # one sigmoid unit scores the positive class
            keras_scores = np.array([1.0 - keras_scores[0], keras_scores[0]], np.float32)
        served = np.array(list(prediction.scores.values()), np.float32)
        gap = float(np.abs(keras_scores - served).max()) if keras_scores.shape == served.shape else float("inf")
        if gap > self.config.keras_tolerance:
            result["notes"].append(
                f"model.keras of version {version} disagrees with the server (largest score difference "
                f"{gap:.3f}): the heat map may not explain the served answer")
        class_index = result["classes"].index(prediction.decision)
        heat = grad_cam(model, x, class_index, layer)
        if np.ptp(heat) == 0:  # all zeros (no supporting region) or, normalised, all ones
            result["notes"].append(f"Grad-CAM points to no region for {prediction.decision}: the heat map is "
                                   "flat, which says nothing about where the evidence lies")
        colours = np.round(overlay(x, heat, alpha=1.0) * 255).astype(np.uint8)  # alpha 1: the colour map alone
        result["gradcam"] = {"heatmap": _png_data_url(colours), "class": prediction.decision,
                             "layer": layer or "last convolution", "keras_score_gap": round(gap, 6),
                             "peak": [int(i) for i in np.unravel_index(int(heat.argmax()), heat.shape)]}

    def _save(self, data: bytes, kind: str) -> str:
        """Keeps an upload under its content hash (only when the user asked for it)."""
        ext = {"DICOM": ".dcm", "image": ""}[kind] or _image_extension(data)
        path = os.path.join(self.config.save_uploads, hashlib.sha256(data).hexdigest()[:20] + ext)
        fileio.write_bytes_atomic(path, data)
        log.info("review: upload saved to %s", path)
        return path


def _value(item: dict, tag: str) -> str:
    """The first value of a DICOM JSON attribute, "" when absent."""
    return str((item.get(tag, {}).get("Value") or [""])[0])


def _number(text: str) -> float:
    """An InstanceNumber for ordering; one without a number goes last."""
    try:
        return float(text)
    except ValueError:
        return float("inf")


def _image_extension(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg" if data.startswith(b"\xff\xd8") else ".img"


class ReviewApp:
    """The WSGI application: the static page, GET /api/status, POST /api/review (body: the file's bytes) and
    GET /api/pacs/studies/<StudyInstanceUID>.

    Args:
        reviewer: does the work; the app only maps HTTP to it.
        max_upload_bytes: larger bodies are refused with 413 before they are read.
    """

    def __init__(self, reviewer: Reviewer, max_upload_bytes: int):
        self.reviewer, self.max_upload_bytes = reviewer, max_upload_bytes
        folder = resources.files(__package__) / "static"
        self._files = {name: ((folder / name).read_bytes(), mimetype) for name, mimetype in STATIC_FILES.items()}
        self._urls = Map([
            Rule("/", endpoint="index", methods=["GET"]),
            Rule("/static/<name>", endpoint="static", methods=["GET"]),
            Rule("/api/status", endpoint="status", methods=["GET"]),
            Rule("/api/review", endpoint="review", methods=["POST"]),
            Rule("/api/pacs/studies/<study_uid>", endpoint="study", methods=["GET"]),
        ])

    def __call__(self, environ, start_response):
        request = Request(environ)
        request.trusted_hosts = list(TRUSTED_HOSTS)
        request.max_content_length = self.max_upload_bytes
        try:
            request.host  # noqa: B018  (raises SecurityError for an untrusted Host header)
            endpoint, values = self._urls.bind_to_environ(environ).match()
            response = getattr(self, f"_{endpoint}")(request, **values)
        except ReviewError as err:
            response = _json({"error": str(err)}, err.status)
        except SecurityError:
            response = _json({"error": "requests must be addressed to 127.0.0.1 or localhost"}, 400)
        except HTTPException as err:
            response = _json({"error": err.description}, err.code or 500)
        except Exception as err:  # anything else (MemoryError included) is still a JSON answer, not HTML
            log.exception("review: request failed")
            response = _json({"error": f"the review page failed: {type(err).__name__}: {err}"}, 500)
        response.headers.update(SECURITY_HEADERS)
        return response(environ, start_response)

    def _index(self, request: Request) -> Response:
        return self._static(request, "index.html")

    def _static(self, request: Request, name: str) -> Response:
        if name not in self._files:
            raise NotFound(f"no static file {name!r}")
        body, mimetype = self._files[name]
        return Response(body, mimetype=mimetype)

    def _status(self, request: Request) -> Response:
        pacs = self.reviewer.config.pacs
        return _json({**self.reviewer.status(), "pacs": pacs.host if pacs else None})

    def _review(self, request: Request) -> Response:
        # get_data reads the body into memory; a multipart form would be spooled to a temporary file.
        return _json(self.reviewer.review(request.get_data(cache=False)))


    def _study(self, request: Request, study_uid: str) -> Response:
        return _json(self.reviewer.open_study(study_uid))


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


class ReviewServer:
    """The page on 127.0.0.1, served by werkzeug's threaded WSGI server.

    Args:
        config: see ReviewConfig; port 0 lets the OS pick one (read `port` after construction).

    Raises:
        OSError: the port cannot be bound.
    """

    def __init__(self, config: ReviewConfig):
        self.reviewer = Reviewer(config)
        self._httpd = make_server(HOST, config.port, ReviewApp(self.reviewer, config.max_upload_bytes), threaded=True)
        self.port = self._httpd.server_port
        self.url = f"http://{HOST}:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serves in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="review", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.reviewer.close()

    def __enter__(self) -> ReviewServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_review(config: ReviewConfig) -> None:
    """Runs the page until SIGTERM or SIGINT."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with ReviewServer(config) as server:
        print(f"review page on {server.url} (model {config.model_name!r} from {config.server}); NOT FOR CLINICAL USE",
              flush=True)
        done.wait()
