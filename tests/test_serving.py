"""`radflow serve` against the real stubs of tensorflow-serving-api, on loopback ports.

One tiny trained model (conftest's `model_dir`, 32 px) is copied into temporary version
directories; servers run in-process on OS-chosen ports (one test starts the CLI as a subprocess).
"""

from __future__ import annotations

import base64
import glob
import io
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from radflow.serving.config import RequestLogConfig, ServerConfig, parse_model_config, single_model_config
from radflow.serving.server import ModelServer

MODEL = "radflow"
State = get_model_status_pb2.ModelVersionStatus.State


def png(seed: int, size: int = 48, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def publish(saved_model: str, base: str, version: int) -> str:
    """Copies a SavedModel in as `version` the way push does: stage hidden, then rename."""
    staged = os.path.join(base, f".staging-{version}")
    shutil.copytree(saved_model, staged)
    os.replace(staged, os.path.join(base, str(version)))
    return os.path.join(base, str(version))


def start(models, ready: bool = True, **overrides) -> ModelServer:
    config = ServerConfig(port=0, rest_api_port=0, file_system_poll_wait_seconds=0.2, **overrides)
    server = ModelServer(config, models)
    server.start()
    if ready:
        assert server.wait_until_ready(60), "model never became AVAILABLE"
    return server


def predict_request(images: list[bytes], version: int | None = None, label: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if version is not None:
        request.model_spec.version.value = version
    if label:  # version and version_label are a oneof: setting one clears the other
        request.model_spec.version_label = label
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


@pytest.fixture(scope="module")
def saved_model(model_dir) -> str:
    return os.path.join(model_dir, "saved_model")


@pytest.fixture(scope="module")
def served(saved_model, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("serve") / MODEL)
    os.makedirs(base)
    publish(saved_model, base, 1)
    server = start([single_model_config(MODEL, base)])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}",
                               options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel), channel


def rest(served) -> str:
    return f"http://127.0.0.1:{served.rest_port}"


def test_grpc_predict_metadata_status_and_health(served, stub, saved_model):
    from radflow.serving.predict import predict_files

    prediction, channel = stub
    images = [png(1), png(2, mode="RGB")]
    response = prediction.Predict(predict_request(images), timeout=30)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    scores = tf.make_ndarray(response.outputs["scores"])
    classes = tf.make_ndarray(response.outputs["classes"])
    threshold = tf.make_ndarray(response.outputs["threshold"])
    assert scores.shape == (2, 2) and classes.shape == (2, 2) and threshold.shape == (2,)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)

    # The same bytes through the signature in-process give the same scores.
    tmp = os.path.join(os.path.dirname(saved_model), "one.png")
    with open(tmp, "wb") as f:
        f.write(images[0])
    local = predict_files(saved_model, [tmp])[0]
    assert [c.decode() for c in classes[0]] == list(local.scores)
    np.testing.assert_allclose(scores[0], list(local.scores.values()), rtol=1e-5)

    # output_filter returns only what was asked.
    request = predict_request(images[:1])
    request.output_filter.append("scores")
    assert list(prediction.Predict(request, timeout=30).outputs) == ["scores"]

    meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta.model_spec.name = MODEL
    reply = prediction.GetModelMetadata(meta, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    reply.metadata["signature_def"].Unpack(defs)
    sig = defs.signature_def["serving_default"]
    assert reply.model_spec.version.value == 1
    assert sig.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert set(sig.outputs) == {"scores", "classes", "threshold"}

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [
        (1, State.AVAILABLE, 0)]

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", MODEL):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_rest_row_and_columnar_formats_with_b64(served, stub):
    images = [png(3), png(4)]
    b64 = [{"b64": base64.b64encode(b).decode()} for b in images]
    expected = tf.make_ndarray(stub[0].Predict(predict_request(images), timeout=30).outputs["scores"])
    url = f"{rest(served)}/v1/models/{MODEL}"

    rows_bare = requests.post(f"{url}:predict", json={"instances": b64}, timeout=30)
    rows_named = requests.post(f"{url}/versions/1:predict",
                               json={"signature_name": "serving_default",
                                     "instances": [{"image_bytes": v} for v in b64]}, timeout=30)
    for reply in (rows_bare, rows_named):
        assert reply.status_code == 200, reply.text
        predictions = reply.json()["predictions"]
        assert [p["classes"] for p in predictions] == [["NORMAL", "PNEUMONIA"]] * 2
        np.testing.assert_allclose([p["scores"] for p in predictions], expected, rtol=1e-5)
        assert all(isinstance(p["threshold"], float) for p in predictions)

    columnar = requests.post(f"{url}:predict", json={"inputs": {"image_bytes": b64}}, timeout=30)
    assert columnar.status_code == 200, columnar.text
    np.testing.assert_allclose(columnar.json()["outputs"]["scores"], expected, rtol=1e-5)
    bare = requests.post(f"{url}:predict", json={"inputs": b64}, timeout=30).json()
    assert bare["outputs"]["classes"] == [["NORMAL", "PNEUMONIA"]] * 2

    status = requests.get(url, timeout=10).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    meta = requests.get(f"{url}/metadata", timeout=10).json()
    assert meta["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert requests.get(f"{rest(served)}/readyz", timeout=10).status_code == 200


def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(served, stub):
    prediction = stub[0]

    def code_of(request) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            prediction.Predict(request, timeout=30)
        return err.value.code(), err.value.details()

    wrong_dtype = predict_pb2.PredictRequest()
    wrong_dtype.model_spec.name = MODEL
    wrong_dtype.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.zeros(2, np.float32)))
    assert code_of(wrong_dtype)[0] == grpc.StatusCode.INVALID_ARGUMENT
    wrong_shape = predict_pb2.PredictRequest()
    wrong_shape.model_spec.name = MODEL
    wrong_shape.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([[png(1)]], dtype=tf.string))
    assert code_of(wrong_shape)[0] == grpc.StatusCode.INVALID_ARGUMENT
    wrong_name = predict_pb2.PredictRequest()
    wrong_name.model_spec.name = MODEL
    wrong_name.inputs["pixels"].CopyFrom(tf.make_tensor_proto([png(1)], dtype=tf.string))
    assert code_of(wrong_name)[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(predict_request([png(1), b"this is not an image"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert code_of(predict_request([png(1)], version=7)) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({MODEL}, 7)")
    unknown_model = predict_request([png(1)])
    unknown_model.model_spec.name = "nope"
    assert code_of(unknown_model)[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(predict_request([png(1)], label="nope"))[0] == grpc.StatusCode.INVALID_ARGUMENT

    url = f"{rest(served)}/v1/models/{MODEL}"
    not_image = {"instances": [{"b64": base64.b64encode(b"GIF89a broken").decode()}]}
    cases = [
        (requests.post(f"{url}:predict", json=not_image, timeout=30), 400),
        (requests.post(f"{url}:predict", json={"instances": [1.5, 2.5]}, timeout=30), 400),
        (requests.post(f"{url}:predict", json={"instances": [[{"b64": ""}], {"b64": ""}]}, timeout=30), 400),
        (requests.post(f"{url}:predict", data=b"{not json", timeout=30), 400),
        (requests.post(f"{url}:predict", json={"instances": [], "inputs": []}, timeout=30), 400),
        (requests.post(f"{url}/versions/9:predict", json={"instances": [{"b64": ""}]}, timeout=30), 404),
        (requests.post(f"{rest(served)}/v1/models/nope:predict", json={"instances": []}, timeout=30), 404),
        (requests.get(f"{url}/versions/9", timeout=30), 404),
        (requests.get(f"{rest(served)}/v1/nothing", timeout=30), 400),
    ]
    for reply, status in cases:
        assert reply.status_code == status, reply.text
        assert set(reply.json()) == {"error"} and reply.json()["error"]

    # Still serving, on both protocols.
    assert prediction.Predict(predict_request([png(5)]), timeout=30).outputs["scores"].tensor_shape.dim[0].size == 1
    ok = requests.post(f"{url}:predict", json={"instances": [{"b64": base64.b64encode(png(5)).decode()}]}, timeout=30)
    assert ok.status_code == 200


def test_message_limit_admits_a_2048_px_png(stub):
    big = png(6, size=2048, mode="RGB")  # noise compresses badly: ~12 MiB, over gRPC's 4 MiB default
    assert len(big) > 12 * 2**20
    reply = stub[0].Predict(predict_request([big]), timeout=60)
    assert tf.make_ndarray(reply.outputs["scores"]).shape == (1, 2)


def _wait_status(channel, want: dict[int, int], timeout: float = 60) -> get_model_status_pb2.GetModelStatusResponse:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        status = stub.GetModelStatus(request, timeout=10)
        states = {s.version: s.state for s in status.model_version_status}
        if all(states.get(v) == s for v, s in want.items()) or time.monotonic() > deadline:
            assert all(states.get(v) == s for v, s in want.items()), status
            return status
        time.sleep(0.1)


def test_hot_reload_under_load_fails_no_request_and_a_corrupt_version_does_not_take_over(saved_model, tmp_path):
    base = str(tmp_path / MODEL)
    os.makedirs(base)
    publish(saved_model, base, 1)
    server = start([single_model_config(MODEL, base)])
    failures, answered_by, stop = [], [], threading.Event()

    def client():
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for i in range(5000):  # until the test is done, and never more than 5000 requests per client
                if stop.is_set():
                    return
                try:
                    reply = prediction.Predict(predict_request([png(i)]), timeout=30)
                    answered_by.append(reply.model_spec.version.value)
                except grpc.RpcError as err:
                    failures.append(err)

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            time.sleep(0.5)
            publish(saved_model, base, 2)
            _wait_status(channel, {2: State.AVAILABLE, 1: State.END})
            time.sleep(0.5)
            # A corrupt version 3: reported, never routed to; version 2 keeps answering.
            os.makedirs(os.path.join(base, ".staging-3", "variables"))
            with open(os.path.join(base, ".staging-3", "saved_model.pb"), "wb") as f:
                f.write(b"\x08\x01garbage, not a SavedModel")
            os.replace(os.path.join(base, ".staging-3"), os.path.join(base, "3"))
            status = _wait_status(channel, {3: State.END, 2: State.AVAILABLE})
            failed = next(s for s in status.model_version_status if s.version == 3)
            assert failed.status.error_code != 0 and failed.status.error_message
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    assert not failures, failures[:3]
    assert len(answered_by) >= 30, "too little load to say anything about the swap"
    assert answered_by[0] == 1 and answered_by[-1] == 2 and 3 not in answered_by
    assert set(answered_by) == {1, 2}


def test_version_policy_labels_and_warmup(saved_model, tmp_path):
    base = str(tmp_path / MODEL)
    os.makedirs(base)
    for v in (1, 2, 3):
        publish(saved_model, base, v)
    # Version 2 warms up with a good request, version 3 with one that fails: it must never be AVAILABLE.
    for version, image in ((2, png(7)), (3, b"not an image")):
        os.makedirs(os.path.join(base, str(version), "assets.extra"), exist_ok=True)  # train may ship one
        entry = prediction_log_pb2.PredictionLog()
        entry.predict_log.request.CopyFrom(predict_request([image]))
        with tf.io.TFRecordWriter(os.path.join(base, str(version), "assets.extra", "tf_serving_warmup_requests")) as w:
            w.write(entry.SerializeToString())
    config = parse_model_config(f"""
        model_config_list {{ config {{
          name: "{MODEL}" base_path: "{base}" model_platform: "tensorflow"
          model_version_policy {{ specific {{ versions: 1 versions: 2 versions: 3 }} }}
          version_labels {{ key: "stable" value: 1 }}
          version_labels {{ key: "canary" value: 2 }}
        }} }}""")
    server = start(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            status = _wait_status(channel, {1: State.AVAILABLE, 2: State.AVAILABLE, 3: State.END})
            assert next(s for s in status.model_version_status if s.version == 3).status.error_code == \
                grpc.StatusCode.INVALID_ARGUMENT.value[0]
            prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for label, version in (("stable", 1), ("canary", 2), ("", 2)):
                reply = prediction.Predict(predict_request([png(8)], label=label), timeout=30)
                assert reply.model_spec.version.value == version
        url = f"{rest(server)}/v1/models/{MODEL}"
        body = {"instances": [{"b64": base64.b64encode(png(9)).decode()}]}
        assert requests.post(f"{url}/labels/canary:predict", json=body, timeout=30).status_code == 200
        assert requests.get(f"{url}/labels/stable", timeout=30).json()["model_version_status"][0]["version"] == "1"
        assert requests.get(f"{url}/labels/nope", timeout=30).status_code == 400
    finally:
        server.stop()


def _self_signed(tmp_path) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_batching_and_request_log_feed_serving_skew(saved_model, tmp_path):
    from radflow.serving.client import ServingClient
    from radflow.serving.config import BatchingOptions
    from radflow.serving.request_log import read_request_images, read_request_log

    base = str(tmp_path / MODEL)
    os.makedirs(base)
    publish(saved_model, base, 1)
    cert, key = _self_signed(tmp_path)
    log_dir = str(tmp_path / "requests")
    server = start([single_model_config(MODEL, base)], ssl_cert_file=cert, ssl_key_file=key, enable_batching=True,
                   batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=1),
                   request_log=RequestLogConfig(log_dir, sampling_rate=1.0, include_images=True))
    images = [png(10 + i) for i in range(6)]
    try:
        grpc_client = ServingClient(f"localhost:{server.grpc_port}", MODEL, ca_cert=cert)
        rest_client = ServingClient(f"localhost:{server.rest_port}", MODEL, rest=True, ca_cert=cert)
        results: dict[int, list] = {}

        def one(i):  # concurrent single-image requests share batches
            results[i] = grpc_client.predict([images[i]])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        together = rest_client.predict(images)
        for i, p in enumerate(together):
            assert results[i][0].scores == pytest.approx(p.scores, rel=1e-5)
            assert results[i][0].version == 1 and p.decision in ("NORMAL", "PNEUMONIA")
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://localhost:{server.rest_port}/readyz", timeout=10)  # not trusted without the CA
        grpc_client.close()
        rest_client.close()
    finally:
        server.stop()
    logged = read_request_log(log_dir)
    assert len(logged) == len(images) + 1  # six single requests and one of six
    assert sorted(read_request_images(log_dir)) == sorted(images * 2)

    from radflow.components.validate.skew import measure_encoded, request_statistics, serving_skew

    reference = request_statistics([measure_encoded(b) for b in images])
    report = serving_skew(read_request_images(log_dir), reference)
    assert report.num_images == 12


def test_batcher_merges_concurrent_requests_and_isolates_a_bad_one():
    from radflow.serving.batching import Batcher
    from radflow.serving.config import BatchingOptions
    from radflow.serving.errors import invalid

    calls = []

    def execute(inputs):  # doubles each row; refuses a batch holding a negative value
        x = inputs["x"]
        calls.append(len(x))
        if (x < 0).any():
            raise invalid("negative input")
        return {"y": x * 2}

    batcher = Batcher(execute, BatchingOptions(max_batch_size=4, batch_timeout_micros=200_000, num_batch_threads=1,
                                               allowed_batch_sizes=(2, 4)), "test")
    results, errors = {}, {}

    def one(i):
        try:
            results[i] = batcher.run({"x": np.array([i], np.float32)})["y"].tolist()
        except Exception as err:  # collected and asserted below
            errors[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in (1, 2, -3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert results == {1: [2.0], 2: [4.0]}
    assert list(errors) == [-3] and errors[-3].code == grpc.StatusCode.INVALID_ARGUMENT
    assert calls[0] == 4  # three rows, padded to the allowed size 4, in one call; then re-run one by one
    assert sorted(calls[1:]) == [1, 1, 1]


def test_config_files_parse_with_tf_servings_messages(tmp_path):
    from radflow.serving.config import parse_batching_parameters

    options = parse_batching_parameters("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
                                        "num_batch_threads { value: 2 }\nallowed_batch_sizes: 8\n"
                                        "allowed_batch_sizes: 16\npad_variable_length_inputs: false\n")
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads,
            options.allowed_batch_sizes, options.max_enqueued_batches) == (16, 500, 2, (8, 16), 10)
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        parse_batching_parameters("max_batch_size { value: 16 } allowed_batch_sizes: 8")
    with pytest.raises(ValueError, match="batching parameters"):
        parse_batching_parameters("max_batch_size: 16")  # a wrapper message, not a bare int
    infra = os.path.join(os.path.dirname(__file__), "..", "infra", "serving")
    with open(os.path.join(infra, "base", "batching.config")) as f:
        assert parse_batching_parameters(f.read()).max_batch_size == 32
    for path in ("base/models.config", "overlays/canary/canary.config", "overlays/gcs/models.config"):
        with open(os.path.join(infra, path)) as f:
            (model,) = parse_model_config(f.read())
        assert model.name == MODEL and model.model_version_policy.WhichOneof("policy_choice") == "specific"
    with pytest.raises(ValueError, match="listed twice"):
        parse_model_config('model_config_list { config { name: "a" base_path: "/x" } '
                           'config { name: "a" base_path: "/y" } }')
    with pytest.raises(ValueError, match="model config"):
        parse_model_config("model_config_list { config { nam: 1 } }")


def test_classify_where_the_signature_allows_it(tmp_path, stub):
    from tensorflow_serving.apis import classification_pb2

    # A TF1-style model with a classify signature over serialized tf.Examples.
    base = str(tmp_path / "classifier")
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        p = tf.sigmoid(x)
        scores = tf.concat([1 - p, p], axis=1)
        classes = tf.tile(tf.constant([["low", "high"]]), [tf.shape(scores)[0], 1])
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(os.path.join(base, "1"))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "serving_default": tf.compat.v1.saved_model.classification_signature_def(serialized, classes, scores)})
            builder.save()
    from tensorflow_serving.config import model_server_config_pb2

    server = start([model_server_config_pb2.ModelConfig(name="classifier", base_path=base)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            request = classification_pb2.ClassificationRequest()
            request.model_spec.name = "classifier"
            for value in (-4.0, 4.0):
                request.input.example_list.examples.add().features.feature["x"].float_list.value.append(value)
            result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=30).result
        assert [[c.label for c in r.classes] for r in result.classifications] == [["low", "high"]] * 2
        assert result.classifications[0].classes[0].score > 0.9 and result.classifications[1].classes[1].score > 0.9
    finally:
        server.stop()
    # The image model's predict signature is no classify signature: refused as TF Serving does.
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.input.example_list.examples.add()
    with pytest.raises(grpc.RpcError) as err:
        stub[0].Classify(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "classify" in err.value.details()


def test_readiness_is_false_until_a_version_is_available(saved_model, tmp_path):
    base = str(tmp_path / MODEL)
    os.makedirs(base)
    server = ModelServer(ServerConfig(port=0, rest_api_port=0, file_system_poll_wait_seconds=0.2),
                         [single_model_config(MODEL, base)])
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            time.sleep(0.5)  # a few polls of an empty base path
            assert requests.get(f"{rest(server)}/readyz", timeout=10).status_code == 503
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            assert requests.get(f"{rest(server)}/v1/models/{MODEL}", timeout=10).status_code == 404
            publish(saved_model, base, 1)
            assert server.wait_until_ready(60)
            assert requests.get(f"{rest(server)}/readyz", timeout=10).json() == {"ready": True, "models": {MODEL: True}}
            assert health.Check(health_pb2.HealthCheckRequest(service=MODEL), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


def test_request_log_keeps_images_only_when_asked(tmp_path):
    from radflow.serving.request_log import RequestLogger, read_request_images, read_request_log

    inputs = {"image_bytes": np.array([png(1), png(2)], dtype=object)}
    outputs = {"scores": np.array([[0.2, 0.8], [0.6, 0.4]], np.float32), "threshold": np.array([0.5, 0.5], np.float32)}
    without = RequestLogger(RequestLogConfig(str(tmp_path / "plain"), sampling_rate=1.0), seed=0)
    assert without.log_predict(MODEL, 3, "serving_default", inputs, outputs)
    assert not os.listdir(tmp_path / "plain")[0].endswith(".tfrecord")  # still in progress: not yet readable
    assert read_request_log(str(tmp_path / "plain")) == []
    without.close()
    (entry,) = read_request_log(str(tmp_path / "plain"))
    assert entry.log_metadata.model_spec.version.value == 3 and not entry.predict_log.request.inputs
    np.testing.assert_allclose(tf.make_ndarray(entry.predict_log.response.outputs["scores"]), outputs["scores"])
    assert read_request_images(str(tmp_path / "plain")) == []

    sampled = RequestLogger(RequestLogConfig(str(tmp_path / "sampled"), sampling_rate=0.25, include_images=True,
                                             max_records_per_file=10), seed=0)
    logged = sum(sampled.log_predict(MODEL, 3, "serving_default", inputs, outputs) for _ in range(200))
    sampled.close()
    assert 30 <= logged <= 70  # ~25% of 200
    assert len(glob.glob(str(tmp_path / "sampled" / "*.tfrecord"))) == -(-logged // 10)
    assert read_request_images(str(tmp_path / "sampled")) == [png(1), png(2)] * logged


def test_any_exported_signature_is_served_from_its_signature_def(served):
    """The export's decoded-pixels signature, found through the metadata, not by name."""
    url = f"{rest(served)}/v1/models/{MODEL}"
    defs = requests.get(f"{url}/metadata", timeout=10).json()["metadata"]["signature_def"]["signature_def"]
    name, sig = next((k, v) for k, v in defs.items()
                     if len(v["inputs"]) == 1 and next(iter(v["inputs"].values()))["dtype"] == "DT_FLOAT")
    (key, info), = sig["inputs"].items()
    shape = [int(d["size"]) for d in info["tensor_shape"]["dim"]][1:]
    pixels = np.random.default_rng(0).random([2, *shape]).astype(np.float32)
    reply = requests.post(f"{url}:predict", json={"signature_name": name, "inputs": {key: pixels.tolist()}},
                          timeout=30)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(np.sum(reply.json()["outputs"]["scores"], axis=1), 1.0, rtol=1e-5)
    wrong = np.zeros([1, shape[0] // 2, shape[1] // 2, *shape[2:]], np.float32)
    reply = requests.post(f"{url}:predict", json={"signature_name": name, "instances": wrong.tolist()}, timeout=30)
    assert reply.status_code == 400 and "shape" in reply.json()["error"]
    reply = requests.post(f"{url}:predict", json={"signature_name": "nope", "instances": [1]}, timeout=30)
    assert reply.status_code == 400 and "not found in signature def" in reply.json()["error"]
